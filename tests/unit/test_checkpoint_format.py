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
import re
import shutil

import h5py
import numpy as np
import pytest

from hpcyuan.checkpoint import (
    CheckpointReader, Piece, ShardRecord, begin, commit, latest_good, list_checkpoints, verify, write_shard,
)
from hpcyuan.checkpoint import reader, writer
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


def flip(path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x01]))


def data_offset(shard, dataset: str) -> int:
    with h5py.File(shard, "r") as f:
        return f[dataset].id.get_offset()


def test_flipped_data_byte_is_named_by_the_read_and_by_deep_verify(tmp_path):
    root = tmp_path / "ck"
    save(root, 1)
    path, full = save(root, 2)
    # shard 2 holds embedding.weight [30, 66) of every kind: 36 floats, one crc32 block
    shard = path / "shard_00002.h5"
    flip(shard, data_offset(shard, "weight/embedding.weight/30_66") + 17)
    assert verify(path) == []  # the cheap checks leave the data to the reads, which check every block
    named = "shard_00002.h5: /weight/embedding.weight/30_66 bytes [0, 144) fail their crc32 (corrupted)"
    assert verify(path, deep=True) == [named]
    with CheckpointReader(path) as ck:
        with pytest.raises(HpcyuanError, match=re.escape(named)):
            ck.read("weight", "embedding.weight", 40, 41)
        # the other shards and the other datasets of this one read fine
        assert np.array_equal(ck.read("weight", "embedding.weight", 0, 30), full[("weight", "embedding.weight")].reshape(-1)[:30])
        assert np.array_equal(ck.read("master", "embedding.weight"), full[("master", "embedding.weight")].reshape(-1))


def test_flipped_metadata_byte_is_named_and_falls_back(tmp_path):
    root = tmp_path / "ck"
    save(root, 1)
    path, _ = save(root, 2)
    flip(path / "shard_00002.h5", 40)  # in HDF5's superblock / root group header
    problems = verify(path)
    assert len(problems) == 1 and problems[0].startswith("shard_00002.h5: HDF5 metadata crc32"), problems
    good, messages = latest_good(root)
    assert good == root / "step_00000001"
    assert len(messages) == 1 and "step_00000002" in messages[0] and "shard_00002.h5" in messages[0]
    assert "\n" not in messages[0]


def test_a_flipped_byte_anywhere_in_a_shard_is_reported_never_raised(tmp_path):
    """Every byte is under one crc32: the cheap checks catch a flipped metadata byte (where HDF5
    itself could fail in odd ways: h5py raises RuntimeError for a damaged object header), the deep
    check any byte."""
    path, _ = save(tmp_path / "ck", 1)
    shard = path / "shard_00002.h5"
    original = shard.read_bytes()
    manifest = json.loads((path / "manifest.json").read_text())
    entry = next(e for e in manifest["files"] if e["name"] == shard.name)
    sizes = [(b - a) * 4 for _, _, _, a, b, _ in manifest["pieces"][shard.name]]
    in_data = {o for offset, size in zip(entry["offsets"], sizes) for o in range(offset, offset + size)}
    for offset in range(0, len(original), max(1, len(original) // 97)):
        data = bytearray(original)
        data[offset] ^= 0xFF
        shard.write_bytes(bytes(data))
        deep = verify(path, deep=True)
        assert deep and deep[0].startswith("shard_00002.h5: "), (offset, deep)
        assert bool(verify(path)) == (offset not in in_data), offset


def test_reads_check_every_block_they_touch(tmp_path):
    """Pieces of many crc32 blocks (64 bytes here): any range reads back exactly, and a flipped byte
    fails exactly the reads that touch its block."""
    data = np.arange(1000, dtype=np.float32)
    tmp = begin(tmp_path, 1)
    record = write_shard(tmp, 0, [Piece("w", "weight", (1000,), 0, 1000, data)], block_bytes=64)
    assert record.block_bytes == 64 and len(record.block_crc32[0]) == 63  # 4000 bytes
    path = commit(tmp_path, 1, [record], {})
    with CheckpointReader(path) as ck:
        for start, stop in [(0, 1000), (0, 16), (3, 5), (15, 17), (16, 32), (17, 999), (999, 1000), (500, 500)]:
            assert np.array_equal(ck.read("weight", "w", start, stop), data[start:stop]), (start, stop)
        into = np.zeros(1000, dtype=np.float32)
        ck.read_into("weight", "w", 17, into[100:900])  # straight into a caller's buffer
        assert np.array_equal(into[100:900], data[17:817]) and not into[:100].any() and not into[900:].any()
        with pytest.raises(ValueError, match="contiguous, float32"):
            ck.read_into("weight", "w", 0, into[::2])
    flip(path / "shard_00000.h5", record.offsets[0] + 64 * 10 + 3)  # block 10: elements [160, 176)
    with CheckpointReader(path) as ck:
        assert np.array_equal(ck.read("weight", "w", 0, 160), data[:160])
        assert np.array_equal(ck.read("weight", "w", 176, 1000), data[176:])
        for start, stop in [(0, 1000), (170, 171), (159, 161), (175, 200)]:
            with pytest.raises(HpcyuanError, match=re.escape("bytes [640, 704) fail their crc32")):
                ck.read("weight", "w", start, stop)


@pytest.mark.parametrize("direct", ["O_DIRECT", "refused"])
def test_reads_with_and_without_o_direct(tmp_path, monkeypatch, direct):
    """Reads go past the page cache (O_DIRECT) where the file system allows it; where it refuses
    (EINVAL, made here), the same reads go through the cache: both read back every range exactly, and
    a file cut short in the middle of a page reads as truncated, not as an OSError."""
    if direct == "refused":
        real_open = os.open

        def no_direct(path, flags, *args, **kwargs):
            if flags & reader.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(reader.os, "open", no_direct)
    data = np.random.default_rng(3).standard_normal(3_000_001).astype(np.float32)  # 3 blocks, the last short
    tmp = begin(tmp_path, 1)
    record = write_shard(tmp, 0, [Piece("w", "master", (data.size,), 0, data.size, data)])
    path = commit(tmp_path, 1, [record], {})
    with CheckpointReader(path) as ck:
        for start, stop in [(0, data.size), (1, 2), (1_048_575, 1_048_577), (2_999_000, 3_000_001)]:
            assert np.array_equal(ck.read("master", "w", start, stop), data[start:stop]), (start, stop)
        os.truncate(path / "shard_00000.h5", record.offsets[0] + 5_000_123)  # mid-page, inside block 1
        assert np.array_equal(ck.read("master", "w", 0, 1_000_000), data[:1_000_000])
        with pytest.raises(HpcyuanError, match=r"ends at byte \d+, before the data it should hold \(truncated\)"):
            ck.read("master", "w", 0, data.size)


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
    assert verify(path) == ["format version 99 unknown (this hpcyuan reads versions 1, 2)"]
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


def test_a_version_1_checkpoint_still_loads(tmp_path):
    """golden/checkpoint_v1: `save(root, 1, arrays=...)` of this file written by hpcyuan's format 1
    (chunked shards with fletcher32, a crc32 per whole file), kept so that runs saved before format 2
    resume."""
    path = tmp_path / "step_00000001"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "golden", "checkpoint_v1", "step_00000001"), path)
    assert json.loads((path / "manifest.json").read_text())["format_version"] == 1
    assert verify(path, deep=True) == []
    with CheckpointReader(path) as ck:
        for (kind, name), full in tensors(1).items():
            assert np.array_equal(ck.read(kind, name), full.reshape(-1)), (kind, name)
        assert np.array_equal(ck.state("rng/rank_00000/torch_cpu"), np.arange(10, dtype=np.uint8))
    shard = path / "shard_00002.h5"
    with h5py.File(shard, "r") as f:
        offset = f["weight/embedding.weight/30_66"].id.get_chunk_info(0).byte_offset
    flip(shard, offset + 17)
    problems = verify(path)
    assert problems[0].startswith("shard_00002.h5: crc32")
    assert any("/weight/embedding.weight/30_66 corrupted, fails its fletcher32" in p for p in problems)
