"""Writing a checkpoint: shard files per rank, then one commit (index, meta, manifest, rename, latest).

    tmp = begin(root, step)                       # one rank; the others wait (barrier)
    rec = write_shard(tmp, rank, pieces)          # every rank, its own pieces -> ShardRecord
    records = gather(rec.to_bytes())              # the caller's MPI gather to one rank
    final = commit(root, step, records, meta, keep_last=3, keep_every=1000, arrays={...})

Crash safety: nothing under `step_N.tmp/` is ever read. `commit` writes manifest.json last, fsyncs
every file and the directory, renames `step_N.tmp` -> `step_N`, fsyncs the root, then repoints
`latest` atomically (a `latest.tmp` symlink renamed over it). A kill at any point leaves either the
previous checkpoints untouched plus a stale .tmp (removed by the next `begin` of that step or by
retention), or a complete new checkpoint. A write error (ENOSPC, EIO) raises HpcyuanError naming the
directory and removes the partial .tmp; `write_shard` removes only its own file, since other ranks may
still be writing: the caller agrees on the failure and calls `abort(tmp)` on one rank.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from hpcyuan.checkpoint.format import (
    BLOCK_BYTES, CHECKSUM, FORMAT_VERSION, INDEX, LATEST, MANIFEST, META, STATE, STORAGE, Piece,
    PieceInfo, ShardRecord, block_crc32s, check_coverage, crc32, dataset_path, list_checkpoints,
    metadata_crc32, read_latest, shard_file_name, step_dir_name, tmp_dir_name,
)
from hpcyuan.errors import HpcyuanError


class _GuardedFile(io.FileIO):
    """The file HDF5 writes through (h5py's file-object driver). A failed write (ENOSPC, EIO) is
    recorded and swallowed, so HDF5 itself never sees an I/O error: HDF5 2.0 / h5py 3.16 crash the
    process (segfault while closing) after a real ENOSPC, measured on a full tmpfs. `create_h5`
    raises the recorded error once HDF5 has closed the file. Same speed as HDF5's own sec2 driver."""

    error: OSError | None = None

    def write(self, b) -> int:
        mv = memoryview(b).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(mv):  # a write near a full disk can be short; the next one raises
                    done += self._write_raw(mv[done:])
            except OSError as e:
                self.error = e
        return len(mv)

    def _write_raw(self, mv: memoryview) -> int:
        return io.FileIO.write(self, mv)

    def truncate(self, size=None) -> int:
        try:
            return super().truncate(size)
        except OSError as e:
            self.error = self.error or e
            return self.tell() if size is None else size


@contextmanager
def create_h5(path: Path, **kwargs):
    """A new HDF5 file at `path`, without HDF5 file locks (see format.open_h5), written back to disk
    while it is written; raises the first OSError of any write once the file is closed."""
    with _GuardedFile(path, "w+") as fh, early_writeback(fh.fileno()):
        with h5py.File(fh, "w", locking=False, **kwargs) as f:
            yield f
        if fh.error is not None:
            raise fh.error


WRITEBACK_INTERVAL_S = 0.02


@contextmanager
def early_writeback(fd: int, interval_s: float = WRITEBACK_INTERVAL_S):
    """A thread fdatasyncs `fd` every `interval_s` while the caller writes it: without it nothing
    reaches the disk before the closing fsync, so the disk idles while HDF5 and the checksums run
    and then the CPU idles while the disk writes (1.45x faster shard writes on this VM's ext4:
    BENCHMARKS.md). fdatasync releases the GIL. An error here (ENOSPC, EIO) stops the thread
    only: the closing fsync meets it again and reports it."""
    stop = threading.Event()

    def flush() -> None:
        while not stop.wait(interval_s):
            try:
                os.fdatasync(fd)
            except OSError:
                return

    thread = threading.Thread(target=flush, name="checkpoint writeback", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def begin(root, step: int) -> Path:
    """Create an empty `root/step_N.tmp/` (removing one a killed save left) and return it."""
    tmp = Path(root) / tmp_dir_name(step)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise _write_error(tmp, e) from e
    return tmp


def abort(tmp_dir) -> None:
    """Remove a partial `step_N.tmp/`; previous checkpoints are never touched."""
    shutil.rmtree(tmp_dir, ignore_errors=True)


def write_shard(tmp_dir, rank: int, pieces: list[Piece], block_bytes: int = BLOCK_BYTES) -> ShardRecord:
    """Write this rank's pieces to `tmp_dir/shard_{rank:05d}.h5`, fsync it, and describe it.

    Each piece is one contiguous dataset (the fastest layout HDF5 has: one write of the buffer). Its
    block crc32s are computed from memory by a helper thread while HDF5 writes (crc32 releases
    the GIL); once the file is closed, the crc32 of its other bytes (HDF5's metadata, a few KiB)
    comes from the page cache. Nothing else is read back."""
    path = Path(tmp_dir) / shard_file_name(rank)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="checkpoint crc32") as helper:
            crcs = [helper.submit(block_crc32s, p.data, block_bytes) for p in pieces]
            with create_h5(path) as f:
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["rank"] = rank
                offsets = [_write_dataset(f, p) for p in pieces]
            record = ShardRecord(path.name, path.stat().st_size, [p.info for p in pieces], offsets, block_bytes,
                                 [c.result() for c in crcs], "")
        record.metadata_crc32 = metadata_crc32(path, record.spans())
        _fsync(path)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise _write_error(Path(tmp_dir), e) from e
    return record


def _write_dataset(f: h5py.File, p: Piece) -> int:
    """One piece as a contiguous 1-D dataset; returns the file offset of its data."""
    d = f.create_dataset(dataset_path(p.kind, p.name, p.start, p.stop), data=p.data)
    d.attrs["shape"] = np.asarray(p.shape, dtype=np.int64)
    d.attrs["start"], d.attrs["stop"], d.attrs["dtype"] = p.start, p.stop, p.dtype
    offset = d.id.get_offset()
    if offset is None:  # HDF5 allocates contiguous storage when data is written; never seen otherwise
        raise HpcyuanError(f"checkpoint piece {p.kind} {p.name}: HDF5 gave its data no file offset")
    return offset


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def sync_and_checksum(path, sync: bool = True) -> tuple[int, str]:
    """(bytes, crc32 hex) of a closed file, read back once (from the page cache), then fsync'd."""
    crc, size = 0, 0
    with open(path, "rb") as fh:
        while block := fh.read(16 << 20):
            crc, size = crc32(block, crc), size + len(block)
        if sync:
            os.fsync(fh.fileno())
    return size, f"{crc:08x}"


def commit(root, step: int, records: list[ShardRecord], meta: dict, keep_last: int = 3,
           keep_every: int = 0, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """Close the save of `step` whose shards `records` describe: write index.h5, state.h5 (the
    `arrays`, e.g. {"rng/rank_00003/torch_cpu": uint8 array}), meta.json ({"format_version", "step"}
    plus the caller's JSON dict), manifest.json last; rename step_N.tmp -> step_N; repoint `latest`;
    then keep the last `keep_last` checkpoints plus every step divisible by `keep_every` (0: none).
    Returns the committed directory. A checkpoint of the same step already there is replaced."""
    if keep_last < 1:
        raise ValueError(f"checkpoint keep_last = {keep_last}: must be >= 1")
    root, tmp = Path(root), Path(root) / tmp_dir_name(step)
    final = root / step_dir_name(step)
    try:
        tensors = check_coverage(records)
        for rec in records:
            if not (tmp / rec.file).is_file():
                raise HpcyuanError(f"checkpoint {tmp}: {rec.file} is missing; did every rank write its shard?")
        files = [{"name": r.file, **{k: v for k, v in r.to_json().items() if k not in ("file", "pieces")}}
                 for r in records]
        _write_index(tmp / INDEX, tensors)
        files.append(_file_entry(tmp / INDEX))
        if arrays:
            _write_state(tmp / STATE, arrays)
            files.append(_file_entry(tmp / STATE))
        _write_json(tmp / META, _meta(step, meta))
        files.append(_file_entry(tmp / META))
        manifest = {"format_version": FORMAT_VERSION, "step": step, "checksum": CHECKSUM, "files": files,
                    "pieces": {r.file: [p.to_json() for p in r.pieces] for r in records}}
        _write_json(tmp / MANIFEST, manifest)  # last: its presence means the checkpoint is complete
        fsync_dir(tmp)
        _rename_into_place(tmp, final)
    except OSError as e:
        abort(tmp)
        raise _write_error(tmp, e) from e
    except (HpcyuanError, ValueError):
        abort(tmp)
        raise
    try:  # committed from here on: an error no longer removes anything
        _point_latest(root, final)
        retain(root, keep_last, keep_every)
    except OSError as e:
        raise HpcyuanError(f"checkpoint {final} is saved but updating {root / LATEST} or removing old "
                           f"checkpoints failed: {_strerror(e)}") from e
    return final


def _meta(step: int, meta: dict) -> dict:
    out = {"format_version": FORMAT_VERSION, "step": step}
    for k, v in meta.items():
        if k in out and out[k] != v:
            raise ValueError(f"checkpoint meta[{k!r}] = {v!r}: reserved, must equal {out[k]!r}")
        out[k] = v
    return out


def _write_index(path: Path, tensors: dict[tuple[str, str], list[tuple[PieceInfo, str]]]) -> None:
    """index.h5: /{kind}/{name} is a 1-D virtual dataset of the whole flattened tensor, each range
    mapped onto its shard's dataset by relative file name (the directory can move). Elements whose
    shard file is missing read as the fill value: NaN for floats, so a damaged plain-h5py read shows."""
    with create_h5(path, libver=("v110", "latest")) as f:
        f.attrs["format_version"] = FORMAT_VERSION
        for (kind, name), pieces in sorted(tensors.items()):
            first = pieces[0][0]
            dtype = np.dtype(STORAGE[first.dtype])
            layout = h5py.VirtualLayout(shape=(first.numel,), dtype=dtype)
            for p, file in pieces:
                src = h5py.VirtualSource(file, dataset_path(kind, name, p.start, p.stop), shape=(p.stop - p.start,))
                layout[p.start:p.stop] = src
            fill = np.nan if dtype.kind == "f" else 0
            d = f.create_virtual_dataset(f"/{kind}/{name}", layout, fillvalue=fill)
            d.attrs["shape"] = np.asarray(first.shape, dtype=np.int64)
            d.attrs["dtype"] = first.dtype
    sync_and_checksum(path)


def _write_state(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """state.h5: small named arrays (RNG states, lr-schedule state ...), one contiguous dataset each."""
    with create_h5(path) as f:
        f.attrs["format_version"] = FORMAT_VERSION
        for name, a in sorted(arrays.items()):
            f.create_dataset(name, data=np.asarray(a))


def _write_json(path: Path, obj: dict) -> None:
    try:
        text = json.dumps(obj, indent=1, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"checkpoint {path.name}: {e}; put arrays in `arrays=` (state.h5), not in meta") from e
    _write_bytes(path, text.encode())


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _file_entry(path: Path) -> dict:
    size, checksum = sync_and_checksum(path)
    return {"name": path.name, "bytes": size, CHECKSUM: checksum}


def fsync_dir(path) -> None:
    """Make a directory's entries (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_into_place(tmp: Path, final: Path) -> None:
    """tmp -> final; an existing final (the same step saved again) is first moved aside and removed."""
    aside = final.with_name(final.name + ".replaced")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _point_latest(root: Path, final: Path) -> None:
    """Atomically make `root/latest` a symlink to `final` (relative, so the root can move)."""
    link, tmp_link = root / LATEST, root / (LATEST + ".tmp")
    tmp_link.unlink(missing_ok=True)
    os.symlink(final.name, tmp_link)
    os.replace(tmp_link, link)
    fsync_dir(root)


def retain(root, keep_last: int, keep_every: int = 0) -> list[Path]:
    """Remove committed checkpoints except the last `keep_last`, every step divisible by
    `keep_every` (0: none) and the one `latest` names; also stale .tmp directories of older steps.
    A checkpoint is renamed out of the `step_N` pattern before it is deleted, so a kill while
    deleting never leaves a half-removed checkpoint that looks committed. Returns what was removed."""
    root = Path(root)
    ckpts = list_checkpoints(root)
    latest = read_latest(root)
    keep = {p for _, p in ckpts[-keep_last:]}
    keep |= {p for s, p in ckpts if keep_every and s % keep_every == 0}
    removed = []
    for s, p in ckpts:
        if p in keep or p == latest:
            continue
        doomed = p.with_name(p.name + ".deleting")
        os.rename(p, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(p)
    newest = ckpts[-1][0] if ckpts else None
    for p in root.glob("step_*.tmp"):
        step = p.name[len("step_"):-len(".tmp")]
        if newest is not None and step.isdigit() and int(step) < newest:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob("step_*.deleting"):
        shutil.rmtree(p, ignore_errors=True)
    return removed


def _strerror(e: OSError) -> str:
    if e.errno:
        return f"{errno.errorcode.get(e.errno, e.errno)}: {os.strerror(e.errno)}"
    return " ".join(str(e).split())


def _write_error(where: Path, e: OSError) -> HpcyuanError:
    full = e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e)
    hint = " (disk full or over quota)" if full else ""
    return HpcyuanError(f"checkpoint {where}: write failed{hint}: {_strerror(e)}; previous checkpoints are intact")
