"""Reading checkpoints: find the newest good one, verify it, read any flat range of any tensor.

    path, messages = latest_good(root)       # newest checkpoint that verifies; one line per skipped
    with CheckpointReader(path) as ck:
        ck.meta["step"], ck.names("weight")
        w = ck.read("master", "layers.0.attn.q_proj.weight", start, stop)   # 1-D, elements [start, stop)
        W = ck.read_tensor("weight", "embedding.weight")                     # full global shape

`read` opens only the shard files whose pieces overlap the range (the piece table is in
manifest.json), so a rank loading its ZeRO region of a new layout touches a few files. It reads the
data at the offsets the manifest records, with plain reads (O_DIRECT where the file system allows:
past the page cache), and checks every block it reads against its crc32 (READERS threads read and
check runs of blocks side by side): loading is the deep check of the bytes it loads, so `verify`
before a load only needs the cheap checks (sizes, metadata crc32s).
A plain h5py user needs none of this: `h5py.File("step_…/index.h5")["weight"][name][...]` is the
whole flattened tensor (reshape it to the dataset's attr "shape"). HDF5 files are opened with
locking=False (format.open_h5). Version 1 checkpoints (fletcher32 chunks) are read through HDF5.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from hpcyuan.checkpoint.format import (
    CHECKSUM, KINDS, MANIFEST, META, READABLE_VERSIONS, STATE, STORAGE, PieceInfo,
    ShardRecord, crc32, dataset_path, list_checkpoints, metadata_crc32, open_h5, read_latest,
)
from hpcyuan.checkpoint.writer import sync_and_checksum
from hpcyuan.errors import HpcyuanError

__all__ = ["CheckpointReader", "latest_good", "list_checkpoints", "verify"]

READ_BYTES = 4 << 20
READERS = 4
"""Threads that read and check runs of blocks at once: four 4 MiB requests in flight keep the disk
busy while a thread checks crc32s and copies its run out (a 4 MiB buffer stays in the CPU's cache
between the two). Measured with O_DIRECT on this VM's disk, the restore of a 1 GiB state alternating
in one process, 12 rounds, medians: 2 x 4 MiB 2.23 GB/s, 2 x 8 MiB 2.35, 3 x 4 MiB 2.43,
4 x 4 MiB 2.48, 4 x 8 MiB 2.20, 8 x 2 MiB 2.31, 8 x 4 MiB 2.19."""
ALIGN = 4096  # O_DIRECT reads whole pages: file offset, length and buffer (more than any file system asks)
O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere reads go through the page cache


def verify(step_dir, deep: bool = False, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """Problems of a committed checkpoint directory, one line each; [] when it is good. Checks the
    manifest (missing -> "partial"), the format version, every file's presence and size, the crc32
    of each small file and of each shard's metadata (every byte but the data). `deep=True` also
    reads the data of `kinds` and checks every block's crc32 (what a load does for what it reads)."""
    step_dir = Path(step_dir)
    manifest, problem = _load_manifest(step_dir)
    if problem:
        return [problem]
    if manifest["format_version"] == 1:
        return _verify_v1(step_dir, manifest, deep)
    problems = []
    for entry in manifest["files"]:
        name, path = entry["name"], step_dir / entry["name"]
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
        elif CHECKSUM in entry:
            if (checksum := sync_and_checksum(path, sync=False)[1]) != entry[CHECKSUM]:
                problems.append(f"{name}: {CHECKSUM} {checksum}, the manifest says {entry[CHECKSUM]} (corrupted)")
        else:
            record = _shard_record(entry, manifest)
            try:
                checksum = metadata_crc32(path, record.spans())
            except ValueError as e:
                problems.append(f"{name}: {e}")
                continue
            if checksum != record.metadata_crc32:
                problems.append(f"{name}: HDF5 metadata {CHECKSUM} {checksum}, the manifest says "
                                f"{record.metadata_crc32} (corrupted)")
            elif deep:
                problems += _data_problems(path, record, kinds)
    return problems


def _shard_record(entry: dict, manifest: dict) -> ShardRecord:
    return ShardRecord.from_json({**entry, "file": entry["name"], "pieces": manifest["pieces"][entry["name"]]})


def _data_problems(path: Path, record: ShardRecord, kinds: tuple[str, ...]) -> list[str]:
    """Every piece of `kinds` in a shard with a block whose crc32 differs from the manifest's."""
    problems, buffers = [], threading.local()
    with _open_data(path) as fh:
        for piece, offset, crcs in zip(record.pieces, record.offsets, record.block_crc32):
            if piece.kind not in kinds:
                continue
            out = np.empty(piece.stop - piece.start, dtype=STORAGE[piece.dtype])
            try:
                _read_checked(fh, path.name, piece, offset, crcs, 0, out, None, record.block_bytes, buffers)
            except HpcyuanError as e:
                problems.append(str(e))
    return problems


def _read_checked(fh, file: str, piece: PieceInfo, offset: int, crcs: list[int], lo: int, out: np.ndarray,
                  pool: ThreadPoolExecutor | None, block_bytes: int, buffers: threading.local) -> list[Future]:
    """Read elements [lo, lo + out.size) of `piece` (element lo relative to the piece) from the
    file `fh` (`_open_data`), whose data starts at `offset`, into `out`, reading every block it
    touches whole so its crc32 can be checked: runs of blocks, READ_BYTES per read (a larger request
    keeps more of the disk busy), each into a thread's buffer in `buffers` (`_read_aligned`), checked
    there and copied into `out`. With a `pool` every run is read and checked there and the futures
    come back, each giving the failures it found (a read error raises from it); without one this
    reads in order and a failed check raises HpcyuanError at once."""
    item = out.itemsize
    first, last = lo * item, (lo + out.size) * item  # byte range wanted, relative to the piece
    size = (piece.stop - piece.start) * item
    wanted = memoryview(out).cast("B")
    dataset = dataset_path(piece.kind, piece.name, piece.start, piece.stop)

    def read_run(run: range) -> list[str]:
        """Read the blocks of `run` whole, check each, copy the wanted bytes to `out`; the failures."""
        start, end = run[0] * block_bytes, min((run[-1] + 1) * block_bytes, size)
        data = _read_aligned(fh, offset + start, end - start, file, buffers)
        bad = []
        for b in run:
            bs, be = b * block_bytes, min((b + 1) * block_bytes, size)
            if crc32(data[bs - start:be - start]) != crcs[b]:
                bad.append(f"{file}: {dataset} bytes [{bs}, {be}) fail their {CHECKSUM} (corrupted)")
        lo_b, hi_b = max(first, start), min(last, end)
        wanted[lo_b - first:hi_b - first] = data[lo_b - start:hi_b - start]
        return bad

    blocks = range(first // block_bytes, (last + block_bytes - 1) // block_bytes)
    per_read = max(1, READ_BYTES // block_bytes)
    runs = [blocks[r:r + per_read] for r in range(0, len(blocks), per_read)]
    if pool is not None:
        return [pool.submit(read_run, run) for run in runs]
    for run in runs:
        if bad := read_run(run):
            raise HpcyuanError(bad[0])
    return []


def _open_data(path):
    """`path` opened for `_read_aligned`: with O_DIRECT where the file system allows it (the data go
    from the disk into the read buffer, past the page cache: no page to allocate, copy and evict)."""
    try:
        fd = os.open(path, os.O_RDONLY | O_DIRECT)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: no O_DIRECT on this file system
            raise
        fd = os.open(path, os.O_RDONLY)
    return open(fd, "rb", buffering=0)


def _read_aligned(fh, offset: int, length: int, file: str, buffers: threading.local) -> memoryview:
    """Bytes [offset, offset + length) of the file `fh`, read into this thread's buffer in `buffers`
    by requests of whole ALIGN-byte pages (as O_DIRECT needs them: the buffer is page-aligned)."""
    start = offset - offset % ALIGN
    end = start + -(-(offset + length - start) // ALIGN) * ALIGN
    buf = getattr(buffers, "buf", None)
    if buf is None or len(buf) < end - start:
        buf = buffers.buf = memoryview(mmap.mmap(-1, max(end - start, READ_BYTES + 2 * ALIGN)))
    done = 0
    while start + done < offset + length:
        n = os.preadv(fh.fileno(), [buf[done:end - start]], start + done)
        if n == 0:
            raise HpcyuanError(f"{file}: ends at byte {start + done}, before the data it should hold (truncated)")
        done += n
    return buf[offset - start:offset + length - start]


def _verify_v1(step_dir: Path, manifest: dict, deep: bool) -> list[str]:
    """Version 1: a crc32 of every whole file; fletcher32 chunks name the damaged datasets."""
    problems = []
    for entry in manifest.get("files", []):
        name, path = entry["name"], step_dir / entry["name"]
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        size, checksum = sync_and_checksum(path, sync=False)
        if size != entry["bytes"]:
            problems.append(f"{name}: {size} bytes, the manifest says {entry['bytes']}")
        elif checksum != entry[CHECKSUM]:
            problems.append(f"{name}: {CHECKSUM} {checksum}, the manifest says {entry[CHECKSUM]} (corrupted)")
            problems += _fletcher_problems(path)
        elif deep and name.endswith(".h5"):
            problems += _fletcher_problems(path)
    return problems


def _load_manifest(step_dir: Path) -> tuple[dict | None, str | None]:
    path = step_dir / MANIFEST
    if not path.is_file():
        return None, f"partial: no {MANIFEST} (the save did not finish)"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"partial: {MANIFEST} unreadable ({' '.join(str(e).split())})"
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        return None, f"format version {version} unknown (this hpcyuan reads versions {readable})"
    return manifest, None


def _fletcher_problems(path: Path) -> list[str]:
    """Every dataset of an HDF5 file that cannot be read (fletcher32 mismatch, bad header ...)."""
    bad = []
    try:
        with h5py.File(path, "r", locking=False) as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and not obj.is_virtual:
                    try:
                        obj[...]
                    except (OSError, RuntimeError) as e:
                        bad.append(f"{path.name}: dataset /{name} corrupted, fails its fletcher32 check "
                                   f"(HDF5: {' '.join(str(e).split())})")
            f.visititems(visit)
    except (OSError, RuntimeError) as e:  # h5py raises RuntimeError for a damaged object header
        bad.append(f"{path.name}: not readable as HDF5 ({' '.join(str(e).split())})")
    return bad


def latest_good(root, older_than: int | None = None, check: Callable[[Path], list[str]] = verify
                ) -> tuple[Path | None, list[str]]:
    """(the newest checkpoint under `root` that verifies, or None; messages). Walks from the newest
    committed directory backwards (a crash between the rename and repointing `latest` leaves a newer
    complete checkpoint, which is used); one message line per checkpoint skipped and why, and one per
    unfinished save (`step_N.tmp`) newer than the one chosen. `older_than`: only steps below it
    (after a newer one failed to load); `check`: the problems of a step directory (`verify`)."""
    root = Path(root)
    every = list_checkpoints(root)
    ckpts = [(s, p) for s, p in every if older_than is None or s < older_than]
    messages = []
    latest = read_latest(root)
    if latest is not None and latest not in {p for _, p in every}:
        messages.append(f"{root / 'latest'} names {latest.name}, which is not there; using the newest good checkpoint")
    chosen = None
    for _, path in reversed(ckpts):
        problems = check(path)
        if not problems:
            chosen = path
            break
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        messages.append(f"skipping checkpoint {path}: {problems[0]}{more}")
    floor = int(chosen.name[len("step_"):]) if chosen else -1
    for tmp in sorted(root.glob("step_*.tmp")) if root.is_dir() else []:
        step = tmp.name[len("step_"):-len(".tmp")]
        if step.isdigit() and int(step) > floor:
            messages.append(f"ignoring unfinished save {tmp} (killed or still running)")
    return chosen, messages


class CheckpointReader:
    """Read tensors of one committed checkpoint by logical name and flat range. Call `verify` (or use
    `latest_good`) first for the cheap checks; every block read is checked against its crc32 here."""

    def __init__(self, step_dir):
        self.dir = Path(step_dir)
        manifest, problem = _load_manifest(self.dir)
        if problem:
            raise HpcyuanError(f"checkpoint {self.dir}: {problem}")
        self.manifest = manifest
        self.meta: dict = json.loads((self.dir / META).read_text())
        # (kind, name) -> [(piece, file, file offset, block crc32s)]; offset None: version 1 (via HDF5)
        self._pieces: dict[tuple[str, str], list[tuple[PieceInfo, str, int | None, list[int]]]] = {}
        self._block_bytes: dict[str, int] = {}  # file -> its crc32 block size
        for entry in manifest["files"]:
            if entry["name"] not in manifest["pieces"]:
                continue
            if manifest["format_version"] == 1:
                rows = [(PieceInfo.from_json(r), None, []) for r in manifest["pieces"][entry["name"]]]
            else:
                rec = _shard_record(entry, manifest)
                rows = zip(rec.pieces, rec.offsets, rec.block_crc32)
                self._block_bytes[rec.file] = rec.block_bytes
            for p, offset, crcs in rows:
                self._pieces.setdefault((p.kind, p.name), []).append((p, entry["name"], offset, crcs))
        for pieces in self._pieces.values():
            pieces.sort(key=lambda row: row[0].start)
        self._open: dict[str, h5py.File] = {}
        self._raw: dict[str, object] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._buffers = threading.local()  # each read thread's buffer (_read_aligned)
        self._pending: list[Future] = []  # reads and their crc32 checks not yet waited for

    def names(self, kind: str) -> list[str]:
        """Logical names of the tensors of `kind` ("weight", "master", "exp_avg", "exp_avg_sq")."""
        return sorted(n for k, n in self._pieces if k == kind)

    def _info(self, kind: str, name: str) -> PieceInfo:
        try:
            return self._pieces[(kind, name)][0][0]
        except KeyError:
            raise HpcyuanError(f"checkpoint {self.dir} has no {kind} tensor {name!r} "
                               f"({len(self.names(kind))} {kind} tensors)") from None

    def shape(self, kind: str, name: str) -> tuple[int, ...]:
        return self._info(kind, name).shape

    def dtype(self, kind: str, name: str) -> str:
        """The logical dtype ("bfloat16" tensors are returned as their uint16 bits)."""
        return self._info(kind, name).dtype

    def read(self, kind: str, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Elements [start, stop) of the flattened tensor, 1-D, read from the overlapping shards only;
        raises HpcyuanError naming the file and the bytes when a block fails its crc32."""
        info = self._info(kind, name)
        stop = info.numel if stop is None else stop
        if not 0 <= start <= stop <= info.numel:
            raise ValueError(f"checkpoint read {kind} {name} [{start}, {stop}): outside [0, {info.numel})")
        out = np.empty(stop - start, dtype=STORAGE[info.dtype])
        self.read_into(kind, name, start, out)
        return out

    def read_into(self, kind: str, name: str, start: int, out: np.ndarray, check: bool = True) -> None:
        """`read` into `out` (1-D, C-contiguous, the stored dtype): elements [start, start + out.size).
        Blocks wholly inside the range go from the file straight into `out`, with no other copy.
        `check=False` returns before the reads and their crc32 checks are done (they run on, side by
        side with the next ones): the caller must then call `check_reads()` before using the data."""
        info = self._info(kind, name)
        stop = start + out.size
        if not 0 <= start <= stop <= info.numel:
            raise ValueError(f"checkpoint read {kind} {name} [{start}, {stop}): outside [0, {info.numel})")
        if out.ndim != 1 or not out.flags.c_contiguous or out.dtype != np.dtype(STORAGE[info.dtype]):
            raise ValueError(f"checkpoint read {kind} {name}: `out` must be 1-D, contiguous, {STORAGE[info.dtype]}")
        reads: list[Future] = []
        for p, file, offset, crcs in self._pieces[(kind, name)]:
            lo, hi = max(start, p.start), min(stop, p.stop)
            if lo >= hi:
                continue
            target = out[lo - start:hi - start]
            if offset is None:
                self._read_v1(file, p, lo, target)
                continue
            if self._pool is None:
                self._pool = ThreadPoolExecutor(READERS, thread_name_prefix="checkpoint read")
            reads += _read_checked(self._raw_file(file), file, p, offset, crcs, lo - p.start, target,
                                   self._pool, self._block_bytes[file], self._buffers)
        self._pending += reads
        if check:
            self.check_reads()

    def check_reads(self) -> None:
        """Wait for every read so far and its crc32 checks; raise HpcyuanError for a failed one (after
        all have ended: none still writes into the caller's buffers)."""
        pending, self._pending = self._pending, []
        problems = []
        for future in pending:
            try:
                problems += future.result()
            except HpcyuanError as e:
                problems.append(str(e))
        if problems:
            raise HpcyuanError(f"checkpoint {self.dir}: {problems[0]}"
                               + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))

    def _read_v1(self, file: str, p: PieceInfo, lo: int, target: np.ndarray) -> None:
        path = dataset_path(p.kind, p.name, p.start, p.stop)
        try:
            self._file(file)[path].read_direct(target, np.s_[lo - p.start:lo - p.start + target.size])
        except (OSError, KeyError) as e:
            raise HpcyuanError(f"checkpoint {self.dir / file}: cannot read {path} ({' '.join(str(e).split())})") from e

    def read_tensor(self, kind: str, name: str) -> np.ndarray:
        """The whole tensor in its global shape."""
        return self.read(kind, name).reshape(self.shape(kind, name))

    def state(self, name: str) -> np.ndarray:
        """An array the writer passed as `arrays={name: ...}` (state.h5)."""
        try:
            return self._file(STATE)[name][()]
        except KeyError:
            raise HpcyuanError(f"checkpoint {self.dir / STATE} has no array {name!r}") from None

    def _file(self, file: str) -> h5py.File:
        if file not in self._open:
            self._open[file] = open_h5(self.dir / file)
        return self._open[file]

    def _raw_file(self, file: str):
        if file not in self._raw:
            try:
                self._raw[file] = _open_data(self.dir / file)
            except OSError as e:
                raise HpcyuanError(f"checkpoint {self.dir / file}: cannot open ({e.strerror})") from e
        return self._raw[file]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()  # first: reads still running use the files below
            self._pool = None
        for f in [*self._open.values(), *self._raw.values()]:
            f.close()
        self._open.clear()
        self._raw.clear()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kinds = {k for k, _ in self._pieces}
        sizes = {k: sum(p[0][0].numel for (kk, _), p in self._pieces.items() if kk == k) for k in kinds}
        return f"CheckpointReader({self.dir}, step={self.meta.get('step')}, elements={sizes})"
