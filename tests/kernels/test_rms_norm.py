"""hpcyuan::rms_norm (kernels/rms_norm.cpp) against reference_rms_norm: forward, backward, gradcheck, opcheck.

    .venv/bin/python -m pytest tests/kernels/test_rms_norm.py -q -s    # -s prints the max differences

Tolerances: fp32 atol = rtol = 1e-5 (both compute in fp32, only the summation order differs); bf16
atol = rtol = 2e-2 for outputs and grad_x (one bf16 ulp is 2^-8 relative; both compute in fp32 and round
once), grad_weight (kept in the weight's fp32) atol = rtol = 1e-4 on bf16 inputs. fp64 gradcheck at defaults.
"""

import pytest
import torch

from hpcyuan import ops
from hpcyuan.ops import reference_rms_norm

if "rms_norm" not in ops.extension_ops():
    pytest.skip("the extension hpcyuan._C is not built (pip install --no-build-isolation -e . builds it)",
                allow_module_level=True)

EPS = 1e-6
# (..., C): T = 1, odd sizes, a single channel, 1-D and 2-D inputs
SHAPES = [(1, 1, 8), (3, 1, 7), (2, 5, 33), (4, 17, 129), (2, 3, 1), (7,), (5, 3), (2, 64, 256)]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
DW_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=1e-4, rtol=1e-4)}


def _inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    w = 1 + 0.5 * torch.randn(shape[-1], generator=g)  # fp32 weight, as the model keeps it
    grad = torch.randn(shape, generator=g).to(dtype)
    return x, w, grad


def _fwd_bwd(fn, x, w, grad):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = fn(x, w, EPS)
    y.backward(grad)
    return y.detach(), x.grad, w.grad


def _maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_matches_reference(shape, dtype):
    x, w, grad = _inputs(shape, dtype, seed=len(shape) * 1000 + shape[-1])
    y, dx, dw = _fwd_bwd(torch.ops.hpcyuan.rms_norm, x, w, grad)
    y_ref, dx_ref, dw_ref = _fwd_bwd(reference_rms_norm, x, w, grad)
    print(f"\nrms_norm {dtype} {shape}: max|dy| {_maxdiff(y, y_ref):.2e}  max|dx| {_maxdiff(dx, dx_ref):.2e}"
          f"  max|dw| {_maxdiff(dw, dw_ref):.2e}")
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    torch.testing.assert_close(dx, dx_ref, **TOL[dtype])
    torch.testing.assert_close(dw, dw_ref, **DW_TOL[dtype])


def test_non_contiguous_input_and_dispatch_through_ops():
    x = torch.randn(6, 4, 9).transpose(0, 1)  # (4, 6, 9), not contiguous
    w = torch.randn(9)
    ops.set_kernels("auto")
    y = ops.rms_norm(x, w, EPS)  # the extension's kernel under "auto"
    torch.testing.assert_close(y, reference_rms_norm(x, w, EPS), atol=1e-5, rtol=1e-5)
    ops.set_kernels("reference")
    try:
        torch.testing.assert_close(ops.rms_norm(x, w, EPS), y, atol=1e-5, rtol=1e-5)
    finally:
        ops.set_kernels("auto")


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 4), (3, 7)])
def test_gradcheck_float64(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.hpcyuan.rms_norm(a, b, EPS), (x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_opcheck(dtype):
    _opcheck(dtype, "cpu")


def _opcheck(dtype, device: str) -> None:
    """torch.library.opcheck of the forward and backward ops on `device`."""
    x = torch.randn(3, 5, 17, device=device).to(dtype).requires_grad_()
    w = torch.randn(17, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.hpcyuan.rms_norm.default, (x, w, EPS))
    grad = torch.randn(3, 5, 17, device=device).to(dtype)
    torch.library.opcheck(torch.ops.hpcyuan.rms_norm_backward.default, (grad, x.detach(), w.detach(), EPS))


# CUDA (kernels/cuda/rms_norm_kernel.cu): skipped without a GPU. The CUDA kernels against the reference run on
# the CPU in fp64 from the same (rounded) inputs, i.e. the exact values rounded to the output dtype: y and
# grad_x within the CPU tolerances above (fp16 like bf16, fp64 1e-12); grad_weight, a sum over all rows in
# fp32 (fp64 for fp64 x, returned in the fp32 weight's dtype), within 1e-5 (fp64 x: 1e-6) of
# max(1, max|grad_weight|) (an elementwise rtol is meaningless where the sum cancels; seen with the CPU kernel
# at 2,100 rows: 9e-5 on a scale of 132). In fp32 also against the CPU kernel. Shapes add what the GPU kernels
# split differently: more than 512 rows (the backward's blocks stride over rows), rows wider than a block (256
# threads), no rows at all.
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA_SHAPES = SHAPES + [(3, 700, 300), (1100, 2048), (2, 4096), (0, 16)]
CUDA_TOL = {**TOL, torch.float16: TOL[torch.bfloat16], torch.float64: dict(atol=1e-12, rtol=1e-12)}


def _maxdiff0(a, b):  # _maxdiff, 0 for empty tensors
    return _maxdiff(a, b) if a.numel() else 0.0


def _close_to_scale(got, want, tol, what):
    diff = _maxdiff0(got, want)
    scale = max(1.0, want.abs().max().item() if want.numel() else 0.0)
    assert diff <= tol * scale, f"{what}: max|diff| {diff:.3e} > {tol} * {scale:.3e}"


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=["fp32", "bf16", "fp16", "fp64"])
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cuda_matches_reference(shape, dtype):
    x, w, grad = _inputs(shape, dtype, seed=len(shape) * 1000 + shape[-1] + 1)
    y, dx, dw = _fwd_bwd(torch.ops.hpcyuan.rms_norm, x.cuda(), w.cuda(), grad.cuda())
    assert y.is_cuda and dx.is_cuda and dw.is_cuda
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == torch.float32
    # the exact values: the reference in fp64 on the CPU, from the same (rounded) inputs, rounded once
    y_ref, dx_ref, dw_ref = _fwd_bwd(reference_rms_norm, x.double(), w.double(), grad.double())
    print(f"\nrms_norm CUDA {dtype} {shape}: max|dy| {_maxdiff0(y.cpu(), y_ref):.2e}  "
          f"max|dx| {_maxdiff0(dx.cpu(), dx_ref):.2e}  max|dw| {_maxdiff0(dw.cpu(), dw_ref):.2e}")
    torch.testing.assert_close(y.cpu(), y_ref.to(dtype), **CUDA_TOL[dtype])
    torch.testing.assert_close(dx.cpu(), dx_ref.to(dtype), **CUDA_TOL[dtype])
    dw_tol = 1e-6 if dtype == torch.float64 else 1e-5  # fp64: the fp64 sum, rounded to the fp32 weight's dtype
    _close_to_scale(dw.cpu().double(), dw_ref, dw_tol, "grad_weight vs fp64 reference")
    if dtype == torch.float32:  # and the CPU kernel: both fp32, only the summation order differs
        y_cpu, dx_cpu, dw_cpu = _fwd_bwd(torch.ops.hpcyuan.rms_norm, x, w, grad)
        torch.testing.assert_close(y.cpu(), y_cpu, **TOL[dtype])
        torch.testing.assert_close(dx.cpu(), dx_cpu, **TOL[dtype])
        _close_to_scale(dw.cpu(), dw_cpu, dw_tol, "grad_weight vs CPU kernel")


@CUDA
def test_cuda_non_contiguous_input_and_dispatch_through_ops():
    x = torch.randn(6, 4, 9, device="cuda").transpose(0, 1)  # (4, 6, 9), not contiguous
    w = torch.randn(9, device="cuda")
    ops.set_kernels("auto")
    y = ops.rms_norm(x, w, EPS)
    torch.testing.assert_close(y, reference_rms_norm(x, w, EPS), atol=1e-5, rtol=1e-5)


@CUDA
@pytest.mark.parametrize("shape", [(2, 3, 5), (3, 7), (520, 300)])
def test_cuda_gradcheck_float64(shape):
    # the largest shape (> 512 rows, > 256 columns) with gradcheck's fast mode: its full Jacobian is 10^10 entries
    x = torch.randn(shape, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.randn(shape[-1], dtype=torch.float64, device="cuda", requires_grad=True)
    fast = x.numel() > 1000
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.hpcyuan.rms_norm(a, b, EPS), (x, w), fast_mode=fast)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_opcheck(dtype):
    _opcheck(dtype, "cuda")
