"""The Yuan model (hpcyuan.model): causality, LFA/MoE against naive loops, gradients, stage slicing,
init, loading, position ids and bf16. Small shapes in float64 where exactness is checked.

    .venv/bin/python -m pytest tests/unit/test_model.py -q -s    # -s shows the max differences
"""

import math

import pytest
import torch
import torch.nn.functional as F

from hpcyuan.config import ModelConfig
from hpcyuan.errors import HpcyuanError
from hpcyuan.model import YuanStage, build_model, init_tensor, param_groups
from hpcyuan.model.rope import rope_cos_sin
from test_model_ops import naive_lfa_filter, naive_router

DENSE = ModelConfig(vocab_size=64, hidden_size=32, num_layers=3, num_heads=4, seq_length=12)
# M32-like: P = 2*24 = 48 != h = 32, partial rotary (12 of 24 dims), 4 experts, top-2
MOE = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, head_dim=24, ffn_hidden_size=40,
                  num_experts=4, moe_top_k=2, rotary_percent=0.5, seq_length=12)
CONFIGS = pytest.mark.parametrize("config", [DENSE, MOE], ids=["dense", "moe"])
B, T = 2, 12


def tokens(seed=0, vocab=64):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def positions(b=B, t=T):
    return torch.arange(t).expand(b, t)


def report(what, a, b):
    diff = (a.double() - b.double()).abs().max().item()
    print(f"{what}: max abs diff {diff:.3e}")
    return diff


@CONFIGS
def test_no_future_token_leak(config):
    model = build_model(config, seed=1).double().eval()
    ids = tokens()
    base = model(ids, positions())
    for t in (0, 5, T - 2):
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 7) % config.vocab_size
        out = model(changed, positions())
        past = report(f"logits[<= {t}] after changing token {t + 1}", base[:, : t + 1], out[:, : t + 1])
        # not bitwise for MoE: another token's routing changes the row count of each expert's
        # matmul, hence its blocking (fp64 rounding ~1e-17); a leak would be >= 1e-4
        assert past < 1e-12
        assert (base[:, t + 1:] - out[:, t + 1:]).abs().max() > 1e-4


def naive_rope(x, pos, rotary_dim, base):
    """x: (d,) one head at one position; rotate pairs (i, i + r/2) by pos * base^(-2i/r)."""
    out = x.clone()
    half = rotary_dim // 2
    for i in range(half):
        theta = pos * base ** (-2 * i / rotary_dim)
        a, b = x[i], x[i + half]
        out[i], out[i + half] = a * math.cos(theta) - b * math.sin(theta), b * math.cos(theta) + a * math.sin(theta)
    return out


def naive_lfa_attention(attn, x, pos, config):
    """Spec §1 written per position and head: Q, K from lf (with RoPE), V from x, causal softmax."""
    lf = naive_lfa_filter(x, attn.lf.conv1.weight, attn.lf.conv1.bias, attn.lf.conv2.weight,
                          attn.lf.conv2.bias, attn.lf.norm.weight, config.norm_eps)
    H, d, r = config.num_heads, config.head_dim, config.rotary_dim
    out = torch.zeros(x.shape[0], x.shape[1], H * d, dtype=x.dtype)
    for b in range(x.shape[0]):
        q, k, v = lf[b] @ attn.q_proj.weight.T, lf[b] @ attn.k_proj.weight.T, x[b] @ attn.v_proj.weight.T
        for h in range(H):
            heads = slice(h * d, (h + 1) * d)
            qs = [naive_rope(q[t, heads], pos[b, t].item(), r, config.rotary_base) for t in range(x.shape[1])]
            ks = [naive_rope(k[t, heads], pos[b, t].item(), r, config.rotary_base) for t in range(x.shape[1])]
            for t in range(x.shape[1]):
                scores = torch.stack([qs[t] @ ks[s] / math.sqrt(d) for s in range(t + 1)])
                out[b, t, heads] = scores.softmax(0) @ v[: t + 1, heads]
    return out @ attn.o_proj.weight.T


@CONFIGS
def test_lfa_attention_equals_naive_loop(config):
    attn = build_model(config, seed=2).double().layers["0"].attn
    x = torch.randn(B, 7, config.hidden_size, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [5, 6, 7, 8, 9, 10, 11]])  # a reset in row 0
    cos, sin = rope_cos_sin(pos, config.rotary_dim, config.rotary_base)
    got = attn(x, cos, sin)
    want = naive_lfa_attention(attn, x, pos, config)
    assert report("LFA attention vs naive", got, want) < 1e-9  # RoPE angles are fp32 by design


def test_moe_layer_equals_naive_loop():
    moe = build_model(MOE, seed=3).double().layers["0"].moe
    x = torch.randn(B, 5, MOE.hidden_size, dtype=torch.float64)
    got = moe(x)
    flat = x.reshape(-1, MOE.hidden_size)
    q, k, v = (flat @ w.weight.T for w in (moe.router.wq, moe.router.wk, moe.router.wv))
    gates, indices = naive_router(q, k, v, MOE.moe_top_k)
    ex = moe.experts
    want = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        for g, e in zip(gates[n], indices[n].tolist()):
            hidden = F.silu(ex.w1[e] @ flat[n]) * (ex.w3[e] @ flat[n])
            want[n] += g * (ex.w2[e] @ hidden)
    assert report("MoE layer vs naive", got.reshape(-1, MOE.hidden_size), want) < 1e-12


@CONFIGS
def test_gradients_reach_every_parameter(config):
    model = build_model(config, seed=4)
    selected = {}  # layer -> set of experts some token was routed to
    for name, layer in model.layers.items():
        if config.is_moe:
            layer.moe.router.register_forward_hook(
                lambda mod, inp, out, name=name: selected.setdefault(name, set()).update(out[1].flatten().tolist()))
    loss = model(tokens(), positions(), targets=tokens(seed=1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name.endswith(("experts.w1", "experts.w2", "experts.w3")):
            used = selected[name.split(".")[1]]
            print(f"{name}: experts used {sorted(used)}")
            for e in range(config.num_experts):
                assert (p.grad[e].abs().sum() > 0) == (e in used), (name, e)
            assert len(used) == config.num_experts, "test batch should route to every expert"
        else:
            assert p.grad.abs().sum() > 0, name


@CONFIGS
def test_stage_slicing_matches_full_model(config):
    full = build_model(config, seed=5)
    k = 1
    first = YuanStage(config, 0, k, has_embedding=True, has_head=False)
    last = YuanStage(config, k, config.num_layers - k, has_embedding=False, has_head=True)
    first.init_weights(5)
    last.init_weights(5)
    full_tensors = full.named_tensors()
    for stage in (first, last):
        for name, tensor in stage.named_tensors().items():
            assert torch.equal(tensor, full_tensors[name]), name
    assert set(first.named_tensors()) | set(last.named_tensors()) == set(full_tensors)
    assert "lm_head.weight" in dict(last.named_parameters())
    assert last.logical_name("lm_head.weight") == "embedding.weight"
    ids, pos = tokens(), positions()
    hidden = first(ids, pos)
    assert hidden.shape == (B, T, config.hidden_size)
    assert report("full vs staged logits", full(ids, pos), last(hidden, pos)) == 0.0
    assert torch.equal(full(ids, pos, targets=ids), last(hidden, pos, targets=ids))


def test_init_follows_spec():
    cfg = ModelConfig(vocab_size=64, hidden_size=256, num_layers=8, num_heads=4)
    t = build_model(cfg, seed=0).named_tensors()
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    print(f"q_proj std {t['layers.0.attn.q_proj.weight'].std():.4f} "
          f"o_proj std {t['layers.0.attn.o_proj.weight'].std():.4f} (want {out_std:.4f})")
    assert abs(t["layers.0.attn.q_proj.weight"].std() - cfg.init_std) < 0.1 * cfg.init_std
    assert abs(t["embedding.weight"].std() - cfg.init_std) < 0.1 * cfg.init_std
    assert abs(t["layers.3.attn.o_proj.weight"].std() - out_std) < 0.1 * out_std
    assert abs(t["layers.3.mlp.w2.weight"].std() - out_std) < 0.1 * out_std
    for name, bound in (("conv1", 1 / math.sqrt(2 * 256)), ("conv2", 1 / math.sqrt(256))):
        for kind in ("weight", "bias"):
            value = t[f"layers.1.attn.lf.{name}.{kind}"]
            assert value.abs().max() <= bound and value.abs().max() > 0.8 * bound, (name, kind)
    for name in ("final_norm.weight", "layers.2.input_norm.weight", "layers.2.mlp_norm.weight",
                 "layers.2.attn.lf.norm.weight"):
        assert torch.equal(t[name], torch.ones(256))
    # a pure function of (seed, name): different names and seeds differ, the same ones agree
    assert not torch.equal(t["layers.0.attn.q_proj.weight"], t["layers.0.attn.k_proj.weight"])
    w1 = "layers.5.mlp.w1.weight"
    assert torch.equal(init_tensor(cfg, w1, (4, 4), 7), init_tensor(cfg, w1, (4, 4), 7))
    assert not torch.equal(init_tensor(cfg, w1, (4, 4), 7), init_tensor(cfg, w1, (4, 4), 8))


def test_moe_expert_init_and_names():
    t = build_model(MOE, seed=0).named_tensors()
    E, h, f, P = MOE.num_experts, MOE.hidden_size, MOE.ffn_hidden_size, MOE.attention_width
    assert t["layers.1.moe.router.wq.weight"].shape == (E, h)
    assert t["layers.1.moe.experts.w1"].shape == (E, f, h) and t["layers.1.moe.experts.w3"].shape == (E, f, h)
    assert t["layers.1.moe.experts.w2"].shape == (E, h, f)
    assert t["layers.1.attn.q_proj.weight"].shape == (P, h) and t["layers.1.attn.o_proj.weight"].shape == (h, P)
    assert not any(".mlp." in name for name in t)


def test_param_groups():
    model = build_model(MOE, seed=0)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "embedding.weight" in decay["names"] and "layers.0.attn.lf.conv1.weight" in decay["names"]
    assert "layers.0.moe.experts.w2" in decay["names"]
    assert "layers.0.attn.lf.conv1.bias" in no_decay["names"] and "final_norm.weight" in no_decay["names"]
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@CONFIGS
def test_load_named_tensors_round_trip(config):
    a, b = build_model(config, seed=6), build_model(config, seed=7)
    ids, pos = tokens(), positions()
    assert not torch.equal(a(ids, pos), b(ids, pos))
    assert b.load_named_tensors({n: t.clone() for n, t in a.named_tensors().items()}) == []
    assert report("loaded model logits", a(ids, pos), b(ids, pos)) == 0.0
    # a last stage takes its layers and the tied head out of the full dict, ignoring the others
    last = YuanStage(config, 1, config.num_layers - 1, has_embedding=False, has_head=True)
    last.load_named_tensors(a.named_tensors())
    assert torch.equal(last.lm_head.weight, a.embedding.weight)


def test_load_accepts_megatron_conv2d_shapes():
    a, b = build_model(DENSE, seed=8), build_model(DENSE, seed=9)
    tensors = {n: (t.unsqueeze(-1) if ".lf.conv" in n and n.endswith("weight") else t)
               for n, t in a.named_tensors().items()}
    assert tensors["layers.0.attn.lf.conv1.weight"].shape == (16, 32, 2, 1)
    b.load_named_tensors(tensors)
    assert torch.equal(a(tokens(), positions()), b(tokens(), positions()))


def test_load_errors_name_the_tensors():
    model = build_model(DENSE, seed=0)
    good = model.named_tensors()
    missing = {n: t for n, t in good.items() if n != "layers.1.attn.q_proj.weight"}
    with pytest.raises(HpcyuanError, match=r"missing tensor\(s\).*layers\.1\.attn\.q_proj\.weight") as err:
        model.load_named_tensors(missing)
    print(err.value)
    wrong = dict(good, **{"layers.2.mlp.w2.weight": torch.zeros(32, 64)})
    expected = r"shape mismatch: layers\.2\.mlp\.w2\.weight \(expected \[32, 128\], got \[32, 64\]\)"
    with pytest.raises(HpcyuanError, match=expected) as err:
        model.load_named_tensors(wrong)
    print(err.value)
    for extra in ("layers.3.attn.q_proj.weight", "lm_head.weight", "layers.0.moe.router.wq.weight"):
        with pytest.raises(HpcyuanError, match=rf"unexpected tensor name\(s\).*{extra}") as err:
            model.load_named_tensors(dict(good, **{extra: torch.zeros(1)}))
        print(err.value)
    assert model.load_named_tensors(missing, strict=False) == ["layers.1.attn.q_proj.weight"]
    assert "\n" not in str(err.value)


@CONFIGS
def test_position_id_reset_changes_only_later_outputs(config):
    model = build_model(config, seed=10).double().eval()
    ids, boundary = tokens(), 5
    running = positions()
    reset = torch.cat([torch.arange(boundary), torch.arange(T - boundary)]).expand(B, T)
    a, b = model(ids, running), model(ids, reset)
    assert report("logits before the boundary", a[:, :boundary], b[:, :boundary]) == 0.0
    assert (a[:, boundary:] - b[:, boundary:]).abs().amax(-1).min() > 0  # every later position moves
    # RoPE only sees relative positions: shifting every id by a constant changes nothing
    assert report("logits with positions + 100", a, model(ids, running + 100)) < 1e-6  # fp32 angles


@CONFIGS
def test_bf16_autocast_close_to_fp32(config):
    model = build_model(config, seed=11)
    ids, pos = tokens(), positions()
    want_logits, want_loss = model(ids, pos), model(ids, pos, targets=tokens(seed=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(ids, pos), model(ids, pos, targets=tokens(seed=2))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    scale = want_logits.abs().max().item()
    diff = report(f"bf16 vs fp32 logits (fp32 max |logit| {scale:.3f})", logits, want_logits)
    assert diff < 0.05 * scale
    assert abs(loss.item() - want_loss.item()) < 0.02
    loss.backward()


def test_loss_is_mean_cross_entropy_of_logits():
    model = build_model(DENSE, seed=12)
    ids, targets = tokens(), tokens(seed=3)
    logits = model(ids, positions())
    assert logits.shape == (B, T, DENSE.vocab_size)
    want = F.cross_entropy(logits.reshape(-1, DENSE.vocab_size), targets.reshape(-1))
    assert report("loss", model(ids, positions(), targets=targets), want) < 1e-6


def test_attention_dropout_only_in_training():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, attention_dropout=0.5)
    model = build_model(cfg, seed=13)
    ids, pos = tokens(), positions()
    model.eval()
    assert torch.equal(model(ids, pos), model(ids, pos))
    model.train()
    assert not torch.equal(model(ids, pos), model(ids, pos))


def test_stage_range_checked():
    with pytest.raises(HpcyuanError, match="do not fit"):
        YuanStage(DENSE, 2, 2, has_embedding=False, has_head=True)


def test_hf_import_deinterleaves_query_key():
    from hpcyuan.model.convert import from_hf_state_dict

    ours = build_model(DENSE, seed=14)
    t = ours.named_tensors()
    H, d, h = DENSE.num_heads, DENSE.head_dim, DENSE.hidden_size
    hf = {"model.embed_tokens.weight": t["embedding.weight"], "model.norm.weight": t["final_norm.weight"],
          "lm_head.weight": t["embedding.weight"]}
    for i in range(DENSE.num_layers):
        L, p = f"layers.{i}.", f"model.layers.{i}."
        # Megatron's fused get_query_key: per head [Q_j; K_j]; HF q_proj/k_proj are its row halves
        fused = torch.stack([t[L + "attn.q_proj.weight"].view(H, d, h), t[L + "attn.k_proj.weight"].view(H, d, h)], 1)
        hf_q, hf_k = fused.reshape(2 * H * d, h).chunk(2)
        hf.update({p + "self_attn.q_proj.weight": hf_q, p + "self_attn.k_proj.weight": hf_k,
                   p + "input_layernorm.weight": t[L + "input_norm.weight"],
                   p + "post_attention_layernorm.weight": t[L + "mlp_norm.weight"],
                   p + "self_attn.v_proj.weight": t[L + "attn.v_proj.weight"],
                   p + "self_attn.o_proj.weight": t[L + "attn.o_proj.weight"],
                   p + "self_attn.lf_gate.output_layernorm.weight": t[L + "attn.lf.norm.weight"],
                   p + "mlp.up_proj.weight": t[L + "mlp.w1.weight"], p + "mlp.gate_proj.weight": t[L + "mlp.w3.weight"],
                   p + "mlp.down_proj.weight": t[L + "mlp.w2.weight"]})
        for conv in ("conv1", "conv2"):
            hf[p + f"self_attn.lf_gate.{conv}.weight"] = t[L + f"attn.lf.{conv}.weight"].unsqueeze(-1)
            hf[p + f"self_attn.lf_gate.{conv}.bias"] = t[L + f"attn.lf.{conv}.bias"]
        # the HF forward re-splits cat(q_proj x, k_proj x) per head into (q, k): check our reading of it
        x = torch.randn(3, h)
        q_hf, k_hf = torch.cat([x @ hf_q.T, x @ hf_k.T], -1).view(3, H, 2 * d).chunk(2, dim=-1)
        torch.testing.assert_close(q_hf.reshape(3, -1), x @ t[L + "attn.q_proj.weight"].T, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(k_hf.reshape(3, -1), x @ t[L + "attn.k_proj.weight"].T, rtol=1e-6, atol=1e-7)
    loaded = build_model(DENSE, seed=15)
    loaded.load_named_tensors(from_hf_state_dict(hf, DENSE))
    assert report("HF-imported logits", ours(tokens(), positions()), loaded(tokens(), positions())) == 0.0


def test_recomputed_layers_give_the_same_gradients_and_keep_less():
    """parallel.recompute_layers: backward reruns the first layers' forward; results are bitwise
    those of keeping the activations, and the saved tensors shrink."""
    from hpcyuan.config import load_config
    from hpcyuan.parallel.pipeline import build_stage
    from hpcyuan.runtime.topology import Topology

    cfg = load_config("tiny")
    topology = Topology(1, 1, (cfg.model.num_layers,))
    tokens = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_length), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(cfg.model.seq_length).expand(2, -1)
    results = {}
    for recompute in (0, 2, cfg.model.num_layers):
        stage = build_stage(cfg.model, topology, 0, recompute_layers=recompute)
        stage.init_weights(3)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            loss = stage(tokens, positions, tokens)
        loss.backward()
        results[recompute] = (loss.item(), [p.grad.clone() for p in stage.parameters()], sum(saved))
    base_loss, base_grads, base_saved = results[0]
    for recompute in (2, cfg.model.num_layers):
        loss, grads, saved = results[recompute]
        assert loss == base_loss and all(torch.equal(a, b) for a, b in zip(grads, base_grads))
        print(f"recompute {recompute} layers: saved {saved / base_saved:.2f} x the bytes of none")
    assert results[cfg.model.num_layers][2] < results[2][2] < base_saved
