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


def register(available: frozenset[str]) -> None:
    """Register fake + autograd for each op in `available` (names under torch.ops.hpcyuan)."""
    if "rms_norm" in available:
        torch.library.register_fake("hpcyuan::rms_norm", _rms_norm_fake)
        torch.library.register_fake("hpcyuan::rms_norm_backward", _rms_norm_backward_fake)
        torch.library.register_autograd("hpcyuan::rms_norm", _rms_norm_backward,
                                        setup_context=_rms_norm_setup_context)
