"""Operator entry points the model calls: the single place where kernels are chosen.

    from hpcyuan import ops
    ops.set_kernels("reference")        # or "auto" (default) / "extension"
    lf = ops.lfa_filter(x, ...)

Each op has a pure-PyTorch reference in `reference.py`. A compiled extension, when built, is the
module `hpcyuan._C`; importing it registers `torch.ops.hpcyuan.<op>` with the same signatures
(schema, CPU/CUDA kernels, autograd and fake registrations live with it). Modes:
- "auto": the extension if it imports and registers every op, else the references;
- "reference": always the references;
- "extension": the extension, and `set_kernels` raises HpcyuanError if it is not built.
"""

from __future__ import annotations

import functools
import importlib

import torch

from hpcyuan.errors import HpcyuanError
from hpcyuan.ops.reference import reference_attention_router, reference_lfa_filter, reference_rms_norm

MODES = ("auto", "reference", "extension")
OPS = ("rms_norm", "lfa_filter", "attention_router")

_mode = "auto"


@functools.cache
def extension_available() -> bool:
    """True when `hpcyuan._C` imports and registers all of OPS under torch.ops.hpcyuan."""
    try:
        importlib.import_module("hpcyuan._C")
    except ImportError:
        return False
    return all(hasattr(torch.ops.hpcyuan, name) for name in OPS)


def set_kernels(mode: str) -> None:
    """Choose the operator implementations for the whole process (see the module docstring)."""
    global _mode
    if mode not in MODES:
        raise HpcyuanError(f"kernels = \"{mode}\": must be one of {', '.join(MODES)}")
    if mode == "extension" and not extension_available():
        raise HpcyuanError('kernels = "extension" but the C++/CUDA extension hpcyuan._C is not built '
                           '(pip install --no-build-isolation -e . builds it), or use kernels = "auto"')
    _mode = mode


def kernels_in_use() -> str:
    """"extension" or "reference": what the ops below dispatch to right now."""
    use_ext = _mode == "extension" or (_mode == "auto" and extension_available())
    return "extension" if use_ext else "reference"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if kernels_in_use() == "extension":
        return torch.ops.hpcyuan.rms_norm(x, weight, eps)
    return reference_rms_norm(x, weight, eps)


def lfa_filter(x, conv1_weight, conv1_bias, conv2_weight, conv2_bias, norm_weight, eps: float) -> torch.Tensor:
    args = (x, conv1_weight, conv1_bias, conv2_weight, conv2_bias, norm_weight, eps)
    if kernels_in_use() == "extension":
        return torch.ops.hpcyuan.lfa_filter(*args)
    return reference_lfa_filter(*args)


def attention_router(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int):
    if kernels_in_use() == "extension":
        return torch.ops.hpcyuan.attention_router(q, k, v, top_k)
    return reference_attention_router(q, k, v, top_k)


__all__ = ["MODES", "OPS", "attention_router", "extension_available", "kernels_in_use", "lfa_filter",
           "reference_attention_router", "reference_lfa_filter", "reference_rms_norm", "rms_norm",
           "set_kernels"]
