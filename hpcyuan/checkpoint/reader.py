"""Reading checkpoints: find the newest good one, verify it, read any flat range of any tensor.

    path, messages = latest_good(root)       # newest checkpoint that verifies; one line per skipped
    with CheckpointReader(path) as ck:
        ck.meta["step"], ck.names("weight")
        w = ck.read("master", "layers.0.attn.q_proj.weight", start, stop)   # 1-D, elements [start, stop)
        W = ck.read_tensor("weight", "embedding.weight")                     # full global shape

`read` opens only the shard files whose pieces overlap the range (the piece table is in
manifest.json), so a rank loading its ZeRO region of a new layout touches a few files. A plain h5py
user needs none of this: `h5py.File("step_…/index.h5")["weight"][name][...]` is the whole flattened
tensor (reshape it to the dataset's attr "shape"). Files are opened with locking=False (format.open_h5).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np

from hpcyuan.checkpoint.format import (
    CHECKSUM, FORMAT_VERSION, MANIFEST, META, STATE, STORAGE, PieceInfo, dataset_path,
    list_checkpoints, open_h5, read_latest,
)
from hpcyuan.checkpoint.writer import sync_and_checksum
from hpcyuan.errors import HpcyuanError

__all__ = ["CheckpointReader", "latest_good", "list_checkpoints", "verify"]


def verify(step_dir, deep: bool = False) -> list[str]:
    """Problems of a committed checkpoint directory, one line each; [] when it is good. Checks the
    manifest (missing -> "partial"), the format version, and every file's presence, size and crc32.
    A file whose checksum differs is also read dataset by dataset to name the pieces that fail
    HDF5's fletcher32 check; `deep=True` does that read for every HDF5 file (slow: reads everything)."""
    step_dir = Path(step_dir)
    manifest, problem = _load_manifest(step_dir)
    if problem:
        return [problem]
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
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        return None, f"format version {version} unknown (this hpcyuan reads version {FORMAT_VERSION})"
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


def latest_good(root) -> tuple[Path | None, list[str]]:
    """(the newest checkpoint under `root` that verifies, or None; messages). Walks from the newest
    committed directory backwards (a crash between the rename and repointing `latest` leaves a newer
    complete checkpoint, which is used); one message line per checkpoint skipped and why, and one per
    unfinished save (`step_N.tmp`) newer than the one chosen."""
    root = Path(root)
    ckpts = list_checkpoints(root)
    messages = []
    latest = read_latest(root)
    if latest is not None and latest not in {p for _, p in ckpts}:
        messages.append(f"{root / 'latest'} names {latest.name}, which is not there; using the newest good checkpoint")
    chosen = None
    for _, path in reversed(ckpts):
        problems = verify(path)
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
    """Read tensors of one committed checkpoint by logical name and flat range. Does not verify:
    call `verify` (or use `latest_good`) first; fletcher32 still catches corrupted pieces on read."""

    def __init__(self, step_dir):
        self.dir = Path(step_dir)
        manifest, problem = _load_manifest(self.dir)
        if problem:
            raise HpcyuanError(f"checkpoint {self.dir}: {problem}")
        self.manifest = manifest
        self.meta: dict = json.loads((self.dir / META).read_text())
        self._pieces: dict[tuple[str, str], list[tuple[PieceInfo, str]]] = {}
        for file, rows in manifest["pieces"].items():
            for row in rows:
                p = PieceInfo.from_json(row)
                self._pieces.setdefault((p.kind, p.name), []).append((p, file))
        for pieces in self._pieces.values():
            pieces.sort(key=lambda pf: pf[0].start)
        self._open: dict[str, h5py.File] = {}

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
        """Elements [start, stop) of the flattened tensor, 1-D, read from the overlapping shards only."""
        info = self._info(kind, name)
        stop = info.numel if stop is None else stop
        if not 0 <= start <= stop <= info.numel:
            raise ValueError(f"checkpoint read {kind} {name} [{start}, {stop}): outside [0, {info.numel})")
        out = np.empty(stop - start, dtype=STORAGE[info.dtype])
        for p, file in self._pieces[(kind, name)]:
            lo, hi = max(start, p.start), min(stop, p.stop)
            if lo >= hi:
                continue
            path = dataset_path(kind, name, p.start, p.stop)
            try:
                self._file(file)[path].read_direct(out, np.s_[lo - p.start:hi - p.start], np.s_[lo - start:hi - start])
            except (OSError, KeyError) as e:
                raise HpcyuanError(f"checkpoint {self.dir / file}: cannot read {path} "
                                   f"({' '.join(str(e).split())})") from e
        return out

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

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kinds = {k for k, _ in self._pieces}
        sizes = {k: sum(math.prod(p[0][0].shape) for (kk, _), p in self._pieces.items() if kk == k) for k in kinds}
        return f"CheckpointReader({self.dir}, step={self.meta.get('step')}, elements={sizes})"
