"""Small building blocks shared by the decoder: RMSNorm and the SwiGLU MLP.

Neither has a bias. RMSNorm computes in fp32 (through `hpcyuan.ops.rms_norm`) and its weight
starts at ones; SwiGLU is down(silu(w1 x) * w3 x) with w1 the SiLU branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpcyuan import ops


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)


class SwiGLU(nn.Module):
    """The dense Yuan 2.0 MLP: h -> f -> h."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int):
        super().__init__()
        self.w1 = nn.Linear(hidden_size, ffn_hidden_size, bias=False)  # SiLU branch (HF up_proj)
        self.w3 = nn.Linear(hidden_size, ffn_hidden_size, bias=False)  # linear branch (HF gate_proj)
        self.w2 = nn.Linear(ffn_hidden_size, hidden_size, bias=False)  # down projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
