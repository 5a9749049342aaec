"""hpcyuan::fused_adamw (kernels/fused_adamw.cpp) against reference_fused_adamw_ and torch.optim.AdamW
(foreach=True) on the same flat fp32 tensor: several steps, bf16 write-back, odd lengths, opcheck, errors.

    .venv/bin/python -m pytest tests/kernels/test_fused_adamw.py -q -s    # -s prints the max differences

Tolerance, after STEPS steps, for master, exp_avg and exp_avg_sq: |got - want| <= 4 fp32 ulp of the tensor's
scale (atol = 4 * 2^-23 * scale, rtol = 0), the scale being its largest magnitude or, for the moments, that of
their operands (max |g| and max g² over the steps) if larger; measured at most about 1 ulp. The update order is
torch's, but a step may round differently by about an ulp: torch's CPU kernels fuse lerp_ and addcmul_ into
FMAs and its CPU sqrt is not correctly rounded, while this kernel rounds every operation. The bound is on the
scale, not per element, because lerp_ can cancel: an element near zero carries an ulp of its operands.
reference_fused_adamw_ itself is bit-identical to torch.optim.AdamW (asserted below). The bf16 param_out must
equal master.to(bf16) exactly (round to nearest even). The step `into` other buffers (hpcyuan::fused_adamw_into,
what ZeroAdamW runs after a checkpoint snapshot) must give the in-place step's bits and leave its inputs alone.
"""

import pytest
import torch

from hpcyuan import ops
from hpcyuan.ops import reference_fused_adamw_

if "fused_adamw" not in ops.extension_ops():
    pytest.skip("the extension hpcyuan._C is not built (pip install --no-build-isolation -e . builds it)",
                allow_module_level=True)

STEPS = 5
HP = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8)
STATE = ("master", "exp_avg", "exp_avg_sq")
ULPS = 4


def _grads(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 10.0 ** -(step % 4) for step in range(STEPS)]  # varied magnitudes


def _state(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {"master": torch.randn(n, generator=g), "exp_avg": torch.zeros(n), "exp_avg_sq": torch.zeros(n)}


def _run(fn, n, weight_decay, grad_scale, out_dtype, seed=0):
    """STEPS steps of `fn` (kernel or reference) from one seeded state; returns the state and param_out."""
    st = _state(n, seed)
    out = None if out_dtype is None else torch.empty(n, dtype=out_dtype)
    for step, grad in enumerate(_grads(n, seed + 1), start=1):
        fn(st["master"], st["exp_avg"], st["exp_avg_sq"], grad, out, **HP, weight_decay=weight_decay, step=step,
           grad_scale=grad_scale)
    return st, out


def _kernel(master, exp_avg, exp_avg_sq, grad, out, *, lr, beta1, beta2, eps, weight_decay, step, grad_scale):
    torch.ops.hpcyuan.fused_adamw(master, exp_avg, exp_avg_sq, grad, out, lr, beta1, beta2, eps, weight_decay,
                                  step, grad_scale)


def _grad_max(n, grad_scale, seed=0):
    return max(g.abs().max().item() for g in _grads(n, seed + 1)) * grad_scale


def _torch_adamw(n, weight_decay, grad_scale, seed=0):
    """torch.optim.AdamW(foreach=True) on one flat parameter, fed grad * grad_scale (its own grad scaling)."""
    p = torch.nn.Parameter(_state(n, seed)["master"])
    opt = torch.optim.AdamW([p], lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                            weight_decay=weight_decay, foreach=True)
    for grad in _grads(n, seed + 1):
        p.grad = grad * grad_scale if grad_scale != 1.0 else grad
        opt.step()
    return {"master": p.detach(), "exp_avg": opt.state[p]["exp_avg"], "exp_avg_sq": opt.state[p]["exp_avg_sq"]}


def _compare(got, want, label, grad_max, equal_nan=False):
    """Each state tensor within ULPS ulp of its scale (module docstring); prints the max differences in ulp.
    grad_max: the largest |grad * grad_scale| of the steps run."""
    print(f"\n{label}:", end="")
    operands = {"master": 0.0, "exp_avg": grad_max, "exp_avg_sq": grad_max ** 2}
    for k in STATE:
        scale = max(want[k].nan_to_num(posinf=0, neginf=0).abs().max().item(), operands[k])
        ulp = torch.finfo(torch.float32).eps * scale
        diff = (got[k].double() - want[k].double()).nan_to_num().abs().max().item()
        print(f"  max|d {k}| {diff:.2e} ({diff / ulp if ulp else 0:.2f} ulp)", end="")
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=ULPS * ulp, equal_nan=equal_nan)


@pytest.mark.parametrize("n", [1, 7, 1000003])
@pytest.mark.parametrize("weight_decay, grad_scale", [(0.0, 1.0), (0.1, 1.0), (0.1, 0.25)],
                         ids=["wd0", "wd0.1", "wd0.1-scale0.25"])
def test_matches_reference_and_torch_adamw(n, weight_decay, grad_scale):
    got, out = _run(_kernel, n, weight_decay, grad_scale, torch.float32)
    ref, ref_out = _run(reference_fused_adamw_, n, weight_decay, grad_scale, torch.float32)
    opt = _torch_adamw(n, weight_decay, grad_scale)
    for k in STATE:  # the reference is torch's AdamW, operation for operation
        assert torch.equal(ref[k], opt[k]), k
    _compare(got, ref, f"fused_adamw n={n} wd={weight_decay} scale={grad_scale} vs reference / torch AdamW",
             _grad_max(n, grad_scale))
    assert torch.equal(out, got["master"]) and torch.equal(ref_out, ref["master"])


@pytest.mark.parametrize("n", [1, 7, 1000003])
def test_bf16_param_out_is_rounded_master(n):
    got, out = _run(_kernel, n, 0.1, 1.0, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, got["master"].to(torch.bfloat16))
    ref, ref_out = _run(reference_fused_adamw_, n, 0.1, 1.0, torch.bfloat16)
    _compare(got, ref, f"fused_adamw n={n} bf16 param_out vs reference", _grad_max(n, 1.0))


def test_no_param_out_and_dispatch_through_ops():
    n = 1001
    got, _ = _run(_kernel, n, 0.1, 1.0, None)
    ops.set_kernels("auto")
    via_ops, _ = _run(ops.fused_adamw_, n, 0.1, 1.0, None)  # the extension's kernel under "auto"
    for k in STATE:
        assert torch.equal(via_ops[k], got[k]), k
    ops.set_kernels("reference")
    try:
        ref, _ = _run(ops.fused_adamw_, n, 0.1, 1.0, None)
    finally:
        ops.set_kernels("auto")
    _compare(got, ref, "fused_adamw without param_out, ops.fused_adamw_ in reference mode", _grad_max(n, 1.0))


def test_special_values():
    # NaN and inf in the update propagate as torch's would; a bf16 NaN is written as a quiet NaN
    n = 8
    st = _state(n, 3)
    grad = torch.randn(n)
    grad[2], grad[5] = float("nan"), float("inf")
    out = torch.empty(n, dtype=torch.bfloat16)
    ref = {k: t.clone() for k, t in st.items()}
    _kernel(*st.values(), grad, out, **HP, weight_decay=0.1, step=1, grad_scale=1.0)
    reference_fused_adamw_(*ref.values(), grad, None, **HP, weight_decay=0.1, step=1)
    _compare(st, ref, "fused_adamw with NaN and inf gradients", grad.nan_to_num(posinf=0).abs().max().item(),
             equal_nan=True)
    assert torch.equal(out.isnan(), st["master"].isnan())


def test_opcheck():
    n = 37
    st = _state(n, 5)
    for out in (torch.empty(n), torch.empty(n, dtype=torch.bfloat16), None):
        args = (st["master"].clone(), st["exp_avg"].clone(), st["exp_avg_sq"].clone(), torch.randn(n), out,
                1e-3, 0.9, 0.95, 1e-8, 0.1, 3, 0.5)
        torch.library.opcheck(torch.ops.hpcyuan.fused_adamw.default, args)


def _into_vs_in_place(n, out_dtype, device="cpu", offset=0):
    """One step in place and one from copies of the same state `into` fresh buffers (through ops, so under
    the current kernels mode); asserts equal bits and untouched inputs. `offset` misaligns every pointer."""
    def buffer(t):
        return torch.cat([torch.zeros(offset, dtype=t.dtype), t]).to(device)[offset:]

    st = {k: buffer(t) for k, t in _state(n, 9).items()}
    st["exp_avg"].copy_(torch.randn(n))
    st["exp_avg_sq"].copy_(torch.rand(n))
    grad = buffer(torch.randn(n))
    frozen = {k: t.clone() for k, t in st.items()}  # the out-of-place step's inputs
    before = {k: t.clone() for k, t in st.items()}  # what they must still hold after it
    into = tuple(buffer(torch.full((n,), float("nan"))) for _ in STATE)
    outs = [None if out_dtype is None else buffer(torch.empty(n, dtype=out_dtype)) for _ in range(2)]
    kw = dict(**HP, weight_decay=0.1, step=4, grad_scale=0.5)
    ops.fused_adamw_(*st.values(), grad, outs[0], **kw)
    ops.fused_adamw_(*frozen.values(), grad, outs[1], **kw, into=into)
    for k, got in zip(STATE, into):
        assert torch.equal(frozen[k], before[k]), f"the step into other buffers changed its input {k}"
        assert torch.equal(got, st[k]), f"{k}: the step into other buffers differs from the in-place step"
    if out_dtype is not None:
        assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("mode", ["auto", "reference"])
@pytest.mark.parametrize("n", [1, 7, 1000003])
def test_into_equals_in_place_and_leaves_its_inputs(mode, n):
    ops.set_kernels(mode)
    try:
        _into_vs_in_place(n, torch.bfloat16)
        _into_vs_in_place(n, None)
    finally:
        ops.set_kernels("auto")


def test_into_opcheck():
    n = 37
    st = _state(n, 5)
    for out in (torch.empty(n), torch.empty(n, dtype=torch.bfloat16), None):
        args = (st["master"], st["exp_avg"], st["exp_avg_sq"], torch.randn(n), torch.empty(n), torch.empty(n),
                torch.empty(n), out, 1e-3, 0.9, 0.95, 1e-8, 0.1, 3, 0.5)
        torch.library.opcheck(torch.ops.hpcyuan.fused_adamw_into.default, args)


def test_bad_inputs_raise():
    n = 10
    st = _state(n, 7)
    grad = torch.randn(n)
    kw = dict(**HP, weight_decay=0.0, step=1)
    with pytest.raises(ValueError, match="grad must be a 1-D contiguous"):
        ops.fused_adamw_(*st.values(), grad[:-1], None, **kw)
    with pytest.raises(ValueError, match="param_out must be"):
        ops.fused_adamw_(*st.values(), grad, torch.empty(n, dtype=torch.float16), **kw)
    with pytest.raises(ValueError, match="exp_avg must be"):
        ops.fused_adamw_(st["master"], st["exp_avg"].double(), st["exp_avg_sq"], grad, None, **kw)
    with pytest.raises(ValueError, match="step = 0"):
        ops.fused_adamw_(*st.values(), grad, None, **HP, weight_decay=0.0, step=0)
    with pytest.raises(ValueError, match="into must be"):
        ops.fused_adamw_(*st.values(), grad, None, **kw, into=(torch.empty(n), torch.empty(n)))
    with pytest.raises(ValueError, match=r"into\[2\] must be"):
        ops.fused_adamw_(*st.values(), grad, None, **kw, into=(torch.empty(n), torch.empty(n), torch.empty(n - 1)))
    with pytest.raises(RuntimeError, match="must be 1-D"):
        torch.ops.hpcyuan.fused_adamw(*st.values(), grad[:5], None, 1e-3, 0.9, 0.95, 1e-8, 0.0, 1, 1.0)
    with pytest.raises(RuntimeError, match="exp_avg_sq_out must be 1-D"):
        torch.ops.hpcyuan.fused_adamw_into(*st.values(), grad, torch.empty(n), torch.empty(n), torch.empty(3), None,
                                           1e-3, 0.9, 0.95, 1e-8, 0.0, 1, 1.0)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@CUDA
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, None], ids=["fp32", "bf16", "none"])
@pytest.mark.parametrize("n, offset", [(1, 0), (7, 0), (1000003, 0), (1001, 1)], ids=["1", "7", "1000003", "unaligned"])
def test_cuda_matches_cpu_kernel(n, offset, out_dtype):
    # kernels/cuda/fused_adamw_kernel.cu (float4 path, scalar tail; `offset` = 1 makes every pointer unaligned
    # for float4, so the scalar kernel runs alone) against the CPU kernel; nvcc fuses FMAs where torch's CUDA
    # kernels do, so the two differ by about an ulp, within the tolerance above
    cpu, cpu_out = _run(_kernel, n, 0.1, 0.5, out_dtype)
    st = {k: torch.cat([torch.zeros(offset), t]).cuda()[offset:] for k, t in _state(n, 0).items()}
    out = None if out_dtype is None else torch.empty(n + offset, dtype=out_dtype, device="cuda")[offset:]
    for step, grad in enumerate(_grads(n, 1), start=1):
        grad = torch.cat([torch.zeros(offset), grad]).cuda()[offset:]
        _kernel(*st.values(), grad, out, **HP, weight_decay=0.1, step=step, grad_scale=0.5)
    got = {k: t.cpu() for k, t in st.items()}
    _compare(got, cpu, f"fused_adamw CUDA n={n} offset={offset} out={out_dtype} vs CPU kernel", _grad_max(n, 0.5))
    if out is not None:
        assert torch.equal(out.cpu(), got["master"].to(out_dtype))


@CUDA
def test_cuda_opcheck():
    n = 37
    args = [t.cuda() for t in _state(n, 5).values()] + [torch.randn(n, device="cuda"),
                                                         torch.empty(n, dtype=torch.bfloat16, device="cuda")]
    torch.library.opcheck(torch.ops.hpcyuan.fused_adamw.default, (*args, 1e-3, 0.9, 0.95, 1e-8, 0.1, 3, 0.5))


@CUDA
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, None], ids=["fp32", "bf16", "none"])
@pytest.mark.parametrize("n, offset", [(7, 0), (1000003, 0), (1001, 1)], ids=["7", "1000003", "unaligned"])
def test_cuda_into_equals_in_place(n, offset, out_dtype):
    _into_vs_in_place(n, out_dtype, device="cuda", offset=offset)


@CUDA
def test_cuda_into_opcheck():
    n = 37
    args = [t.cuda() for t in _state(n, 5).values()] + [torch.randn(n, device="cuda")]
    args += [torch.empty(n, device="cuda") for _ in STATE] + [torch.empty(n, dtype=torch.bfloat16, device="cuda")]
    torch.library.opcheck(torch.ops.hpcyuan.fused_adamw_into.default, (*args, 1e-3, 0.9, 0.95, 1e-8, 0.1, 3, 0.5))


@CUDA
@pytest.mark.parametrize("weight_decay, grad_scale", [(0.0, 1.0), (0.1, 0.25)], ids=["wd0", "wd0.1-scale0.25"])
def test_cuda_matches_torch_adamw_on_cuda(weight_decay, grad_scale):
    # against torch.optim.AdamW(foreach=True) stepping the same parameter on the GPU (torch's CUDA kernels)
    n = 1 << 20
    st = {k: t.cuda() for k, t in _state(n, 0).items()}
    for step, grad in enumerate(_grads(n, 1), start=1):
        _kernel(*st.values(), grad.cuda(), None, **HP, weight_decay=weight_decay, step=step, grad_scale=grad_scale)
    p = torch.nn.Parameter(_state(n, 0)["master"].cuda())
    opt = torch.optim.AdamW([p], lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                            weight_decay=weight_decay, foreach=True)
    for grad in _grads(n, 1):
        p.grad = grad.cuda() * grad_scale
        opt.step()
    want = {"master": p.detach().cpu(), "exp_avg": opt.state[p]["exp_avg"].cpu(),
            "exp_avg_sq": opt.state[p]["exp_avg_sq"].cpu()}
    _compare({k: t.cpu() for k, t in st.items()}, want,
             f"fused_adamw CUDA wd={weight_decay} scale={grad_scale} vs torch.optim.AdamW(foreach) on CUDA",
             _grad_max(n, grad_scale))


@CUDA
def test_cuda_special_values():
    # NaN and inf propagate as in the CPU kernel; a bf16 NaN is written as a NaN
    n = 8
    st = _state(n, 3)
    grad = torch.randn(n)
    grad[2], grad[5] = float("nan"), float("inf")
    cu = {k: t.cuda() for k, t in st.items()}
    out = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    _kernel(*cu.values(), grad.cuda(), out, **HP, weight_decay=0.1, step=1, grad_scale=1.0)
    _kernel(*st.values(), grad, None, **HP, weight_decay=0.1, step=1, grad_scale=1.0)
    _compare({k: t.cpu() for k, t in cu.items()}, st, "fused_adamw CUDA with NaN and inf gradients vs CPU kernel",
             grad.nan_to_num(posinf=0).abs().max().item(), equal_nan=True)
    assert torch.equal(out.cpu().isnan(), st["master"].isnan())
