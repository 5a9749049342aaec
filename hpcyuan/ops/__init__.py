"""Operator entry points the model calls: the single place where kernels are chosen.

    from hpcyuan import ops
    ops.set_kernels("reference")        # or "auto" (default) / "extension"
    lf = ops.lfa_filter(x, ...)

Each op has a pure-PyTorch reference in `reference.py`. A compiled extension, when built, is the
module `hpcyuan._C`; importing it registers `torch.ops.hpcyuan.<op>` with the same signatures
(schemas and CPU/CUDA kernels in kernels/; autograd and fake registrations in `registrations.py`). Modes:
- "auto": per op, the extension's kernel when `hpcyuan._C` imports and registers that op, else the
  reference; if the extension is not built at all, one warning says so (the first time an op runs);
- "reference": always the references;
- "extension": the extension, and `set_kernels` raises HpcyuanError if it is not built.
"""

from __future__ import annotations

import importlib
import warnings

import torch

from hpcyuan.errors import HpcyuanError
from hpcyuan.ops.reference import (reference_attention_router, reference_fused_adamw_, reference_lfa_filter,
                                    reference_rms_norm)

MODES = ("auto", "reference", "extension")
OPS = ("rms_norm", "lfa_filter", "attention_router", "fused_adamw")

_mode = "auto"
_warned = False
_import_error: str | None = None


def _load_extension() -> frozenset[str]:
    """Import `hpcyuan._C` (once, when this module loads, so torch.compile never traces an import) and
    register fake + autograd for the ops it has; returns their names."""
    global _import_error
    try:
        importlib.import_module("hpcyuan._C")
    except (ImportError, OSError) as e:
        _import_error = f"{type(e).__name__}: {e}"
        return frozenset()
    from hpcyuan.ops import registrations

    available = frozenset(name for name in OPS if hasattr(torch.ops.hpcyuan, name))
    registrations.register(available)
    return available


_EXTENSION_OPS = _load_extension()


def extension_ops() -> frozenset[str]:
    """The ops of OPS that `hpcyuan._C` registers under torch.ops.hpcyuan (empty when it is not built)."""
    return _EXTENSION_OPS


def extension_available() -> bool:
    """True when `hpcyuan._C` imports and registers all of OPS under torch.ops.hpcyuan."""
    return extension_ops() == frozenset(OPS)


def _use_extension(op: str) -> bool:
    global _warned
    if _mode == "reference":
        return False
    if op in _EXTENSION_OPS:
        return True
    if not _EXTENSION_OPS and not _warned and not torch.compiler.is_compiling():
        _warned = True
        warnings.warn(f'hpcyuan: kernels = "auto" and the C++/CUDA extension hpcyuan._C is not built '
                      f'({_import_error}); running the pure-PyTorch reference ops '
                      '(pip install --no-build-isolation -e . builds it)', stacklevel=3)
    return False


def set_kernels(mode: str) -> None:
    """Choose the operator implementations for the whole process (see the module docstring)."""
    global _mode
    if mode not in MODES:
        raise HpcyuanError(f"kernels = \"{mode}\": must be one of {', '.join(MODES)}")
    if mode == "extension" and not extension_available():
        missing = ", ".join(name for name in OPS if name not in extension_ops())
        raise HpcyuanError(f'kernels = "extension" but the C++/CUDA extension hpcyuan._C is not built or lacks '
                           f'{missing} (pip install --no-build-isolation -e . builds it), or use kernels = "auto"')
    _mode = mode


def kernels_in_use() -> str:
    """What the ops below dispatch to right now: "extension" (all of OPS), "reference" (none), or
    "mixed" (a partly built extension in "auto" mode: the ops it has run compiled)."""
    if _mode == "reference" or not extension_ops():
        return "reference"
    return "extension" if extension_available() else "mixed"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if _use_extension("rms_norm"):
        return torch.ops.hpcyuan.rms_norm(x, weight, eps)
    return reference_rms_norm(x, weight, eps)


def lfa_filter(x, conv1_weight, conv1_bias, conv2_weight, conv2_bias, norm_weight, eps: float) -> torch.Tensor:
    args = (x, conv1_weight, conv1_bias, conv2_weight, conv2_bias, norm_weight, eps)
    if _use_extension("lfa_filter"):
        return torch.ops.hpcyuan.lfa_filter(*args)
    return reference_lfa_filter(*args)


def attention_router(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top_k: int):
    if _use_extension("attention_router"):
        return torch.ops.hpcyuan.attention_router(q, k, v, top_k)
    return reference_attention_router(q, k, v, top_k)


def fused_adamw_(master: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, grad: torch.Tensor,
                 param_out: torch.Tensor | None, *, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, step: int, grad_scale: float = 1.0,
                 into: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
    """One AdamW step in place on a flat fp32 shard (reference_fused_adamw_ gives the exact math).

    master, exp_avg, exp_avg_sq, grad: 1-D contiguous fp32 of one length; param_out: the same length in
    fp32 or bf16 (the model's working copy), or None to skip the write-back; step counts from 1.
    `into`: three more such tensors that receive the new master, exp_avg and exp_avg_sq instead, leaving
    the first three unchanged (the same bits as the in-place step).
    """
    _check_adamw_args(master, exp_avg, exp_avg_sq, grad, param_out, step, into)
    hyper = (lr, beta1, beta2, eps, weight_decay, step, grad_scale)
    if _use_extension("fused_adamw"):
        if into is None:
            torch.ops.hpcyuan.fused_adamw(master, exp_avg, exp_avg_sq, grad, param_out, *hyper)
        else:
            torch.ops.hpcyuan.fused_adamw_into(master, exp_avg, exp_avg_sq, grad, *into, param_out, *hyper)
        return
    if into is not None:
        for target, source in zip(into, (master, exp_avg, exp_avg_sq)):
            target.copy_(source)
        master, exp_avg, exp_avg_sq = into
    reference_fused_adamw_(master, exp_avg, exp_avg_sq, grad, param_out, lr=lr, beta1=beta1, beta2=beta2,
                           eps=eps, weight_decay=weight_decay, step=step, grad_scale=grad_scale)


def _check_adamw_args(master, exp_avg, exp_avg_sq, grad, param_out, step: int, into) -> None:
    n = master.numel()
    named = {"master": master, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "grad": grad, "param_out": param_out}
    if into is not None:
        if len(into) != 3:
            raise ValueError(f"fused_adamw_: into must be (master, exp_avg, exp_avg_sq), got {len(into)} tensors")
        named.update(zip(("into[0]", "into[1]", "into[2]"), into))
    for name, t in named.items():
        if t is None and name == "param_out":
            continue
        dtypes = (torch.float32, torch.bfloat16) if name == "param_out" else (torch.float32,)
        ok = t.dim() == 1 and t.numel() == n and t.is_contiguous() and t.dtype in dtypes
        if not ok or t.device != master.device:
            raise ValueError(f"fused_adamw_: {name} must be a 1-D contiguous {' or '.join(map(str, dtypes))} "
                             f"tensor of {n} elements on {master.device} (as master), got {tuple(t.shape)} "
                             f"{t.dtype} on {t.device}")
    if step < 1:
        raise ValueError(f"fused_adamw_: step = {step}, must be >= 1 (the first step is 1)")


__all__ = ["MODES", "OPS", "attention_router", "extension_available", "extension_ops", "fused_adamw_",
           "kernels_in_use", "lfa_filter", "reference_attention_router", "reference_fused_adamw_",
           "reference_lfa_filter", "reference_rms_norm", "rms_norm", "set_kernels"]
