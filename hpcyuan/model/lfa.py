"""Localized Filtering-based Attention (LFA), Yuan 2.0's attention block (spec §1).

From the block's normalized input x (B, T, h):
    y1[t] = A0·x[t-1] + A1·x[t] + a          (x[-1] = 0)          conv1: h -> h/2
    y2[t] = B0·y1[t-1] + B1·y1[t] + c        (y1[-1] = 0)         conv2: h/2 -> h
    lf    = RMSNorm_lf(y2 + x)
    Q, K  = W_q lf, W_k lf   (RoPE on both);  V = W_v x   (x, not lf)
    out   = W_o · causal_attention(Q, K, V),  scale 1/sqrt(head_dim)
Q, K, V are h -> P = num_heads * head_dim wide and o_proj is P -> h (P != h for M32).
The attention mask is plain causal over the packed window; only position ids reset at documents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpcyuan import ops
from hpcyuan.config import ModelConfig
from hpcyuan.model.layers import RMSNorm
from hpcyuan.model.rope import apply_rope


class LocalizedFiltering(nn.Module):
    """The LF filter's parameters and forward: lf = RMSNorm(conv2(conv1(x)) + x), causal convs.

    conv1/conv2 are nn.Conv1d only as parameter holders (Conv1d shapes [out, in, 2] and the PyTorch
    default init); their own forward is never called: `ops.lfa_filter` runs the causal filter on
    (B, T, C) directly (tap 0 multiplies t-1, tap 1 multiplies t).
    """

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.conv1 = nn.Conv1d(hidden_size, hidden_size // 2, kernel_size=2)  # weight [h/2, h, 2]
        self.conv2 = nn.Conv1d(hidden_size // 2, hidden_size, kernel_size=2)  # weight [h, h/2, 2]
        self.norm = RMSNorm(hidden_size, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, h) -> (B, T, h)
        return ops.lfa_filter(x, self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias,
                              self.norm.weight, self.norm.eps)


class LFAAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, P = config.hidden_size, config.attention_width
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.dropout = config.attention_dropout
        self.lf = LocalizedFiltering(h, config.norm_eps)
        self.q_proj = nn.Linear(h, P, bias=False)
        self.k_proj = nn.Linear(h, P, bias=False)
        self.v_proj = nn.Linear(h, P, bias=False)
        self.o_proj = nn.Linear(P, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (B, T, h) normalized block input; cos/sin: (B, T, rotary_dim) from `rope_cos_sin`."""
        B, T, _ = x.shape
        heads = (B, T, self.num_heads, self.head_dim)
        lf = self.lf(x)  # (B, T, h)
        q = apply_rope(self.q_proj(lf).view(heads), cos, sin)  # (B, T, H, d)
        k = apply_rope(self.k_proj(lf).view(heads), cos, sin)
        v = self.v_proj(x).view(heads)
        out = F.scaled_dot_product_attention(  # (B, H, T, d), default scale 1/sqrt(d)
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))  # (B, T, P) -> (B, T, h)
