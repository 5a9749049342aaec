"""The single-process training loop on the tiny presets: it learns, logs, and is deterministic."""

import json
import math

import pytest

from hpcyuan.config import load_config
from hpcyuan.train import train


def tiny(preset, data_dir, run_dir, *extra):
    return load_config(preset, [f'data.dir="{data_dir}"', f'train.run_dir="{run_dir}"', *extra])


def rows(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.parametrize("preset", ["tiny", "tiny-m32"])
def test_tiny_model_learns_and_logs(preset, shakespeare_512, tmp_path, capsys):
    cfg = tiny(preset, shakespeare_512, tmp_path, "train.steps=40", "train.eval_interval=20")
    result = train(cfg)
    out = capsys.readouterr().out
    print(out)

    train_rows, eval_rows = rows(tmp_path, "train"), rows(tmp_path, "eval")
    assert [r["step"] for r in train_rows] == list(range(5, 41, 5))
    assert [r["step"] for r in eval_rows] == [20, 40]
    first, last = train_rows[0]["loss"], train_rows[-1]["loss"]
    print(f"{preset}: train loss {first:.3f} -> {last:.3f}, val {result.val_loss:.3f}, "
          f"unigram entropy {result.unigram_entropy:.3f}")
    assert last < first - 0.5                           # it learns
    assert result.val_loss < math.log(cfg.model.vocab_size)  # better than uniform guessing
    assert train_rows[-1]["consumed_samples"] == 40 * cfg.train.global_batch_size
    assert all(math.isfinite(r["grad_norm"]) and r["tokens_per_s"] > 0 for r in train_rows)
    assert "step 40/40 | loss" in out and "ETA" in out and "vs unigram entropy" in out
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 40
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(str(tmp_path / "config.toml")) == cfg  # the stored config is complete


def test_same_seed_same_losses_bitwise(shakespeare_512, tmp_path):
    """Two runs of the same config give the same losses bit for bit (the basis of exact resume)."""
    losses = []
    for name in ("a", "b"):
        cfg = tiny("tiny", shakespeare_512, tmp_path / name, "train.steps=10", "train.log_interval=1",
                   "model.attention_dropout=0.1")
        train(cfg)
        losses.append([r["loss"] for r in rows(tmp_path / name, "train")])
    assert losses[0] == losses[1]


def test_bf16_autocast_trains(shakespeare_512, tmp_path):
    cfg = tiny("tiny", shakespeare_512, tmp_path, "train.steps=10", "train.bf16=true")
    result = train(cfg)
    assert math.isfinite(result.val_loss) and result.val_loss < math.log(cfg.model.vocab_size)
