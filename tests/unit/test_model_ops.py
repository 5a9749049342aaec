"""The operator references (hpcyuan.ops) against naive per-position / per-token loops written
straight from the spec formulas (docs/model.md), and the kernel-mode switch.

    .venv/bin/python -m pytest tests/unit/test_model_ops.py -q -s    # -s shows the max differences
"""

import pytest
import torch

from hpcyuan import ops
from hpcyuan.errors import HpcyuanError


def naive_rms_norm(v, weight, eps):
    return weight * v / torch.sqrt((v * v).mean() + eps)


def naive_lfa_filter(x, w1, b1, w2, b2, norm_w, eps):
    """y1[t] = A0 x[t-1] + A1 x[t] + a; y2[t] = B0 y1[t-1] + B1 y1[t] + c; lf = RMSNorm(y2 + x)."""
    B, T, C = x.shape
    out = torch.empty_like(x)
    for b in range(B):
        y1 = []
        for t in range(T):
            x_prev = x[b, t - 1] if t > 0 else torch.zeros(C, dtype=x.dtype)
            y1.append(w1[:, :, 0] @ x_prev + w1[:, :, 1] @ x[b, t] + b1)
        for t in range(T):
            y1_prev = y1[t - 1] if t > 0 else torch.zeros(C // 2, dtype=x.dtype)  # zero pad, not b1
            y2 = w2[:, :, 0] @ y1_prev + w2[:, :, 1] @ y1[t] + b2
            out[b, t] = naive_rms_norm(y2 + x[b, t], norm_w, eps)
    return out


def naive_router(q, k, v, top_k):
    """Per token: A_ij = exp(q_i k_j) / Σ_j' exp(q_i k_j'), p_i = Σ_j A_ij v_j, top-k, softmax."""
    N, E = q.shape
    gates, indices = torch.empty(N, top_k, dtype=torch.float64), torch.empty(N, top_k, dtype=torch.int64)
    for n in range(N):
        p = []
        for i in range(E):
            row = [torch.exp(q[n, i] * k[n, j]) for j in range(E)]
            total = sum(row)
            p.append(sum(row[j] / total * v[n, j] for j in range(E)))
        p = torch.stack(p)
        chosen = sorted(range(E), key=lambda e: -p[e].item())[:top_k]
        vals = p[chosen]
        gates[n] = torch.exp(vals) / torch.exp(vals).sum()
        indices[n] = torch.tensor(chosen)
    return gates, indices


def lf_params(C, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return rand(C // 2, C, 2) * 0.3, rand(C // 2), rand(C, C // 2, 2) * 0.3, rand(C), 1 + 0.1 * rand(C)


def test_lfa_filter_equals_naive_loop():
    C = 8
    x = torch.randn(2, 7, C, dtype=torch.float64)
    params = lf_params(C)
    got = ops.reference_lfa_filter(x, *params, 1e-6)
    want = naive_lfa_filter(x, *params, 1e-6)
    print(f"lfa_filter max abs diff {(got - want).abs().max().item():.3e}")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_lfa_filter_is_causal_with_receptive_field_three():
    # lf[t] depends on x[t-2..t] only (spec §1): perturb x[4] -> rows 4, 5, 6 change, nothing else
    C = 8
    params = lf_params(C)
    x = torch.randn(1, 9, C, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 4] += 1.0
    diff = (ops.reference_lfa_filter(x, *params, 1e-6) - ops.reference_lfa_filter(x2, *params, 1e-6)).abs().amax(-1)[0]
    print(f"per-position change {diff.tolist()}")
    assert diff[:4].max() == 0 and diff[7:].max() == 0
    assert diff[4:7].min() > 0


def test_rms_norm_fp32_and_dtype():
    x = torch.randn(3, 5, 16, dtype=torch.bfloat16)
    w = torch.rand(16)
    got = ops.rms_norm(x, w, 1e-6)
    want = torch.stack([naive_rms_norm(v, w, 1e-6) for v in x.float().reshape(-1, 16)]).view(3, 5, 16)
    print(f"rms_norm max abs diff {(got.float() - want).abs().max().item():.3e}")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)


def test_router_equals_naive_loop():
    N, E, top_k = 6, 5, 2
    q, k, v = (torch.randn(N, E, dtype=torch.float64) for _ in range(3))
    gates, indices = ops.reference_attention_router(q, k, v, top_k)
    want_gates, want_idx = naive_router(q, k, v, top_k)
    print(f"router gates max abs diff {(gates - want_gates).abs().max().item():.3e}")
    assert indices.dtype == torch.int64
    assert torch.equal(indices, want_idx)
    torch.testing.assert_close(gates, want_gates, rtol=1e-12, atol=1e-12)


def test_router_fp32_output():
    q, k, v = (torch.randn(4, 8) for _ in range(3))
    gates, indices = ops.attention_router(q, k, v, 2)
    assert gates.dtype == torch.float32 and gates.shape == (4, 2) and indices.shape == (4, 2)
    torch.testing.assert_close(gates.sum(-1), torch.ones(4))


def test_set_kernels_modes():
    try:
        ops.set_kernels("reference")
        assert ops.kernels_in_use() == "reference"
        with pytest.raises(HpcyuanError, match="must be one of"):
            ops.set_kernels("fast")
        if not ops.extension_available():
            with pytest.raises(HpcyuanError, match="not built"):
                ops.set_kernels("extension")
            ops.set_kernels("auto")  # a partly built extension runs the ops it has, the references for the rest
            assert ops.kernels_in_use() == ("mixed" if ops.extension_ops() else "reference")
    finally:
        ops.set_kernels("auto")
