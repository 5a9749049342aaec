"""`hpcyuan config show`: a config's shapes, parameter counts, FLOPs and layout as text.

The parameter list comes from building one layer (plus embedding and final norm) on the `meta`
device, so it shows the real module's names and shapes without allocating memory, even for 102B.
"""

from __future__ import annotations

import torch

from hpcyuan.config import Config
from hpcyuan.model.counting import count_parameters, training_flops_per_token
from hpcyuan.model.yuan import YuanStage


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def describe(cfg: Config) -> str:
    m, par, tr = cfg.model, cfg.parallel, cfg.train
    counts = count_parameters(m)
    kind = f"Yuan 2.0-M32 style MoE: {m.num_experts} experts, top-{m.moe_top_k}, attention router" if m.is_moe \
        else "Yuan 2.0 dense (LFA attention, SwiGLU)"
    lines = [
        f"{cfg.name}: {kind}",
        f"  shapes      L={m.num_layers} layers, h={m.hidden_size}, heads {m.num_heads} x d={m.head_dim} "
        f"(P={m.attention_width}), ffn f={m.ffn_hidden_size}{' per expert' if m.is_moe else ''}, "
        f"vocab V={m.vocab_size}, seq {m.seq_length}",
        f"  rope        base {m.rotary_base:g}, rotary dims {m.rotary_dim} of {m.head_dim}"
        f"{', bf16 angles' if m.rope_bf16_angles else ''}",
        f"  parameters  {human(counts.total)} total ({counts.total:,})"
        + (f", {human(counts.active)} active per token ({counts.active:,})" if m.is_moe else "")
        + f", embedding {human(counts.embedding)} (tied with the LM head)",
        f"  training    {training_flops_per_token(m) / 1e9:,.2f} GFLOP per token (forward + backward)",
        "",
        f"  parameters of one decoder layer (x {m.num_layers}), plus embedding and final norm:",
    ]
    with torch.device("meta"):
        stage = YuanStage(m, first_layer=0, num_layers=1, has_embedding=True, has_head=True)
    names = dict(stage.named_parameters())
    width = max(len(n) for n in names)
    for name, param in names.items():
        lines.append(f"    {name:<{width}}  {str(list(param.shape)):<22} {human(param.numel()):>8}")
    split = list(par.layers_per_stage) if par.layers_per_stage else "uniform (planner)"
    tokens = tr.global_batch_size * m.seq_length
    lines += [
        "",
        f"  parallel    pp={par.pp} x dp={par.dp} = {par.world_size} ranks, ZeRO-{par.zero_stage}, "
        f"layers_per_stage {split}",
        f"  train       global batch {tr.global_batch_size} x {m.seq_length} = {human(tokens)} tokens/step, "
        f"{cfg.num_microbatches} micro-batches of {tr.micro_batch_size} per rank, {tr.steps:,} steps "
        f"= {human(tokens * tr.steps)} tokens, lr {tr.lr:g}",
    ]
    return "\n".join(lines)
