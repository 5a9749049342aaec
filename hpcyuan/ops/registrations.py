"""Autograd and fake (meta) registrations for the ops compiled in `hpcyuan._C`.

The extension (kernels/registration.cpp) defines the schemas and the CPU/CUDA kernels; this module, imported by
`hpcyuan.ops` right after `hpcyuan._C` loads, makes them differentiable (`torch.library.register_autograd`)
and traceable by torch.compile / FakeTensor (`torch.library.register_fake`). Only ops the extension
actually registers are touched, so a partly built extension still works op by op.
"""

from __future__ import annotations

import torch


def _rms_norm_fake(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x.new_empty(x.shape)  # the kernel returns a contiguous tensor in x's dtype


def _rms_norm_backward_fake(grad_out, x, weight, eps):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _rms_norm_setup_context(ctx, inputs, output):
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _rms_norm_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight = torch.ops.hpcyuan.rms_norm_backward(grad_out, x, weight, ctx.eps)
    return grad_x, grad_weight, None


# lfa_filter itself is CompositeImplicitAutograd over lfa_filter_forward (kernels/lfa_filter.cpp): it needs
# neither fake nor autograd; lfa_filter_forward returns (lf, y1_pair, s, rstd), the last three saved here.
def _lfa_filter_forward_fake(x, conv1_weight, conv1_bias, conv2_weight, conv2_bias, norm_weight, eps):
    acc = torch.promote_types(x.dtype, torch.float32)  # the kernels' math type
    return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=conv1_weight.dtype), x.new_empty(x.shape),
            x.new_empty(x.shape[:2], dtype=acc))


def _lfa_filter_backward_fake(grad_out, x, conv1_weight, conv2_weight, norm_weight, y1_pair, s, rstd):
    C = x.shape[-1]
    return (x.new_empty(x.shape), conv1_weight.new_empty(conv1_weight.shape), conv1_weight.new_empty(C // 2),
            conv2_weight.new_empty(conv2_weight.shape), conv2_weight.new_empty(C), norm_weight.new_empty(C))


def _lfa_filter_forward_setup_context(ctx, inputs, output):
    x, conv1_weight, _, conv2_weight, _, norm_weight, _ = inputs
    _, y1_pair, s, rstd = output
    ctx.mark_non_differentiable(y1_pair, s, rstd)
    ctx.save_for_backward(x, conv1_weight, conv2_weight, norm_weight, y1_pair, s, rstd)


def _lfa_filter_forward_backward(ctx, grad_out, _grad_y1_pair, _grad_s, _grad_rstd):
    grads = torch.ops.hpcyuan.lfa_filter_backward(grad_out, *ctx.saved_tensors)
    return *grads, None  # x, conv1_weight, conv1_bias, conv2_weight, conv2_bias, norm_weight; eps


def _attention_router_fake(q, k, v, top_k):
    return q.new_empty(q.shape[0], top_k), q.new_empty(q.shape[0], top_k, dtype=torch.int64)


def _attention_router_backward_fake(grad_gates, gates, indices, q, k, v):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _attention_router_setup_context(ctx, inputs, output):
    q, k, v, _ = inputs
    gates, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(gates, indices, q, k, v)


def _attention_router_backward(ctx, grad_gates, grad_indices):
    gates, indices, q, k, v = ctx.saved_tensors
    grad_q, grad_k, grad_v = torch.ops.hpcyuan.attention_router_backward(grad_gates, gates, indices, q, k, v)
    return grad_q, grad_k, grad_v, None


def _fused_adamw_fake(master, exp_avg, exp_avg_sq, grad, param_out, lr, beta1, beta2, eps, weight_decay, step,
                      grad_scale):
    return None  # in place only (the schema's Tensor(a!) annotations), nothing returned


def _fused_adamw_into_fake(master, exp_avg, exp_avg_sq, grad, master_out, exp_avg_out, exp_avg_sq_out, param_out,
                           lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    return None  # writes only its *_out arguments


def register(available: frozenset[str]) -> None:
    """Register fake + autograd for each op in `available` (names under torch.ops.hpcyuan)."""
    if "rms_norm" in available:
        torch.library.register_fake("hpcyuan::rms_norm", _rms_norm_fake)
        torch.library.register_fake("hpcyuan::rms_norm_backward", _rms_norm_backward_fake)
        torch.library.register_autograd("hpcyuan::rms_norm", _rms_norm_backward,
                                        setup_context=_rms_norm_setup_context)
    if "lfa_filter" in available:
        torch.library.register_fake("hpcyuan::lfa_filter_forward", _lfa_filter_forward_fake)
        torch.library.register_fake("hpcyuan::lfa_filter_backward", _lfa_filter_backward_fake)
        torch.library.register_autograd("hpcyuan::lfa_filter_forward", _lfa_filter_forward_backward,
                                        setup_context=_lfa_filter_forward_setup_context)
    if "attention_router" in available:
        torch.library.register_fake("hpcyuan::attention_router", _attention_router_fake)
        torch.library.register_fake("hpcyuan::attention_router_backward", _attention_router_backward_fake)
        torch.library.register_autograd("hpcyuan::attention_router", _attention_router_backward,
                                        setup_context=_attention_router_setup_context)
    if "fused_adamw" in available:
        torch.library.register_fake("hpcyuan::fused_adamw", _fused_adamw_fake)
        torch.library.register_fake("hpcyuan::fused_adamw_into", _fused_adamw_into_fake)
