"""`hpcyuan ckpt export`: one checkpoint's model weights as a single HDF5 file for inference.

    path, skipped = resolve_checkpoint("runs/demo/checkpoints")   # newest good step dir (or a step dir itself)
    result = export_weights("runs/demo/checkpoints", "demo.h5", say=print)
    weights = read_exported("demo.h5")        # Weights: tensors by logical name, model dict, config TOML

    import h5py                               # ... or without hpcyuan:
    with h5py.File("demo.h5", "r") as f:
        w = f["weights"]["layers.0.attn.q_proj.weight"][...]       # numpy, full global shape
        model = json.loads(f.attrs["model"])

Only the kind "weight" is exported (no optimizer state, no RNG); each tensor is one dataset
`/weights/<logical name>` in its global shape and stored dtype (bfloat16 as uint16 bits, attr
dtype = "bfloat16"), in chunks of <= 4 MiB with fletcher32 (an inference user's plain h5py read
checks them). Root attributes carry what an
inference program needs (the model config as JSON, the run's config TOML for the tokenizer's data
dir) and where the weights came from (step, samples, code version, sha256 of the source manifest).
The checkpoint is verified first, its weights deeply (every block's crc32; the optimizer state is
not read): a damaged one is refused.
The file is written as OUT.tmp, fsync'd and renamed, so OUT is either complete or absent.
Format description: docs/checkpoint-format.md, "Exported weights".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

import hpcyuan
from hpcyuan.checkpoint.format import MANIFEST, STORAGE, list_checkpoints
from hpcyuan.checkpoint.reader import CheckpointReader, latest_good, verify
from hpcyuan.checkpoint.writer import create_h5, fsync_dir, sync_and_checksum
from hpcyuan.errors import HpcyuanError

EXPORT_FORMAT = "hpcyuan-weights"
EXPORT_VERSION = 1
WEIGHTS = "weights"
# Tensors are copied in blocks of whole leading-dimension rows of about this size, so an export of a
# 100B-parameter model never holds more than one block (plus HDF5's chunk cache) in memory.
COPY_BLOCK_BYTES = 64 << 20
# fletcher32 needs chunked datasets; chunks of a few MiB make it about free (h5py's automatic 32 KiB
# chunks cost 2-3x in write speed, measured for issue [C]).
CHUNK_BYTES = 4 << 20


@dataclass
class ExportResult:
    path: Path
    source: Path
    step: int
    tensors: int
    elements: int
    bytes: int
    seconds: float


@dataclass
class Weights:
    """A model's weights by logical name (global shapes, stored dtypes: bfloat16 as uint16 bits,
    see `dtypes`) and what is needed to rebuild the model and find its tokenizer."""

    source: Path
    step: int
    model: dict
    """The checkpoint's meta["model"]: the fields of hpcyuan.config.ModelConfig."""
    config_toml: str | None
    """The training run's whole config as TOML (its data.dir holds the tokenizer), if stored."""
    tensors: dict[str, np.ndarray] = field(repr=False)
    dtypes: dict[str, str] = field(repr=False)


class Progress:
    """Progress lines for something that may be slow: silent for the first `after_s` seconds, then
    at most one line every `every_s` seconds (a quick export prints nothing)."""

    def __init__(self, say: Callable[[str], None] | None, after_s: float = 1.0, every_s: float = 2.0):
        self.say, self.every_s = say, every_s
        self.start = time.perf_counter()
        self.next_at = self.start + after_s

    def update(self, line: Callable[[], str]) -> None:
        now = time.perf_counter()
        if self.say is not None and now >= self.next_at:
            self.say(line())
            self.next_at = now + self.every_s

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def resolve_checkpoint(path) -> tuple[Path, list[str]]:
    """(the step directory to read, one line per checkpoint skipped). `path` is one step directory,
    which must verify, or a checkpoint root, whose newest good checkpoint is taken (latest_good)."""
    path = Path(path)
    if not path.exists():
        raise HpcyuanError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise HpcyuanError(f"{path}: not a checkpoint directory (a run's checkpoints/ or one step_NNNNNNNN)")
    if _is_step_dir(path):
        problems = _verify_weights(path)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise HpcyuanError(f"{path}: damaged checkpoint, refused: {problems[0]}{more} "
                               f"(`hpcyuan ckpt verify {path}` lists every problem)")
        return path, []
    if not list_checkpoints(path):
        raise HpcyuanError(f"{path}: no checkpoints here (step_NNNNNNNN directories)")
    chosen, messages = latest_good(path, check=_verify_weights)
    if chosen is None:
        raise HpcyuanError(f"{path}: no checkpoint here verifies ({'; '.join(messages)})")
    return chosen, messages


def _verify_weights(step_dir: Path) -> list[str]:
    return verify(step_dir, deep=True, kinds=("weight",))


def _is_step_dir(path: Path) -> bool:
    # the same test as `hpcyuan ckpt inspect` (report.step_dirs)
    return (path / "meta.json").is_file() or (path / MANIFEST).is_file() or path.name.startswith("step_")


def export_weights(checkpoint, out, say: Callable[[str], None] | None = None) -> ExportResult:
    """Write the weights of `checkpoint` (a step directory or a root) to the HDF5 file `out`.
    `say` receives the skipped-checkpoint lines and progress lines of a slow export."""
    step_dir, skipped = resolve_checkpoint(checkpoint)
    for line in skipped:
        if say:
            say(f"export: {line}")
    out = Path(out)
    if out.is_dir():
        raise HpcyuanError(f"{out}: is a directory; name the .h5 file to write")
    tmp = out.with_name(out.name + ".tmp")
    progress = Progress(say)
    try:
        with CheckpointReader(step_dir) as reader:
            meta = reader.meta
            names = reader.names("weight")
            if not names:
                raise HpcyuanError(f"{step_dir}: the checkpoint holds no weights")
            total = sum(math.prod(reader.shape("weight", n)) * np.dtype(STORAGE[reader.dtype("weight", n)]).itemsize
                        for n in names)
            out.parent.mkdir(parents=True, exist_ok=True)
            done = elements = 0
            with create_h5(tmp) as f:
                _write_attrs(f, meta, step_dir)
                group = f.create_group(WEIGHTS)
                for i, name in enumerate(names):
                    for copied in _copy_tensor(reader, name, group):
                        done += copied
                        progress.update(lambda: f"export: {done / max(total, 1):4.0%} ({done / 2**20:,.0f} of "
                                                f"{total / 2**20:,.0f} MiB, tensor {i + 1}/{len(names)})")
                    elements += math.prod(reader.shape("weight", name))
        size, _ = sync_and_checksum(tmp)  # fsync before the rename makes it visible
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise HpcyuanError(f"export to {out} failed: {' '.join(str(e).split())}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(out, step_dir, int(meta["step"]), len(names), elements, size, progress.elapsed)


def _write_attrs(f: h5py.File, meta: dict, step_dir: Path) -> None:
    manifest = (step_dir / MANIFEST).read_bytes()
    f.attrs["format"] = EXPORT_FORMAT
    f.attrs["format_version"] = EXPORT_VERSION
    f.attrs["model"] = json.dumps(meta.get("model", {}), sort_keys=True)
    f.attrs["config"] = meta.get("config", "")
    f.attrs["step"] = int(meta["step"])
    f.attrs["consumed_samples"] = int(meta.get("consumed_samples", 0))
    f.attrs["code_version"] = str(meta.get("code_version", "unknown"))
    f.attrs["exported_by"] = f"hpcyuan {hpcyuan.__version__}"
    f.attrs["source"] = str(step_dir.resolve())
    f.attrs["source_manifest_sha256"] = hashlib.sha256(manifest).hexdigest()


def _copy_tensor(reader: CheckpointReader, name: str, group: h5py.Group):
    """Create /weights/<name> in its global shape and fill it block by block; yields bytes copied."""
    shape, dtype = reader.shape("weight", name), reader.dtype("weight", name)
    storage = np.dtype(STORAGE[dtype])
    row = math.prod(shape[1:])  # elements per leading-dimension row (1 for a 1-D tensor)
    d = group.create_dataset(name, shape=shape, dtype=storage, fletcher32=bool(shape),
                             chunks=_chunk_shape(shape, storage.itemsize) if shape else None)
    d.attrs["dtype"] = dtype
    if not shape:  # a scalar parameter
        d[()] = reader.read("weight", name)[0]
        yield storage.itemsize
        return
    rows_per_block = max(1, COPY_BLOCK_BYTES // max(1, row * storage.itemsize))
    for r0 in range(0, shape[0], rows_per_block):
        r1 = min(shape[0], r0 + rows_per_block)
        d[r0:r1] = reader.read("weight", name, r0 * row, r1 * row).reshape((r1 - r0, *shape[1:]))
        yield (r1 - r0) * row * storage.itemsize


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of at most CHUNK_BYTES: whole trailing
    dimensions while they fit, then part of one, then 1s (an expert stack [E, f, h] is cut by rows)."""
    budget, chunk = max(1, CHUNK_BYTES // itemsize), []
    for n in reversed(shape):
        take = max(1, min(n, budget))
        chunk.append(take)
        budget = max(1, budget // take)
    return tuple(reversed(chunk))


def read_exported(path) -> Weights:
    """The weights and attributes of a file written by `export_weights`."""
    path = Path(path)
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("format") != EXPORT_FORMAT:
                raise HpcyuanError(f"{path}: not an exported hpcyuan weights file (no attr format = "
                                   f"{EXPORT_FORMAT!r}; make one with `hpcyuan ckpt export`)")
            version = int(f.attrs.get("format_version", -1))
            if version != EXPORT_VERSION:
                raise HpcyuanError(f"{path}: exported weights format version {version} unknown "
                                   f"(this hpcyuan reads version {EXPORT_VERSION})")
            group = f[WEIGHTS]
            tensors = {name: group[name][()] for name in group}
            dtypes = {name: str(group[name].attrs.get("dtype", group[name].dtype.name)) for name in group}
            return Weights(path, int(f.attrs["step"]), json.loads(f.attrs["model"]),
                           str(f.attrs.get("config", "")) or None, tensors, dtypes)
    except OSError as e:
        raise HpcyuanError(f"{path}: cannot read exported weights ({' '.join(str(e).split())})") from e


def read_checkpoint_weights(checkpoint) -> tuple[Weights, list[str]]:
    """The weights of a checkpoint (step directory or root, verified first) and the skipped lines."""
    step_dir, skipped = resolve_checkpoint(checkpoint)
    with CheckpointReader(step_dir) as reader:
        names = reader.names("weight")
        tensors = {n: reader.read_tensor("weight", n) for n in names}
        dtypes = {n: reader.dtype("weight", n) for n in names}
        meta = reader.meta
    return Weights(step_dir, int(meta["step"]), meta.get("model", {}), meta.get("config"), tensors, dtypes), skipped
