"""Rotary position embedding (RoPE) as Yuan uses it: rotate-half layout, partial rotary dims.

Angles come from per-sample position ids (they restart after each `<eod>` in packed training), so
cos/sin are computed per forward pass, once per stage, and shared by all its layers.
Only the first `rotary_dim` dims of each head rotate (M32: 128 of 256); the rest pass through.
"""

from __future__ import annotations

import torch


def rope_cos_sin(position_ids: torch.Tensor, rotary_dim: int, base: float,
                 bf16_angles: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles, each (B, T, rotary_dim) fp32, laid out as cat(θ, θ).

    θ_i = pos · base^(-2i / rotary_dim). With `bf16_angles` the positions, inv_freq and their
    product are rounded to bf16 as in Megatron's bf16 runs (its Float16Module casts inv_freq and
    the position sequence to bf16), for parity with the released checkpoints.
    """
    exponent = torch.arange(0, rotary_dim, 2, device=position_ids.device, dtype=torch.float32) / rotary_dim
    inv_freq = base ** -exponent  # (r/2,)
    pos = position_ids.float()
    if bf16_angles:
        inv_freq = inv_freq.bfloat16().float()
        pos = pos.bfloat16().float()
    angles = pos.unsqueeze(-1) * inv_freq  # (B, T, r/2)
    if bf16_angles:
        angles = angles.bfloat16().float()
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, r)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first r = cos.shape[-1] dims of each head of x (B, T, H, d); keep the rest.

    Rotate-half layout: frequency i acts on dims i and i + r/2 (`cat(-x2, x1)`).
    The product runs in x's dtype, as Megatron and the HF ports do.
    """
    r = cos.shape[-1]
    cos = cos.unsqueeze(2).to(x.dtype)  # (B, T, 1, r): broadcast over heads
    sin = sin.unsqueeze(2).to(x.dtype)
    rot, rest = x[..., :r], x[..., r:]
    x1, x2 = rot.chunk(2, dim=-1)
    rotated = rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((rotated, rest), dim=-1)
