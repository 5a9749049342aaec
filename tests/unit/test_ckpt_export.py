"""`hpcyuan ckpt export` and `hpcyuan generate` on checkpoints written by the real writer.

The checkpoints hold the tiny model's initial weights, split over two shard files as two dp ranks
would write them, with the meta a training run stores (model dict, config TOML with data.dir);
the tokenizer is the tiny preset's (the shakespeare_512 fixture).
"""

import dataclasses
import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from helpers import one_line_error
from hpcyuan import cli
from hpcyuan.checkpoint import CheckpointReader, Piece, begin, commit, write_shard
from hpcyuan.checkpoint.export import export_weights
from hpcyuan.config import load_config
from hpcyuan.data.tokenizer import Tokenizer
from hpcyuan.generate import Sampling, load_model, sample
from hpcyuan.model.yuan import build_model


def save(root, step, cfg, seed, bf16=False):
    """A checkpoint of build_model(cfg.model, seed): weights (fp32, or bf16 bits) and fp32 master
    split over two shards."""
    model = build_model(cfg.model, seed)
    pieces = [[], []]
    for name, tensor in model.named_tensors().items():
        flat = tensor.reshape(-1).numpy().copy()
        bits = tensor.reshape(-1).bfloat16().view(torch.int16).numpy().view(np.uint16)
        cut = flat.size // 2
        for rank, (start, stop) in enumerate(((0, cut), (cut, flat.size))):
            if start < stop:
                weight = (Piece(name, "weight", tuple(tensor.shape), start, stop, bits[start:stop], "bfloat16")
                          if bf16 else Piece(name, "weight", tuple(tensor.shape), start, stop, flat[start:stop]))
                pieces[rank] += [weight, Piece(name, "master", tuple(tensor.shape), start, stop, flat[start:stop])]
    tmp = begin(root, step)
    records = [write_shard(tmp, rank, p) for rank, p in enumerate(pieces)]
    meta = {"step": step, "consumed_samples": 8 * step, "optimizer_steps": step, "code_version": "test",
            "model": dataclasses.asdict(cfg.model), "config": cfg.to_toml(),
            "layout": {"pp": 1, "dp": 2, "layers_per_stage": [cfg.model.num_layers], "zero_stage": 1, "world_size": 2}}
    return commit(root, step, records, meta), model


@pytest.fixture(scope="module")
def run(shakespeare_512, tmp_path_factory):
    """A checkpoint root with steps 1 and 2 (different weights) and the step-2 model."""
    cfg = load_config("tiny", [f'data.dir="{shakespeare_512}"'])
    root = tmp_path_factory.mktemp("run") / "checkpoints"
    save(root, 1, cfg, seed=1)
    newest, model = save(root, 2, cfg, seed=2)
    return root, newest, model.eval(), cfg


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    root = run[0]
    out = tmp_path_factory.mktemp("export") / "tiny.h5"
    export_weights(root, out)
    return out


def test_export_holds_every_weight_as_plain_hdf5(run, tmp_path, capsys):
    root, newest, _, cfg = run
    out = tmp_path / "sub" / "w.h5"
    assert cli.main(["ckpt", "export", str(root), str(out)]) == 0
    assert f"of {newest} (step 2) to {out}" in capsys.readouterr().out
    assert not (tmp_path / "sub" / "w.h5.tmp").exists()
    with CheckpointReader(newest) as ck, h5py.File(out, "r") as f:  # plain h5py, default options
        assert sorted(f["weights"]) == ck.names("weight") and len(ck.names("weight")) > 10
        for name in ck.names("weight"):
            d = f["weights"][name]
            assert d.shape == ck.shape("weight", name) and d.dtype == np.float32 and d.attrs["dtype"] == "float32"
            assert np.array_equal(d[...], ck.read_tensor("weight", name)), name
        assert f.attrs["format"] == "hpcyuan-weights" and f.attrs["format_version"] == 1
        assert json.loads(f.attrs["model"]) == dataclasses.asdict(cfg.model)
        assert f.attrs["step"] == 2 and f.attrs["consumed_samples"] == 16 and f.attrs["code_version"] == "test"
        assert f.attrs["source_manifest_sha256"] == hashlib.sha256((newest / "manifest.json").read_bytes()).hexdigest()
        assert load_config("tiny", [f'data.dir="{cfg.data.dir}"']).to_toml() == f.attrs["config"]
    # one step directory exports alike, byte for byte in its weights
    one = tmp_path / "one.h5"
    export_weights(root / "step_00000001", one)
    with h5py.File(one, "r") as f, CheckpointReader(root / "step_00000001") as ck:
        assert f.attrs["step"] == 1
        assert np.array_equal(f["weights"]["embedding.weight"][...], ck.read_tensor("weight", "embedding.weight"))


def test_export_and_checkpoint_give_the_same_logits(run, exported):
    root, newest, truth, _ = run
    from_ckpt, w1 = load_model(root)
    from_file, w2 = load_model(exported)
    assert w1.source == newest and w2.step == w1.step == 2
    tokens = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(40).expand(2, 40)
    with torch.no_grad():
        a, b, c = (m(tokens, positions) for m in (from_ckpt, from_file, truth))
        assert torch.equal(a, b) and torch.equal(a, c)
        # causal: the logits of a prefix are those of the same positions in the longer sequence, so a
        # forward over the growing sequence (no KV cache) is exact
        assert torch.allclose(from_ckpt(tokens[:, :25], positions[:, :25]), a[:, :25], atol=1e-5, rtol=0)


def test_damaged_checkpoint_is_refused(run, tmp_path, capsys):
    root = tmp_path / "checkpoints"
    shutil.copytree(run[0], root, symlinks=True)
    shard = root / "step_00000002" / "shard_00001.h5"
    with h5py.File(shard, "r") as f:  # a byte inside the data of the embedding's piece
        offset = f["weight/embedding.weight"][next(iter(f["weight/embedding.weight"]))].id.get_offset()
    data = bytearray(shard.read_bytes())
    data[offset + 100] ^= 0xFF
    shard.write_bytes(bytes(data))

    out = tmp_path / "w.h5"
    assert cli.main(["ckpt", "export", str(root / "step_00000002"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "damaged checkpoint, refused" in err and "shard_00001.h5" in err, err
    assert not out.exists() and not (tmp_path / "w.h5.tmp").exists()
    # a root falls back to its newest good checkpoint and says which it skipped
    assert cli.main(["ckpt", "export", str(root), str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipping checkpoint" in captured.err and "step 1" in captured.out
    with h5py.File(out, "r") as f:
        assert f.attrs["step"] == 1


def test_generate_is_deterministic_from_checkpoint_and_export(run, exported, capsys):
    root, newest, _, _ = run
    texts = []
    for ckpt, seed in ((root, 3), (newest, 3), (exported, 3), (exported, 4)):
        assert cli.main(["generate", "--ckpt", str(ckpt), "--prompt", "ROMEO:", "--tokens", "12",
                         "--seed", str(seed), "--top-k", "20"]) == 0
        captured = capsys.readouterr()
        texts.append(captured.out)
        assert "step 2" in captured.err
    assert texts[0] == texts[1] == texts[2] != texts[3]
    assert texts[0].startswith("ROMEO:") and len(texts[0]) > len("ROMEO:\n")


def test_sample_gives_n_new_tokens_past_the_window(run, shakespeare_512):
    model = run[2]
    tok = Tokenizer.load(shakespeare_512 / "tokenizer.model")
    context = [tok.eod_id, *tok.encode("KING:")]
    how = Sampling(tokens=70, temperature=0.7, top_k=10, seed=5)  # past seq_length = 64: the window slides
    first = sample(model, context, how, tok)
    assert len(first) == 70 and all(0 <= t < tok.vocab_size for t in first)
    assert sample(model, context, how, tok) == first
    greedy = sample(model, context, Sampling(tokens=5, temperature=0), tok)
    with torch.no_grad():
        ids = torch.tensor([context])  # <eod> at position 0, then the document from 0 again
        positions = torch.tensor([[0, *range(len(context) - 1)]])
        assert greedy[0] == int(model(ids, positions)[0, -1, :tok.vocab_size].argmax())


def test_missing_tokenizer_is_one_clear_line(shakespeare_512, tmp_path, capsys):
    cfg = load_config("tiny", [f'data.dir="{tmp_path / "gone"}"'])
    root = tmp_path / "checkpoints"
    save(root, 1, cfg, seed=1)
    assert cli.main(["generate", "--ckpt", str(root), "--tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tokenizer not found" in err and "--tokenizer" in err and "gone" in err, err
    assert cli.main(["generate", "--ckpt", str(root), "--tokens", "2", "--tokenizer", str(tmp_path / "no.model")]) == 2
    assert "no tokenizer model there" in capsys.readouterr().err
    # the right one given explicitly (a file or its data dir) works
    assert cli.main(["generate", "--ckpt", str(root), "--tokens", "2", "--tokenizer", str(shakespeare_512)]) == 0
    assert capsys.readouterr().out


def test_bad_arguments_are_one_line_errors(run, tmp_path):
    one_line_error(lambda: Sampling(tokens=-1), "--tokens -1")
    one_line_error(lambda: Sampling(temperature=-0.5), "--temperature")
    one_line_error(lambda: export_weights(tmp_path / "nothing", tmp_path / "w.h5"), "no such checkpoint directory")
    one_line_error(lambda: export_weights(tmp_path, tmp_path / "w.h5"), "no checkpoints here")
    not_export = tmp_path / "other.h5"
    with h5py.File(not_export, "w") as f:
        f["x"] = 1
    one_line_error(lambda: load_model(not_export), "not an exported hpcyuan weights file")


def test_slow_export_reports_progress(run, tmp_path, monkeypatch):
    from hpcyuan.checkpoint import export

    eager = export.Progress
    monkeypatch.setattr(export, "Progress", lambda say: eager(say, after_s=0, every_s=0))
    lines = []
    export_weights(run[0], tmp_path / "w.h5", say=lines.append)
    assert lines[-1].startswith("export: 100% (") and "tensor 58/58" in lines[-1], lines[-3:]


def test_bf16_weights_export_as_their_bits_and_load_as_fp32(run, tmp_path):
    cfg = run[3]
    step_dir, model = save(tmp_path / "checkpoints", 1, cfg, seed=3, bf16=True)
    out = tmp_path / "bf16.h5"
    export_weights(step_dir, out)
    with h5py.File(out, "r") as f:
        d = f["weights"]["embedding.weight"]
        assert d.dtype == np.uint16 and d.attrs["dtype"] == "bfloat16"
    for source in (step_dir, out):
        loaded, _ = load_model(source)
        for name, tensor in loaded.named_tensors().items():
            assert tensor.dtype == torch.float32
            assert torch.equal(tensor, model.named_tensors()[name].bfloat16().float()), name
