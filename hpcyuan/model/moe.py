"""Yuan 2.0-M32's mixture of experts: the attention router and SwiGLU experts (spec §4).

Router, per token x (h,): q, k, v = W_q x, W_k x, W_v x (each E wide, matmul in the model dtype,
then fp32); A = softmax_row(q kᵀ) (E×E), p = A v; the top-k of p are the experts and
gates = softmax over those k values (fp32). Output = Σ_e gate_e · SwiGLU_e(x), the gates cast to
the model dtype and multiplying each expert's output. No capacity limit (dropless), no aux loss.

Experts are stored stacked: w1 [E, f, h] (SiLU branch), w3 [E, f, h], w2 [E, h, f]. Tokens are
grouped by expert (one sort), each expert runs one matmul chain on its rows, and one index_add_
scatters the gated results back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpcyuan import ops
from hpcyuan.config import ModelConfig


class AttentionRouter(nn.Module):
    def __init__(self, hidden_size: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.wq = nn.Linear(hidden_size, num_experts, bias=False)
        self.wk = nn.Linear(hidden_size, num_experts, bias=False)
        self.wv = nn.Linear(hidden_size, num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, h) -> gates (N, k) fp32, expert indices (N, k) int64."""
        # (N, E) each; fp32 from here on (fp64 stays fp64, for exact tests)
        q, k, v = (w(x).to(torch.promote_types(x.dtype, torch.float32)) for w in (self.wq, self.wk, self.wv))
        return ops.attention_router(q, k, v, self.top_k)


class Experts(nn.Module):
    def __init__(self, num_experts: int, hidden_size: int, ffn_hidden_size: int):
        super().__init__()
        E, h, f = num_experts, hidden_size, ffn_hidden_size
        self.w1 = nn.Parameter(torch.empty(E, f, h))
        self.w3 = nn.Parameter(torch.empty(E, f, h))
        self.w2 = nn.Parameter(torch.empty(E, h, f))
        for w in (self.w1, self.w3, self.w2):  # placeholder values; YuanStage.init_weights sets the real init
            nn.init.normal_(w, std=0.02)

    def forward(self, x: torch.Tensor, gates: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """x: (N, h); gates, indices: (N, k). Returns Σ_j gates[:, j] · SwiGLU_{indices[:, j]}(x), (N, h)."""
        N, top_k = indices.shape
        flat = indices.reshape(-1)  # (N*k,) one row per (token, choice)
        order = flat.argsort(stable=True)  # rows grouped by expert
        tokens = order // top_k  # (N*k,) token of each grouped row
        counts = torch.bincount(flat, minlength=self.w1.shape[0]).tolist()
        outputs = []
        for e, rows in enumerate(tokens.split(counts)):
            if rows.numel() == 0:
                continue
            xe = x.index_select(0, rows)  # (n_e, h)
            outputs.append(F.linear(F.silu(F.linear(xe, self.w1[e])) * F.linear(xe, self.w3[e]), self.w2[e]))
        y = torch.cat(outputs)  # (N*k, h) in grouped order
        y = y * gates.reshape(-1)[order].to(y.dtype).unsqueeze(-1)  # gate the expert outputs
        return torch.zeros(N, x.shape[-1], dtype=y.dtype, device=y.device).index_add_(0, tokens, y)


class MoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.router = AttentionRouter(config.hidden_size, config.num_experts, config.moe_top_k)
        self.experts = Experts(config.num_experts, config.hidden_size, config.ffn_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, h) -> (B, T, h); tokens are routed independently
        flat = x.reshape(-1, x.shape[-1])  # (N, h)
        gates, indices = self.router(flat)
        return self.experts(flat, gates, indices).view(x.shape)
