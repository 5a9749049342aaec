"""hpcyuan::attention_router (kernels/attention_router.cpp) against reference_attention_router: forward,
backward, gradcheck, opcheck, dispatch and input errors.

    .venv/bin/python -m pytest tests/kernels/test_attention_router.py -q -s    # -s prints the max differences

Tolerances: fp32 gates atol = rtol = 1e-5 and grads atol = rtol = 1e-4 (the kernel's exp is a polynomial of
~2 ulp and sums in another order; grads are differences of such terms); fp64 gates and grads 1e-12 (std::exp
there). Expert indices must be equal, except on a token whose k-th and (k+1)-th values of p are within
1e-5 of each other (a near tie may break either way in fp32); the other checks skip such tokens.
"""

import pytest
import torch

from hpcyuan import ops
from hpcyuan.ops import reference_attention_router

if "attention_router" not in ops.extension_ops():
    pytest.skip("the extension hpcyuan._C is not built (pip install --no-build-isolation -e . builds it)",
                allow_module_level=True)

# (N, E, top_k): the configs' expert counts (4, 8, 16, 32, compiled for fixed E), other E (generic path),
# top_k = 1 and = E, a single token, no tokens
CASES = [(64, 8, 2), (300, 32, 2), (37, 16, 4), (50, 4, 2), (41, 5, 3), (20, 33, 2), (9, 3, 3), (17, 1, 1),
         (1, 8, 2), (0, 8, 2), (257, 8, 1)]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}
GRAD_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-12)}
TIE = 1e-5


def _inputs(N, E, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(N, E, generator=g) * 2).to(dtype) for _ in range(3))  # q, k, v


def _p_exact(q, k, v):
    """p = softmax_row(q kᵀ) v per token, in fp64: the values the top-k picks from."""
    q, k, v = q.double(), k.double(), v.double()
    return torch.bmm((q.unsqueeze(-1) * k.unsqueeze(-2)).softmax(-1), v.unsqueeze(-1)).squeeze(-1)


def _clear_rows(q, k, v, top_k):
    """Tokens whose top-k set is not a near tie (the k-th and (k+1)-th largest p differ by more than TIE)."""
    if top_k == q.shape[1]:
        return torch.ones(q.shape[0], dtype=torch.bool)
    top = _p_exact(q, k, v).topk(top_k + 1, dim=-1).values
    return (top[:, top_k - 1] - top[:, top_k]) > TIE


def _fwd_bwd(fn, q, k, v, top_k, grad):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    gates, indices = fn(q, k, v, top_k)
    if gates.numel():
        gates.backward(grad)
    grads = tuple(t.grad if t.grad is not None else torch.zeros_like(t) for t in (q, k, v))
    return gates.detach(), indices, grads


def _maxdiff(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}-E{}-k{}".format(*c))
def test_forward_backward_matches_reference(case, dtype):
    N, E, top_k = case
    q, k, v = _inputs(N, E, dtype, seed=N * 100 + E)
    grad = torch.randn(N, top_k, generator=torch.Generator().manual_seed(7)).to(dtype)
    gates, idx, grads = _fwd_bwd(torch.ops.hpcyuan.attention_router, q, k, v, top_k, grad)
    gates_ref, idx_ref, grads_ref = _fwd_bwd(reference_attention_router, q, k, v, top_k, grad)
    assert gates.dtype == dtype and idx.dtype == torch.int64 and gates.shape == idx.shape == (N, top_k)
    clear = _clear_rows(q, k, v, top_k)
    assert torch.equal(idx[clear], idx_ref[clear])
    g, gr = gates[clear], gates_ref[clear]
    dq, dk, dv = (t[clear] for t in grads)
    dq_ref, dk_ref, dv_ref = (t[clear] for t in grads_ref)
    print(f"\nattention_router {dtype} N={N} E={E} k={top_k}: near ties {int((~clear).sum())}  "
          f"max|dgates| {_maxdiff(g, gr):.2e}  max|dq| {_maxdiff(dq, dq_ref):.2e}  "
          f"max|dk| {_maxdiff(dk, dk_ref):.2e}  max|dv| {_maxdiff(dv, dv_ref):.2e}")
    torch.testing.assert_close(g, gr, **TOL[dtype])
    for got, want in ((dq, dq_ref), (dk, dk_ref), (dv, dv_ref)):
        torch.testing.assert_close(got, want, **GRAD_TOL[dtype])


def test_large_logits_stay_finite():
    # |q_i k_j| up to ~1e4: the row max is subtracted before exp, so nothing overflows
    q, k, v = (t * 50 for t in _inputs(64, 32, torch.float32, seed=3))
    gates, idx = torch.ops.hpcyuan.attention_router(q, k, v, 2)
    gates_ref, idx_ref = reference_attention_router(q, k, v, 2)
    clear = _clear_rows(q, k, v, 2)
    assert torch.isfinite(gates).all()
    assert torch.equal(idx[clear], idx_ref[clear])
    torch.testing.assert_close(gates[clear], gates_ref[clear], **TOL[torch.float32])


def test_non_contiguous_input_and_dispatch_through_ops():
    q, k, v = (t.t() for t in _inputs(8, 40, torch.float32, seed=5))  # (40, 8), not contiguous
    ops.set_kernels("auto")
    gates, idx = ops.attention_router(q, k, v, 2)  # the extension's kernel under "auto"
    gates_ref, idx_ref = reference_attention_router(q, k, v, 2)
    clear = _clear_rows(q, k, v, 2)
    assert torch.equal(idx[clear], idx_ref[clear])
    torch.testing.assert_close(gates[clear], gates_ref[clear], **TOL[torch.float32])


@pytest.mark.parametrize("case", [(6, 5, 2), (3, 8, 3), (4, 4, 4)])
def test_gradcheck_float64(case):
    N, E, top_k = case
    q, k, v = (t.requires_grad_() for t in _inputs(N, E, torch.float64, seed=11))
    assert torch.autograd.gradcheck(lambda a, b, c: torch.ops.hpcyuan.attention_router(a, b, c, top_k)[0], (q, k, v))


def test_indices_are_not_differentiable():
    q, k, v = (t.requires_grad_() for t in _inputs(5, 8, torch.float32, seed=13))
    gates, idx = torch.ops.hpcyuan.attention_router(q, k, v, 2)
    assert gates.requires_grad and not idx.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    q, k, v = (t.requires_grad_() for t in _inputs(33, 8, dtype, seed=17))
    torch.library.opcheck(torch.ops.hpcyuan.attention_router.default, (q, k, v, 2))
    gates, idx = torch.ops.hpcyuan.attention_router(q.detach(), k.detach(), v.detach(), 2)
    grad = torch.randn_like(gates)
    torch.library.opcheck(torch.ops.hpcyuan.attention_router_backward.default,
                          (grad, gates, idx, q.detach(), k.detach(), v.detach()))


def test_bad_inputs_raise():
    q, k, v = _inputs(4, 8, torch.float32, seed=19)
    with pytest.raises(RuntimeError, match="top_k must be in"):
        torch.ops.hpcyuan.attention_router(q, k, v, 9)
    with pytest.raises(RuntimeError, match="fp32 or fp64"):
        torch.ops.hpcyuan.attention_router(q.bfloat16(), k.bfloat16(), v.bfloat16(), 2)
    with pytest.raises(RuntimeError, match="one shape"):
        torch.ops.hpcyuan.attention_router(q, k[:, :4], v, 2)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES + [(70, 40, 3), (5, 100, 2)], ids=lambda c: "N{}-E{}-k{}".format(*c))
def test_cuda_matches_cpu_kernel(case, dtype):
    # kernels/cuda/attention_router_kernel.cu (a warp per token) against the CPU kernel, forward and backward
    N, E, top_k = case
    q, k, v = _inputs(N, E, dtype, seed=N * 100 + E + 1)
    grad = torch.randn(N, top_k, generator=torch.Generator().manual_seed(9)).to(dtype)
    fn = torch.ops.hpcyuan.attention_router
    gates, idx, grads = _fwd_bwd(fn, q, k, v, top_k, grad)
    gates_cu, idx_cu, grads_cu = _fwd_bwd(fn, *(t.cuda() for t in (q, k, v)), top_k, grad.cuda())
    clear = _clear_rows(q, k, v, top_k)
    print(f"\nattention_router CUDA {dtype} N={N} E={E} k={top_k}: "
          f"max|dgates| {_maxdiff(gates_cu.cpu()[clear], gates[clear]):.2e}")
    assert torch.equal(idx_cu.cpu()[clear], idx[clear])
    torch.testing.assert_close(gates_cu.cpu()[clear], gates[clear], **TOL[dtype])
    for got, want in zip(grads_cu, grads):
        torch.testing.assert_close(got.cpu()[clear], want[clear], **GRAD_TOL[dtype])


@CUDA
def test_cuda_opcheck():
    q, k, v = (t.cuda().requires_grad_() for t in _inputs(33, 8, torch.float32, seed=17))
    torch.library.opcheck(torch.ops.hpcyuan.attention_router.default, (q, k, v, 2))
