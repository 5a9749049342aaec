"""The on-disk checkpoint format, version 2: names, the `Piece` a rank writes, and the checks every
writer and reader shares. Pure Python + numpy + h5py, no MPI. Full description with the directory
tree: docs/checkpoint-format.md.

    step_00001234/
      shard_00000.h5    # /{kind}/{name}/{start}_{stop}: 1-D contiguous pieces of flattened global tensors
      shard_00001.h5
      index.h5          # /{kind}/{name}: 1-D virtual dataset of the whole flattened tensor
      state.h5          # small arrays the caller gives (RNG states ...), optional
      meta.json         # step, consumed samples, config, code version, layout (caller's dict)
      manifest.json     # written last: format version, every file's size and checksums, every piece
    latest -> step_00001234

A piece is the flat element range [start, stop) of one logical tensor (`layers.3.attn.q_proj.weight`)
of one kind (weight, fp32 master, Adam exp_avg / exp_avg_sq), which is exactly what a ZeRO rank owns:
a contiguous region of the flat buffer cut at parameter boundaries. Each tensor must be covered by the
pieces of all ranks exactly once (`check_coverage`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hpcyuan.errors import HpcyuanError

try:  # zlib-ng's crc32: the very CRC-32 of zlib (same values), 4x faster here (carry-less multiply)
    from zlib_ng.zlib_ng import crc32
except ImportError:  # a platform without its wheel: the same checksums, at zlib's speed
    from zlib import crc32

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: chunked shards with fletcher32, one crc32 per whole file
KINDS = ("weight", "master", "exp_avg", "exp_avg_sq")
INDEX, META, MANIFEST, STATE, LATEST = "index.h5", "meta.json", "manifest.json", "state.h5", "latest"
CHECKSUM = "crc32"  # zlib's, hex; it runs at GB/s and releases the GIL, sha256 would cost a pass more

# Version 2 checksums a shard's data from memory while HDF5 writes it: one crc32 per block of
# BLOCK_BYTES of each piece (a reader checks exactly the blocks it reads), plus one crc32 over every
# other byte of the file (HDF5's superblock, headers, attributes). No read-back, no fletcher32
# (which needs chunked datasets and costs ~0.4 s/GB): BENCHMARKS.md, issue [C].
BLOCK_BYTES = 4 << 20

# Logical dtype -> the numpy dtype it is stored as. bfloat16 has no numpy type: the caller passes its
# bits as uint16 (`tensor.view(torch.int16).numpy().view(np.uint16)`) and the dataset carries
# attr dtype = "bfloat16" so a reader can view them back.
STORAGE = {
    "float32": "float32", "float64": "float64", "float16": "float16", "bfloat16": "uint16",
    "int64": "int64", "int32": "int32", "uint8": "uint8", "uint16": "uint16",
}

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def tmp_dir_name(step: int) -> str:
    return f"step_{step:08d}.tmp"


def shard_file_name(rank: int) -> str:
    return f"shard_{rank:05d}.h5"


def parse_step(name: str) -> int | None:
    """The step of a committed checkpoint directory name (`step_00001234` -> 1234), else None."""
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def dataset_path(kind: str, name: str, start: int, stop: int) -> str:
    """Where a piece lives in its shard file."""
    return f"/{kind}/{name}/{start}_{stop}"


def open_h5(path) -> h5py.File:
    """An HDF5 file opened for reading without HDF5's file locks: on Lustre/NFS they fail ("unable to
    lock file") or hang, and a committed checkpoint is never written again, so they protect nothing.
    (The writer creates files through writer.create_h5, also without locks.)"""
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as e:
        raise HpcyuanError(f"{path}: cannot open HDF5 file ({_one_line(e)})") from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


@dataclass(frozen=True)
class PieceInfo:
    """A piece without its data: what the manifest records and what `check_coverage` checks."""

    kind: str
    name: str
    shape: tuple[int, ...]
    start: int
    stop: int
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        """Elements of the whole global tensor."""
        return math.prod(self.shape)

    def to_json(self) -> list:
        return [self.kind, self.name, list(self.shape), self.start, self.stop, self.dtype]

    @staticmethod
    def from_json(row: list) -> "PieceInfo":
        kind, name, shape, start, stop, dtype = row
        return PieceInfo(kind, name, tuple(int(s) for s in shape), int(start), int(stop), dtype)


@dataclass(frozen=True)
class Piece:
    """Elements [start, stop) of the flattened global tensor `name` (global shape `shape`) of one
    `kind`; `data` is 1-D with stop - start elements. `dtype` is the logical dtype, by default the
    data's own ("bfloat16" needs uint16 data, see STORAGE)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    start: int
    stop: int
    data: np.ndarray = field(repr=False)
    dtype: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        dtype = self.dtype or self.data.dtype.name
        object.__setattr__(self, "dtype", dtype)
        where = f"checkpoint piece {self.kind} {self.name} [{self.start}, {self.stop})"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"{where}: a name is a dotted logical name without '/'")
        if not 0 <= self.start < self.stop <= math.prod(self.shape):
            raise ValueError(f"{where}: need 0 <= start < stop <= {math.prod(self.shape)} (shape {self.shape})")
        if self.data.ndim != 1 or self.data.size != self.stop - self.start:
            raise ValueError(f"{where}: data must be 1-D with {self.stop - self.start} elements, "
                             f"got shape {self.data.shape}")
        if dtype not in STORAGE or self.data.dtype != np.dtype(STORAGE[dtype]):
            raise ValueError(f"{where}: dtype {dtype} stored as {self.data.dtype} is not supported "
                             f"(supported: {', '.join(STORAGE)}; bfloat16 as uint16 bits)")

    @property
    def info(self) -> PieceInfo:
        return PieceInfo(self.kind, self.name, self.shape, self.start, self.stop, self.dtype)


@dataclass
class ShardRecord:
    """What one rank wrote: its file (relative name), size, pieces, and the checksums of version 2:
    `offsets[i]` is the file offset of piece i's data (contiguous, `pieces[i]` bytes long),
    `block_crc32[i]` the crc32 of each `block_bytes` block of it, `metadata_crc32` the crc32 of every
    byte outside the data. JSON-serialisable so the ranks can gather them over MPI as bytes."""

    file: str
    bytes: int
    pieces: list[PieceInfo]
    offsets: list[int]
    block_bytes: int
    block_crc32: list[list[int]]
    metadata_crc32: str

    def to_json(self) -> dict:
        return {"file": self.file, "bytes": self.bytes, "metadata_crc32": self.metadata_crc32,
                "offsets": self.offsets, "block_bytes": self.block_bytes, "block_crc32": self.block_crc32,
                "pieces": [p.to_json() for p in self.pieces]}

    @staticmethod
    def from_json(d: dict) -> "ShardRecord":
        return ShardRecord(d["file"], int(d["bytes"]), [PieceInfo.from_json(r) for r in d["pieces"]],
                           [int(o) for o in d["offsets"]], int(d["block_bytes"]),
                           [[int(c) for c in b] for b in d["block_crc32"]], d["metadata_crc32"])

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json()).encode()

    @staticmethod
    def from_bytes(b: bytes) -> "ShardRecord":
        return ShardRecord.from_json(json.loads(b.decode()))

    def spans(self) -> list[tuple[int, int]]:
        """(file offset, bytes) of each piece's data."""
        return [(o, (p.stop - p.start) * np.dtype(STORAGE[p.dtype]).itemsize) for o, p in zip(self.offsets, self.pieces)]


def check_coverage(records: list[ShardRecord]) -> dict[tuple[str, str], list[tuple[PieceInfo, str]]]:
    """{(kind, name): [(piece, file), ...] sorted by start} after checking that every tensor is covered
    exactly once, with one shape and dtype. Raises HpcyuanError naming the tensor, the elements and
    the files on an overlap (e.g. two dp replicas both wrote a weight range) or a gap."""
    tensors: dict[tuple[str, str], list[tuple[PieceInfo, str]]] = {}
    for rec in records:
        for p in rec.pieces:
            tensors.setdefault((p.kind, p.name), []).append((p, rec.file))
    for (kind, name), pieces in tensors.items():
        pieces.sort(key=lambda pf: pf[0].start)
        first, first_file = pieces[0]
        for p, f in pieces:
            if (p.shape, p.dtype) != (first.shape, first.dtype):
                raise HpcyuanError(f"checkpoint {kind} {name}: {f} writes shape {p.shape} {p.dtype} but "
                                   f"{first_file} writes shape {first.shape} {first.dtype}")
        end, end_file = 0, None
        for p, f in pieces:
            if p.start < end:
                raise HpcyuanError(
                    f"checkpoint {kind} {name}: elements [{p.start}, {min(end, p.stop)}) are written by both "
                    f"{end_file} and {f}; each element must be written by exactly one rank "
                    f"(dp replicas: let one write)")
            if p.start > end:
                raise HpcyuanError(f"checkpoint {kind} {name}: elements [{end}, {p.start}) of {p.numel} "
                                   f"are written by no rank")
            end, end_file = p.stop, f
        if end != first.numel:
            raise HpcyuanError(f"checkpoint {kind} {name}: elements [{end}, {first.numel}) of {first.numel} "
                               f"are written by no rank")
    return tensors


def block_crc32s(data: np.ndarray, block_bytes: int = BLOCK_BYTES) -> list[int]:
    """crc32 of each `block_bytes` block of a piece's bytes (the last block may be shorter)."""
    raw = memoryview(data).cast("B")
    return [crc32(raw[i:i + block_bytes]) for i in range(0, len(raw), block_bytes)]


def metadata_crc32(path, spans: list[tuple[int, int]]) -> str:
    """crc32 (hex) of every byte of the file outside the data `spans` (offset, bytes): HDF5's
    superblock, object headers, attributes, heaps; a few KiB, read with plain reads (no HDF5: a
    damaged header could make HDF5 itself fail or hang). Raises ValueError when a span leaves the file."""
    crc, pos = 0, 0
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        for offset, length in [*sorted(spans), (size, 0)]:
            if offset < pos or offset + length > size:
                raise ValueError(f"data span [{offset}, {offset + length}) overlaps another or leaves the file "
                                 f"({size} bytes)")
            fh.seek(pos)
            crc = crc32(fh.read(offset - pos), crc)
            pos = offset + length
    return f"{crc:08x}"


def list_checkpoints(root) -> list[tuple[int, Path]]:
    """Committed checkpoint directories under `root` as (step, path), oldest first. A `.tmp`
    directory (a save in progress or killed) is never listed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(parse_step(p.name), p) for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    return sorted((s, p) for s, p in found if s is not None)


def read_latest(root) -> Path | None:
    """The directory `root/latest` names (a symlink, or a file holding the name), else None."""
    link = Path(root) / LATEST
    try:
        target = os.readlink(link) if link.is_symlink() else link.read_text().strip()
    except OSError:
        return None
    return Path(root) / Path(target).name
