"""The checkpoint file layer on one process: 3 simulated ranks write uneven flat ranges of a few
tensors (one tensor split across all three shards), commit, and read back bit for bit through the
reader and through plain h5py on index.h5; retention and `latest`; damage (flipped byte, missing
manifest, missing shard) is named and skipped; bad coverage and a full disk give clear errors.

    OMP_NUM_THREADS=1 python -m pytest tests/unit/test_checkpoint_format.py -q
"""

import errno
import io
import json
import math
import os
import shutil

import h5py
import numpy as np
import pytest

from hpcyuan.checkpoint import (
    CheckpointReader, Piece, ShardRecord, begin, commit, latest_good, list_checkpoints, verify, write_shard,
)
from hpcyuan.checkpoint import writer
from hpcyuan.errors import HpcyuanError

SHAPES = {"embedding.weight": (11, 6), "layers.0.attn.q_proj.weight": (6, 6), "layers.0.norm.weight": (6,)}
# Per rank: (name, start, stop) of each flattened tensor it owns (like ZeRO regions cut at parameters).
LAYOUT = [
    [("embedding.weight", 0, 29)],
    [("embedding.weight", 29, 30), ("layers.0.attn.q_proj.weight", 0, 36), ("layers.0.norm.weight", 0, 2)],
    [("embedding.weight", 30, 66), ("layers.0.norm.weight", 2, 6)],
]
KINDS = ("weight", "master", "exp_avg", "exp_avg_sq")


def tensors(step: int) -> dict:
    """{(kind, name): full tensor} with values that differ per step, kind and name."""
    rng = np.random.default_rng(step)
    return {(k, n): rng.standard_normal(shape).astype(np.float32) for k in KINDS for n, shape in SHAPES.items()}


def save(root, step, keep_last=3, keep_every=0, layout=LAYOUT, arrays=None):
    full = tensors(step)
    tmp = begin(root, step)
    records = []
    for rank, owned in enumerate(layout):
        pieces = [Piece(n, k, SHAPES[n], a, b, full[(k, n)].reshape(-1)[a:b].copy())
                  for k in KINDS for n, a, b in owned]
        records.append(write_shard(tmp, rank, pieces))
    records = [ShardRecord.from_bytes(r.to_bytes()) for r in records]  # as gathered over MPI
    meta = {"consumed_samples": 8 * step, "config": "[model]\nlayers = 1\n", "layout": {"pp": 1, "dp": 3}}
    return commit(root, step, records, meta, keep_last=keep_last, keep_every=keep_every, arrays=arrays), full


def test_roundtrip_bit_exact_through_reader_and_plain_h5py(tmp_path):
    rng_state = np.arange(5000, dtype=np.uint8)
    path, full = save(tmp_path / "ck", 7, arrays={"rng/rank_00001/torch_cpu": rng_state})
    assert path.name == "step_00000007" and not (tmp_path / "ck" / "step_00000007.tmp").exists()
    assert sorted(os.listdir(path)) == ["index.h5", "manifest.json", "meta.json", "shard_00000.h5",
                                        "shard_00001.h5", "shard_00002.h5", "state.h5"]
    assert verify(path, deep=True) == []
    with CheckpointReader(path) as ck:
        assert ck.meta["step"] == 7 and ck.meta["consumed_samples"] == 56 and ck.meta["layout"]["dp"] == 3
        assert ck.names("master") == sorted(SHAPES)
        assert np.array_equal(ck.state("rng/rank_00001/torch_cpu"), rng_state)
        for (kind, name), t in full.items():
            assert ck.shape(kind, name) == t.shape and ck.dtype(kind, name) == "float32"
            got = ck.read_tensor(kind, name)
            assert got.dtype == np.float32 and got.tobytes() == t.tobytes()
        flat = full[("exp_avg", "embedding.weight")].reshape(-1)
        for a, b in [(0, 0), (28, 31), (5, 66), (29, 30), (30, 31), (65, 66)]:  # ranges across shard borders
            assert ck.read("exp_avg", "embedding.weight", a, b).tobytes() == flat[a:b].tobytes()
        with pytest.raises(ValueError, match=r"outside \[0, 66\)"):
            ck.read("weight", "embedding.weight", 60, 67)
        with pytest.raises(HpcyuanError, match="no weight tensor 'nope'"):
            ck.read("weight", "nope")
    # plain h5py, after moving the directory and from another working directory
    moved = shutil.move(str(path), str(tmp_path / "elsewhere"))
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        with h5py.File(os.path.join(moved, "index.h5"), "r") as f:
            for (kind, name), t in full.items():
                d = f[kind][name]
                got = d[...].reshape(tuple(d.attrs["shape"]))
                assert got.tobytes() == t.tobytes(), (kind, name)
    finally:
        os.chdir(cwd)


def test_bfloat16_bits_roundtrip(tmp_path):
    bits = np.arange(12, dtype=np.uint16) * 1000
    tmp = begin(tmp_path, 1)
    rec = write_shard(tmp, 0, [Piece("w", "weight", (3, 4), 0, 12, bits, dtype="bfloat16")])
    path = commit(tmp_path, 1, [rec], {})
    with CheckpointReader(path) as ck:
        assert ck.dtype("weight", "w") == "bfloat16"
        assert np.array_equal(ck.read_tensor("weight", "w"), bits.reshape(3, 4))
    with pytest.raises(ValueError, match="dtype bfloat16 stored as float32"):
        Piece("w", "weight", (3,), 0, 3, np.zeros(3, np.float32), dtype="bfloat16")


def test_latest_and_retention(tmp_path):
    root = tmp_path / "ck"
    for step in range(1, 9):
        save(root, step, keep_last=2, keep_every=3)
        assert os.readlink(root / "latest") == f"step_{step:08d}"
    assert [s for s, _ in list_checkpoints(root)] == [3, 6, 7, 8]
    assert latest_good(root) == (root / "step_00000008", [])
    # `latest` is never removed, even when it is not among the last K
    os.symlink("step_00000003", root / "l.tmp")
    os.replace(root / "l.tmp", root / "latest")
    writer.retain(root, keep_last=1)
    assert [s for s, _ in list_checkpoints(root)] == [3, 8]


def test_flipped_byte_is_named_and_falls_back(tmp_path):
    root = tmp_path / "ck"
    save(root, 1)
    path, _ = save(root, 2)
    # a byte inside a piece's data: shard 2 holds embedding.weight [30, 66) of every kind
    shard = path / "shard_00002.h5"
    with h5py.File(shard, "r") as f:
        offset = f["weight/embedding.weight/30_66"].id.get_chunk_info(0).byte_offset  # its one chunk
    data = bytearray(shard.read_bytes())
    data[offset + 17] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = verify(path)
    print("\n".join(problems))
    assert problems[0].startswith("shard_00002.h5: crc32")
    assert any("/weight/embedding.weight/30_66 corrupted, fails its fletcher32" in p for p in problems)
    good, messages = latest_good(root)
    print("\n".join(messages))
    assert good == root / "step_00000001"
    assert len(messages) == 1 and "step_00000002" in messages[0] and "shard_00002.h5" in messages[0]
    assert "\n" not in messages[0]
    with CheckpointReader(path) as ck, pytest.raises(HpcyuanError, match="shard_00002.h5: cannot read"):
        ck.read("weight", "embedding.weight", 40, 41)


def test_a_flipped_byte_anywhere_in_a_shard_is_reported_never_raised(tmp_path):
    """Metadata too: a byte flipped in an object header makes h5py raise RuntimeError, not OSError."""
    path, _ = save(tmp_path / "ck", 1)
    shard = path / "shard_00002.h5"
    original = shard.read_bytes()
    for offset in range(0, len(original), max(1, len(original) // 64)):
        data = bytearray(original)
        data[offset] ^= 0xFF
        shard.write_bytes(bytes(data))
        problems = verify(path)
        assert problems and problems[0].startswith("shard_00002.h5: crc32"), (offset, problems)


def test_missing_manifest_is_partial_and_skipped(tmp_path):
    root = tmp_path / "ck"
    save(root, 1)
    path, _ = save(root, 2)
    (path / "manifest.json").unlink()
    assert verify(path) == ["partial: no manifest.json (the save did not finish)"]
    (root / "step_00000003.tmp").mkdir()  # a killed save
    good, messages = latest_good(root)
    assert good == root / "step_00000001"
    assert messages == [f"skipping checkpoint {path}: partial: no manifest.json (the save did not finish)",
                        f"ignoring unfinished save {root / 'step_00000003.tmp'} (killed or still running)"]


def test_missing_shard_and_unknown_version_are_named(tmp_path):
    path, _ = save(tmp_path, 1)
    (path / "shard_00001.h5").unlink()
    assert verify(path) == ["shard_00001.h5: missing"]
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert verify(path) == ["format version 99 unknown (this hpcyuan reads version 1)"]
    assert latest_good(tmp_path)[0] is None


@pytest.mark.parametrize("layout, message", [
    ([[("embedding.weight", 0, 30)], [("embedding.weight", 29, 66)]],
     r"weight embedding.weight: elements \[29, 30\) are written by both shard_00000.h5 and shard_00001.h5"),
    ([[("embedding.weight", 0, 29)], [("embedding.weight", 30, 66)]],
     r"weight embedding.weight: elements \[29, 30\) of 66 are written by no rank"),
    ([[("embedding.weight", 0, 29)], [("embedding.weight", 29, 65)]],
     r"weight embedding.weight: elements \[65, 66\) of 66 are written by no rank"),
])
def test_bad_coverage_is_a_clear_error(tmp_path, layout, message):
    root = tmp_path / "ck"
    save(root, 1, layout=[[("embedding.weight", 0, 66)]])
    with pytest.raises(HpcyuanError, match=message):
        save(root, 2, layout=layout)
    assert not (root / "step_00000002.tmp").exists() and not (root / "step_00000002").exists()
    assert latest_good(root) == (root / "step_00000001", [])


def test_piece_validation():
    with pytest.raises(ValueError, match=r"need 0 <= start < stop <= 6"):
        Piece("w", "weight", (2, 3), 4, 7, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="kind must be one of"):
        Piece("w", "grad", (3,), 0, 3, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="1-D with 3 elements"):
        Piece("w", "weight", (3,), 0, 3, np.zeros(2, np.float32))


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["_write_dataset", "_write_index", "_write_bytes"])
def test_disk_full_leaves_previous_checkpoint_intact(tmp_path, monkeypatch, target):
    root = tmp_path / "ck"
    first, full = save(root, 1)
    monkeypatch.setattr(writer, target, enospc)
    with pytest.raises(HpcyuanError) as info:
        try:
            save(root, 2)
        except HpcyuanError:
            if target == "_write_dataset":  # a shard failed: the caller aborts the save on one rank
                writer.abort(root / "step_00000002.tmp")
            raise
    msg = str(info.value)
    print(msg)
    assert "\n" not in msg and "step_00000002.tmp" in msg and "disk full" in msg and "ENOSPC" in msg
    assert sorted(os.listdir(root)) == ["latest", "step_00000001"]
    assert latest_good(root) == (first, [])
    with CheckpointReader(first) as ck:
        assert ck.read_tensor("master", "embedding.weight").tobytes() == full[("master", "embedding.weight")].tobytes()


def test_same_step_saved_again_replaces_it(tmp_path):
    save(tmp_path, 4)
    path, full = save(tmp_path, 4, layout=[[(n, 0, math.prod(s)) for n, s in SHAPES.items()]])
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00000004"] and verify(path) == []
    with CheckpointReader(path) as ck:
        assert ck.read_tensor("weight", "embedding.weight").tobytes() == full[("weight", "embedding.weight")].tobytes()


def test_disk_full_inside_hdf5_is_caught_before_hdf5_sees_it(tmp_path, monkeypatch):
    """ENOSPC in the middle of HDF5's own writes (a real full disk crashes HDF5 2.0 while closing, so
    the writer's file object swallows the error and raises it after the file is closed)."""
    root = tmp_path / "ck"
    first, _ = save(root, 1)
    budget = {"bytes": 3000}

    def write_raw(self, mv):
        if budget["bytes"] < len(mv):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        budget["bytes"] -= len(mv)
        return io.FileIO.write(self, mv)

    monkeypatch.setattr(writer._GuardedFile, "_write_raw", write_raw)
    tmp = begin(root, 2)
    with pytest.raises(HpcyuanError, match=r"step_00000002.tmp: write failed \(disk full or over quota\): ENOSPC"):
        write_shard(tmp, 0, [Piece("w", "weight", (5000,), 0, 5000, np.ones(5000, np.float32))])
    assert os.listdir(tmp) == []  # its partial shard is removed; the caller aborts the save
    writer.abort(tmp)
    assert sorted(os.listdir(root)) == ["latest", "step_00000001"] and latest_good(root) == (first, [])
