"""Closed-form parameter counts and training FLOPs per token of a Yuan 2.0 / M32 config (spec §3).

Per decoder layer (h hidden, P = H·d attention width, f ffn, E experts):
    attention 4hP (q, k, v, o) + LF convs 2h² + conv biases 1.5h + norms 3h (input, mlp, LF)
    dense MLP 3hf,  or  MoE: E·3hf experts + 3Eh attention router
plus the tied embedding V·h and the final norm h. "Active" counts only top_k experts per layer.

    python -c "from hpcyuan.config import ModelConfig; from hpcyuan.model import count_parameters; \
               print(count_parameters(ModelConfig(vocab_size=135040, hidden_size=2048, num_layers=24, num_heads=32)))"
"""

from __future__ import annotations

from typing import NamedTuple

from hpcyuan.config import ModelConfig


class ParameterCount(NamedTuple):
    total: int
    """Every parameter, the tied embedding/LM head counted once."""
    active: int
    """Parameters one token uses: total minus the experts it is not routed to."""
    embedding: int
    """V·h, the tied embedding (included in total and active)."""


def _layer_counts(config: ModelConfig) -> tuple[int, int]:
    """(total, active) parameters of one decoder layer."""
    h, P, f, E = config.hidden_size, config.attention_width, config.ffn_hidden_size, config.num_experts
    shared = 4 * h * P + 2 * h * h + (h // 2 + h) + 3 * h  # attention, LF convs, conv biases, norms
    if not config.is_moe:
        return shared + 3 * h * f, shared + 3 * h * f
    router = 3 * E * h
    return shared + router + E * 3 * h * f, shared + router + config.moe_top_k * 3 * h * f


def count_parameters(config: ModelConfig) -> ParameterCount:
    """Parameters of the full model of `config`, equal to the numel of `build_model(config)`."""
    total, active = _layer_counts(config)
    embedding = config.vocab_size * config.hidden_size
    outside = embedding + config.hidden_size  # tied embedding + final norm
    L = config.num_layers
    return ParameterCount(total=L * total + outside, active=L * active + outside, embedding=embedding)


def training_flops_per_token(config: ModelConfig, seq_length: int | None = None) -> int:
    """Forward + backward FLOPs per trained token (the MFU numerator), for sequences of seq_length
    (default config.seq_length):

        6 · (active params − V·h)  +  6 · V·h  +  12 · L · T · P

    - 6 per non-embedding active parameter (2 forward + 4 backward per multiply-add), norms and
      conv biases included like every 6N estimate; the embedding lookup itself costs nothing;
    - 6·V·h for the tied LM head matmul;
    - attention scores Q·Kᵀ and probs·V cost 2·T·P each forward per layer, so 12·L·T·P for
      training, counted at FULL T (no halving for the causal mask; Megatron/PaLM convention);
    - the router's E×E per-token attention (~3E² FLOPs) is neglected.
    """
    T = config.seq_length if seq_length is None else seq_length
    counts = count_parameters(config)
    dense = 6 * (counts.active - counts.embedding) + 6 * counts.embedding
    return dense + 12 * config.num_layers * T * config.attention_width
