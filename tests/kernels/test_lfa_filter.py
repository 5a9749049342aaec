"""hpcyuan::lfa_filter (kernels/lfa_filter.cpp) against reference_lfa_filter: forward, backward, bf16 and bf16
autocast, gradcheck, opcheck, and the tiny model trained with the extension vs the references.

    .venv/bin/python -m pytest tests/kernels/test_lfa_filter.py -q -s    # -s prints the max differences

Tolerances are on max|got - want| relative to max(1, max|want|) of each tensor (the weight and bias grads
are sums over B*T rows, so an elementwise rtol would be meaningless where they cancel):
- fp32: 1e-5 (both compute in fp32; only the GEMM summation order and where y1 is rounded differ: the
  reference rounds cur + shifted and + bias separately, the kernel once);
- bf16 (x and conv params bf16) and bf16 autocast (fp32 x and params): 4e-2, about ten bf16 ulps of the
  largest value: the GEMM outputs and y1 are bf16 in both, rounded at different points, and the grads
  sum B*T such values (the worst seen, 2e-2, is d conv1.bias at C = 2, a sum of 36 bf16 terms);
- fp64 gradcheck at its defaults; the tiny model's per-step losses, kernels "auto" vs "reference":
  fp32 2e-5 absolute, bf16 autocast 5e-3 absolute, losses ~6.3 (seen: 1e-6 and 1.5e-4; 4 AdamW steps from the
  same seed, random tokens).
"""

import pytest
import torch

from hpcyuan import ops
from hpcyuan.config import load_config
from hpcyuan.model import build_model
from hpcyuan.ops import reference_lfa_filter

if "lfa_filter" not in ops.extension_ops():
    pytest.skip("the extension hpcyuan._C is not built (pip install --no-build-isolation -e . builds it)",
                allow_module_level=True)

EPS = 1e-6
# (B, T, C), C even (conv1 has C/2 outputs): T = 1, B = 1, odd C/2, C = 2, a longer sequence
SHAPES = [(1, 1, 8), (3, 1, 6), (2, 5, 34), (1, 17, 130), (4, 9, 2), (2, 64, 256)]
TOL = {"fp32": 1e-5, "bf16": 4e-2, "autocast": 4e-2}
NAMES = ("lf", "grad_x", "grad_conv1_weight", "grad_conv1_bias", "grad_conv2_weight", "grad_conv2_bias",
         "grad_norm_weight")


def _inputs(shape, dtype, seed):
    """x, the five parameters (conv params in `dtype`, norm weight fp32 as the model keeps it), grad_out."""
    g = torch.Generator().manual_seed(seed)
    B, T, C = shape
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    params = [rand(C // 2, C, 2) / (2 * C) ** 0.5, 0.1 * rand(C // 2), rand(C, C // 2, 2) / C ** 0.5, 0.1 * rand(C)]
    return rand(B, T, C).to(dtype), [p.to(dtype) for p in params] + [1 + 0.1 * rand(C)], rand(B, T, C).to(dtype)


def _fwd_bwd(fn, x, params, grad, autocast=False):
    leaves = [t.clone().requires_grad_() for t in [x, *params]]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        lf = fn(*leaves, EPS)
    lf.backward(grad)
    return [lf.detach()] + [t.grad for t in leaves]


def _check(got, want, tol, what):
    """max|got - want| <= tol * max(1, max|want|) per tensor, printing each max difference."""
    for name, a, b in zip(NAMES, got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what} {name}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
        diff = (a.double() - b.double()).abs().max().item()
        scale = max(1.0, b.abs().max().item())
        print(f"{what} {name}: max|diff| {diff:.2e} (max|ref| {scale:.2e})")
        assert diff <= tol * scale, f"{what} {name}: max|diff| {diff:.3e} > {tol} * {scale:.3e}"


@pytest.mark.parametrize("mode", ["fp32", "bf16", "autocast"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_backward_matches_reference(shape, mode):
    x, params, grad = _inputs(shape, torch.bfloat16 if mode == "bf16" else torch.float32, seed=sum(shape))
    autocast = mode == "autocast"
    got = _fwd_bwd(torch.ops.hpcyuan.lfa_filter, x, params, grad, autocast)
    want = _fwd_bwd(reference_lfa_filter, x, params, grad, autocast)
    _check(got, want, TOL[mode], f"\nlfa_filter {mode} {shape}")


def test_autocast_runs_the_convs_in_bf16():
    # the Autocast kernel casts the conv params (not x, not norm_w): lf stays fp32 but moves off the fp32 result
    x, params, grad = _inputs((2, 16, 64), torch.float32, seed=5)
    fp32 = _fwd_bwd(torch.ops.hpcyuan.lfa_filter, x, params, grad)
    autocast = _fwd_bwd(torch.ops.hpcyuan.lfa_filter, x, params, grad, autocast=True)
    assert all(t.dtype == torch.float32 for t in autocast)
    diff = (autocast[0] - fp32[0]).abs().max().item()
    print(f"autocast vs fp32 lf: max|diff| {diff:.2e}")
    assert 1e-4 < diff < 0.1


def test_non_contiguous_input_and_dispatch_through_ops():
    x = torch.randn(6, 4, 10).transpose(0, 1)  # (4, 6, 10), not contiguous
    _, params, _ = _inputs((4, 6, 10), torch.float32, seed=3)
    ops.set_kernels("auto")
    lf = ops.lfa_filter(x, *params, EPS)  # the extension's kernel under "auto"
    torch.testing.assert_close(lf, reference_lfa_filter(x, *params, EPS), atol=1e-5, rtol=1e-5)
    ops.set_kernels("reference")
    try:
        torch.testing.assert_close(ops.lfa_filter(x, *params, EPS), lf, atol=1e-5, rtol=1e-5)
    finally:
        ops.set_kernels("auto")


def test_bad_shapes_are_rejected():
    x, params, _ = _inputs((2, 3, 8), torch.float32, seed=4)
    with pytest.raises(RuntimeError, match="must be even"):
        torch.ops.hpcyuan.lfa_filter(torch.randn(2, 3, 7), *params, EPS)
    with pytest.raises(RuntimeError, match=r"conv2_weight must be \[C, C/2, 2\]"):
        torch.ops.hpcyuan.lfa_filter(x, params[0], params[1], params[0], params[3], params[4], EPS)


@pytest.mark.parametrize("shape", [(2, 5, 6), (1, 1, 4), (3, 2, 2), (1, 7, 10)])
def test_gradcheck_float64(shape):
    x, params, _ = _inputs(shape, torch.float64, seed=6)
    leaves = [t.double().requires_grad_() for t in [x, *params]]
    assert torch.autograd.gradcheck(lambda *a: torch.ops.hpcyuan.lfa_filter(*a, EPS), leaves)


@pytest.mark.parametrize("dtypes", [(torch.float32,) * 2, (torch.bfloat16,) * 2, (torch.float64,) * 2,
                                    (torch.float32, torch.bfloat16)], ids=["fp32", "bf16", "fp64", "fp32-x-bf16-convs"])
def test_opcheck(dtypes):
    _opcheck(dtypes, "cpu")


def _opcheck(dtypes, device: str) -> None:
    """torch.library.opcheck of the op and of its forward and backward ops, on `device`."""
    x_dtype, conv_dtype = dtypes
    x, params, grad = _inputs((3, 5, 10), conv_dtype, seed=7)
    x, grad = x.to(x_dtype).to(device).requires_grad_(), grad.to(x_dtype).to(device)
    params = [p.to(device).requires_grad_() for p in params]
    torch.library.opcheck(torch.ops.hpcyuan.lfa_filter.default, (x, *params, EPS))
    torch.library.opcheck(torch.ops.hpcyuan.lfa_filter_forward.default, (x, *params, EPS))
    _, y1_pair, s, rstd = torch.ops.hpcyuan.lfa_filter_forward(x.detach(), *[p.detach() for p in params], EPS)
    w1, _, w2, _, nw = (p.detach() for p in params)
    torch.library.opcheck(torch.ops.hpcyuan.lfa_filter_backward.default,
                          (grad, x.detach(), w1, w2, nw, y1_pair, s, rstd))


def _train_losses(kernels: str, bf16: bool, steps: int = 4, device: str = "cpu") -> list[float]:
    """Per-step losses of the tiny model (configs/tiny.toml) under AdamW, random tokens, a fixed seed."""
    cfg = load_config("tiny")
    model = build_model(cfg.model, seed=0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    g = torch.Generator().manual_seed(1)
    B, T, V = 2, cfg.model.seq_length, cfg.model.vocab_size
    positions = torch.arange(T).expand(B, T).to(device)
    ops.set_kernels(kernels)
    losses = []
    try:
        for _ in range(steps):
            ids = torch.randint(0, V, (B, T + 1), generator=g).to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = model(ids[:, :-1], positions, targets=ids[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        ops.set_kernels("auto")
    return losses


@pytest.mark.parametrize("bf16,tol", [(False, 2e-5), (True, 5e-3)], ids=["fp32", "bf16-autocast"])
def test_tiny_model_trains_like_the_reference(bf16, tol):
    # "auto" runs every op the extension has (lfa_filter, rms_norm, ...); the dense tiny model calls no router
    auto, ref = _train_losses("auto", bf16), _train_losses("reference", bf16)
    print(f"\ntiny model losses (bf16 autocast: {bf16}):\n  auto      {auto}\n  reference {ref}")
    assert max(abs(a - r) for a, r in zip(auto, ref)) < tol
    assert auto[-1] < auto[0]  # it trains


# CUDA (kernels/cuda/lfa_filter.cu: cuBLAS GEMMs + lfa_filter_kernel.cu's fused passes): skipped without a GPU.
# The CUDA op against the reference on the CPU with the same tolerances (fp16 and fp16 autocast like bf16:
# fp16 rounds finer); the CUDA autocast runs under torch.autocast("cuda"), the reference under the CPU's with
# the same dtype. Shapes add what the GPU kernels split differently: more than 512 rows (the backward's
# blocks stride over rows), more than 256 channels (threads stride over columns), T = 1 with B > 1.
# C = 2 runs in fp32 and fp16 only: an RMSNorm over 2 channels is ill-conditioned in bf16 (a row whose two
# values are small gets a large rstd, and an ulp of s moves its gradient by ~rstd ulps). Seen on the H200 with
# these inputs (4x9x2, seed 16): grads 0.16 apart, and on the CPU the same inputs put the CPU kernel 0.14-0.25
# from the reference, and the bf16 reference itself up to 0.2 from the fp64 result. The CPU test above keeps
# C = 2 in bf16 on its own seed, where the bound holds.
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA_SHAPES = SHAPES + [(3, 300, 520), (4, 1, 64), (1, 700, 2048)]
CUDA_MODES = {"fp32": (torch.float32, None), "bf16": (torch.bfloat16, None), "fp16": (torch.float16, None),
              "autocast": (torch.float32, torch.bfloat16), "autocast-fp16": (torch.float32, torch.float16)}
CUDA_TOL = dict(TOL, fp16=TOL["bf16"], **{"autocast-fp16": TOL["autocast"]})
CUDA_CASES = [pytest.param(shape, mode, id=f"{'x'.join(map(str, shape))}-{mode}")
              for shape in CUDA_SHAPES for mode, (x_dtype, autocast) in CUDA_MODES.items()
              if shape[2] > 2 or (autocast or x_dtype) != torch.bfloat16]  # the convs' dtype


def _fwd_bwd_on(device, fn, x, params, grad, autocast_dtype=None):
    leaves = [t.detach().to(device, copy=True).requires_grad_() for t in [x, *params]]
    with torch.autocast(device, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        lf = fn(*leaves, EPS)
    lf.backward(grad.to(device))
    return [t.cpu() for t in [lf.detach()] + [t.grad for t in leaves]]


@CUDA
@pytest.mark.parametrize("shape, mode", CUDA_CASES)
def test_cuda_matches_reference(shape, mode):
    dtype, autocast = CUDA_MODES[mode]
    x, params, grad = _inputs(shape, dtype, seed=sum(shape) + 1)
    got = _fwd_bwd_on("cuda", torch.ops.hpcyuan.lfa_filter, x, params, grad, autocast)
    want = _fwd_bwd_on("cpu", reference_lfa_filter, x, params, grad, autocast)
    _check(got, want, CUDA_TOL[mode], f"\nlfa_filter CUDA {mode} {shape}")


@CUDA
def test_cuda_non_contiguous_input_and_dispatch_through_ops():
    x = torch.randn(6, 4, 10).transpose(0, 1)  # (4, 6, 10), not contiguous
    _, params, _ = _inputs((4, 6, 10), torch.float32, seed=3)
    ops.set_kernels("auto")
    lf = ops.lfa_filter(x.cuda(), *(p.cuda() for p in params), EPS)
    assert lf.is_cuda
    torch.testing.assert_close(lf.cpu(), reference_lfa_filter(x, *params, EPS), atol=1e-5, rtol=1e-5)


@CUDA
@pytest.mark.parametrize("shape", [(2, 5, 6), (1, 1, 4), (1, 7, 10)])
def test_cuda_gradcheck_float64(shape):
    x, params, _ = _inputs(shape, torch.float64, seed=6)
    leaves = [t.double().cuda().requires_grad_() for t in [x, *params]]
    assert torch.autograd.gradcheck(lambda *a: torch.ops.hpcyuan.lfa_filter(*a, EPS), leaves)


@CUDA
@pytest.mark.parametrize("dtypes", [(torch.float32,) * 2, (torch.bfloat16,) * 2, (torch.float16,) * 2,
                                    (torch.float32, torch.bfloat16)], ids=["fp32", "bf16", "fp16", "fp32-x-bf16-convs"])
def test_cuda_opcheck(dtypes):
    _opcheck(dtypes, "cuda")


@CUDA
@pytest.mark.parametrize("bf16,tol", [(False, 1e-4), (True, 5e-3)], ids=["fp32", "bf16-autocast"])
def test_cuda_tiny_model_trains_like_the_reference(bf16, tol):
    # the tiny model on the GPU, kernels "auto" (the CUDA lfa_filter and rms_norm) vs "reference"; fp32 allows
    # 1e-4 (CPU: 2e-5) since cuBLAS and the attention kernels on the GPU may sum in another order per call
    auto, ref = _train_losses("auto", bf16, device="cuda"), _train_losses("reference", bf16, device="cuda")
    print(f"\ntiny model losses on CUDA (bf16 autocast: {bf16}):\n  auto      {auto}\n  reference {ref}")
    assert max(abs(a - r) for a, r in zip(auto, ref)) < tol
    assert auto[-1] < auto[0]
