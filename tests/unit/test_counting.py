"""Closed-form parameter counts (hpcyuan.model.counting) against the built modules, tiny and the
published presets (built on the meta device: shapes only, no memory), and against the papers.

    .venv/bin/python -m pytest tests/unit/test_counting.py -q -s
"""

import pytest
import torch

from hpcyuan.config import ModelConfig
from hpcyuan.model import build_model, count_parameters, training_flops_per_token

YUAN_VOCAB = 135040
PRESETS = {  # name: (config, exact total, exact active, published total, published active)
    "2B": (ModelConfig(vocab_size=YUAN_VOCAB, hidden_size=2048, num_layers=24, num_heads=32, seq_length=8192),
           2_088_724_480, 2_088_724_480, 2.09e9, None),
    "51B": (ModelConfig(vocab_size=YUAN_VOCAB, hidden_size=8192, num_layers=42, num_heads=64, seq_length=4096),
            51_842_105_344, 51_842_105_344, 51.8e9, None),
    "102B": (ModelConfig(vocab_size=YUAN_VOCAB, hidden_size=8192, num_layers=84, num_heads=64, seq_length=4096),
             102_577_954_816, 102_577_954_816, 102.6e9, None),
    "M32": (ModelConfig(vocab_size=YUAN_VOCAB, hidden_size=2048, num_layers=24, num_heads=16, head_dim=256,
                        ffn_hidden_size=8192, num_experts=32, moe_top_k=2, rotary_percent=0.5, seq_length=4096),
            39_942_842_368, 3_704_055_808, 39.9e9, 3.70e9),
}


def numel(config):
    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", [
    ModelConfig(),
    ModelConfig(vocab_size=100, hidden_size=48, num_layers=3, num_heads=6, ffn_hidden_size=72),
    ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, head_dim=24, num_experts=4, moe_top_k=2,
                rotary_percent=0.5),
    ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_experts=3, moe_top_k=1),
], ids=["default", "dense", "moe-top2", "moe-top1"])
def test_tiny_counts_match_modules(config):
    count = count_parameters(config)
    model = build_model(config)
    assert count.total == sum(p.numel() for p in model.parameters())
    assert count.embedding == config.vocab_size * config.hidden_size
    if config.is_moe:
        inactive = (config.num_experts - config.moe_top_k) * 3 * config.hidden_size * config.ffn_hidden_size
        assert count.active == count.total - config.num_layers * inactive
    else:
        assert count.active == count.total


@pytest.mark.parametrize("name", PRESETS)
def test_published_presets(name):
    config, total, active, published, published_active = PRESETS[name]
    count = count_parameters(config)
    built = numel(config)
    print(f"{name}: built {built:,} closed form {count.total:,} active {count.active:,} "
          f"({count.total / published - 1:+.3%} vs published)")
    assert built == count.total == total
    assert count.active == active
    assert abs(count.total / published - 1) < 0.01
    if published_active:
        assert abs(count.active / published_active - 1) < 0.01


def test_training_flops_per_token():
    config = PRESETS["M32"][0]
    count = count_parameters(config)
    flops = training_flops_per_token(config)
    attention = 12 * config.num_layers * config.seq_length * config.attention_width
    assert flops == 6 * count.active + attention  # 6 per active param (LM head incl.) + attention
    assert training_flops_per_token(config, seq_length=1) == 6 * count.active + attention // config.seq_length
    # P2: 22.2 GFLOPs/token for fine-tuning = 3 x 7.4 inference, which leaves out attention
    print(f"M32: {flops / 1e9:.2f} GFLOPs/token at T={config.seq_length}, "
          f"{6 * count.active / 1e9:.2f} without attention")
    assert abs(6 * count.active / 22.2e9 - 1) < 0.01
    dense = PRESETS["2B"][0]
    assert training_flops_per_token(dense) == 6 * count_parameters(dense).total + 12 * 24 * 8192 * 2048
