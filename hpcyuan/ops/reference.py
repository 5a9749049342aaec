"""Pure-PyTorch reference implementations of the operators the model calls through `hpcyuan.ops`.

These are the ground truth: the model uses them when no C++/CUDA extension is built, and the
kernel tests (tests/kernels) compare the extension against them. Each one is differentiable by
plain autograd and works under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, computed in (at least) fp32, returned
    in x's dtype."""
    wide = torch.promote_types(x.dtype, torch.float32)  # fp32 for bf16/fp16/fp32, fp64 stays fp64
    xw = x.to(wide)
    normed = xw * torch.rsqrt(xw.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.to(wide)).to(x.dtype)


def _causal_conv2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y[t] = W0·x[t-1] + W1·x[t] + b with x[-1] = 0, on (B, T, C_in) -> (B, T, C_out).

    `weight` is Conv1d-shaped [C_out, C_in, 2]; tap 0 multiplies t-1 and tap 1 multiplies t.
    One matmul computes both taps ([2*C_out, C_in] rows: tap 0 first), then the tap-0 half is
    shifted one step later in time; no transposes of the (B, T, C) activations are needed.
    """
    c_out = weight.shape[0]
    both = F.linear(x, weight.permute(2, 0, 1).reshape(2 * c_out, weight.shape[1]))  # (B, T, 2*C_out)
    prev, cur = both.split(c_out, dim=-1)  # tap 0 (t-1) and tap 1 (t) contributions
    shifted = F.pad(prev[:, :-1], (0, 0, 1, 0))  # (B, T, C_out): row t holds W0·x[t-1], row 0 zero
    return cur + shifted + bias.to(cur.dtype)


def reference_lfa_filter(x: torch.Tensor, conv1_weight: torch.Tensor, conv1_bias: torch.Tensor,
                         conv2_weight: torch.Tensor, conv2_bias: torch.Tensor, norm_weight: torch.Tensor,
                         eps: float) -> torch.Tensor:
    """The LFA localized filter: lf = RMSNorm(conv2(conv1(x)) + x), both convs causal with kernel 2.

    x: (B, T, C) the block's normalized input; conv1_weight [C/2, C, 2], conv2_weight [C, C/2, 2].
    Returns lf (B, T, C). y1[-1] is a zero pad (not conv1's bias), as in Megatron.
    """
    y1 = _causal_conv2(x, conv1_weight, conv1_bias)  # (B, T, C/2)
    y2 = _causal_conv2(y1, conv2_weight, conv2_bias)  # (B, T, C)
    return reference_rms_norm(y2 + x, norm_weight, eps)


def reference_attention_router(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The M32 attention router on fp32 (N, E) projections; tokens never mix.

    Per token: A = softmax_row(q kᵀ) (E×E outer product, no scaling), p = A v, then the top-k of p,
    gates = softmax over those k values. Returns gates (N, k) fp32 and expert indices (N, k) int64.
    """
    scores = q.unsqueeze(-1) * k.unsqueeze(-2)  # (N, E, E): A_ij ∝ exp(q_i k_j)
    p = torch.bmm(scores.softmax(dim=-1), v.unsqueeze(-1)).squeeze(-1)  # (N, E)
    top = p.topk(top_k, dim=-1)
    return top.values.softmax(dim=-1), top.indices


def reference_fused_adamw_(master: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                           grad: torch.Tensor, param_out: torch.Tensor | None, *, lr: float, beta1: float,
                           beta2: float, eps: float, weight_decay: float, step: int, grad_scale: float = 1.0) -> None:
    """One AdamW step in place on flat fp32 tensors, in torch.optim.AdamW's foreach order of operations.

    g = grad * grad_scale; master *= 1 - lr*wd; exp_avg.lerp_(g, 1 - beta1);
    exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) g²; master -= lr/(1 - beta1^step) · exp_avg / denom with
    denom = sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps; then param_out (fp32/bf16, or None) = master.
    """
    g = grad * grad_scale if grad_scale != 1.0 else grad
    if weight_decay != 0:
        master.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    step_size = (lr / (1 - beta1 ** step)) * -1
    denom = exp_avg_sq.sqrt().div_((1 - beta2 ** step) ** 0.5).add_(eps)
    master.addcdiv_(exp_avg, denom, value=step_size)
    if param_out is not None:
        param_out.copy_(master)
