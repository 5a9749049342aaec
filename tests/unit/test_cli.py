"""The `hpcyuan` command as a user runs it: help texts, config show, and bad input -> one line, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def hpcyuan(*args, cwd=REPO, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "hpcyuan", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    print(proc.stderr)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("hpcyuan: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("args", [[], ["train"], ["launch"], ["plan"], ["ckpt", "verify"], ["data", "prepare"],
                                  ["config", "show"]])
def test_help_explains_each_command(args):
    proc = hpcyuan(*args, "--help")
    assert proc.returncode == 0
    assert "usage: hpcyuan" in proc.stdout and len(proc.stdout.splitlines()) > 5


def test_config_show_prints_shapes_and_published_count():
    proc = hpcyuan("config", "show", "yuan-102b")
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert "102.58B" in proc.stdout and "layers.0.attn.q_proj.weight" in proc.stdout
    assert "[2, 2, 2" in proc.stdout  # the non-uniform pipeline split


def test_config_show_m32_active_parameters():
    proc = hpcyuan("config", "show", "yuan-m32")
    assert proc.returncode == 0, proc.stderr
    assert "39.94B" in proc.stdout and "3.70B active" in proc.stdout


def test_unknown_preset():
    assert_one_line_error(hpcyuan("config", "show", "yuan-7b"), "unknown preset 'yuan-7b'", "yuan-102b")


def test_bad_override():
    assert_one_line_error(hpcyuan("config", "show", "tiny", "--set", "model.num_heads=5"),
                          "model.hidden_size = 64", "model.num_heads (5)")


def test_missing_corpus(tmp_path):
    proc = hpcyuan("data", "prepare", "--config", "tiny", "--set", f"data.corpus={tmp_path}/nowhere",
                   "--set", f"data.dir={tmp_path}/out")
    assert_one_line_error(proc, "nowhere")


def test_empty_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("  \n\n")
    proc = hpcyuan("data", "prepare", "--config", "tiny", "--set", f"data.corpus={tmp_path}/corpus",
                   "--set", f"data.dir={tmp_path}/out")
    assert_one_line_error(proc, "corpus", "empty")


def test_training_without_prepared_data(tmp_path):
    proc = hpcyuan("train", "--config", "tiny", "--set", f"data.dir={tmp_path}/none", "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(proc, "hpcyuan data prepare")


def test_vocab_mismatch(shakespeare_512):
    proc = hpcyuan("train", "--config", "tiny", "--set", f"data.dir={shakespeare_512}",
                   "--set", "model.vocab_size=1024", "--run-dir", "/tmp/hpcyuan-never")
    assert_one_line_error(proc, "meta.json", "512", "model.vocab_size")


def test_sequence_longer_than_the_data(shakespeare_512):
    proc = hpcyuan("train", "--config", "tiny", "--set", f"data.dir={shakespeare_512}",
                   "--set", "model.seq_length=100000000", "--run-dir", "/tmp/hpcyuan-never")
    assert_one_line_error(proc, "seq_length", "100000000")


def test_launch_without_a_command():
    assert_one_line_error(hpcyuan("launch", "-n", "2"), "name the hpcyuan command to run")


def test_launch_with_no_ranks():
    assert_one_line_error(hpcyuan("launch", "-n", "0", "--", "config", "list"), "need at least one rank")
