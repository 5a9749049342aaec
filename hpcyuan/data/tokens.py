"""Prepared token files on disk and the memory-mapped dataset that reads them.

A prepared data directory (format in docs/data-format.md, FORMAT_VERSION below) holds
`tokenizer.model`, `train.bin`, `val.bin` (raw little-endian uint16, or uint32 for vocabularies
over 65536) and `meta.json`, which is written last: a directory without it is not prepared.

    ds = TokenDataset("data/shakespeare", "train", seq_length=64)
    window = ds.sample(i)          # (seq_length + 1,) tokens: inputs = [:-1], targets = [1:]
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from hpcyuan.errors import HpcyuanError

FORMAT_VERSION = 1
SPLITS = ("train", "val")
META = "meta.json"
TOKENIZER = "tokenizer.model"
REQUIRED_KEYS = ("dtype", "vocab_size", "eod_id", "splits", "tokenizer")
PREPARE_HINT = "run `hpcyuan data prepare --config ...` first"


DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}  # meta.json name -> on-disk type


def token_dtype_name(vocab_size: int) -> str:
    """Smallest unsigned type that holds every id (ids run 0 .. vocab_size - 1)."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Writing: temp name, fsync, rename; meta.json last


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unmark_prepared(directory: Path) -> None:
    """Remove meta.json before rewriting anything, so a crash mid-way leaves an unprepared dir."""
    meta = directory / META
    if meta.exists():
        meta.unlink()
        _fsync_dir(directory)


def write_split(directory: Path, split: str, tokens: np.ndarray, vocab_size: int) -> dict:
    """Write `<split>.bin`; returns its meta entry (tokens, bytes, sha256)."""
    data = np.ascontiguousarray(tokens, dtype=DTYPES[token_dtype_name(vocab_size)]).tobytes()
    atomic_write_bytes(directory / f"{split}.bin", data)
    return {"tokens": int(len(tokens)), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_meta(directory: Path, meta: dict) -> None:
    meta = {"format_version": FORMAT_VERSION, **meta}
    atomic_write_bytes(directory / META, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# Reading and verifying


def read_meta(directory: str | Path) -> dict:
    """meta.json of a prepared directory; one-line errors if it is missing or not ours."""
    directory = Path(directory)
    path = directory / META
    if not directory.is_dir():
        raise HpcyuanError(f"data directory {directory} does not exist: {PREPARE_HINT}")
    if not path.is_file():
        raise HpcyuanError(f"{path} not found (data not prepared, or preparation was interrupted): {PREPARE_HINT}")
    try:
        meta = json.loads(path.read_text())
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise HpcyuanError(f"{path}: not valid JSON: {PREPARE_HINT}") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise HpcyuanError(f"{path}: format_version {version}, this hpcyuan reads {FORMAT_VERSION}: {PREPARE_HINT}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    missing += [f"splits.{s}" for s in SPLITS if s not in meta.get("splits", {})]
    if missing:
        raise HpcyuanError(f"{path}: missing {', '.join(missing)}: {PREPARE_HINT}")
    if meta.get("dtype") not in DTYPES:
        raise HpcyuanError(f"{path}: unknown dtype {meta.get('dtype')!r} (expected uint16 or uint32): {PREPARE_HINT}")
    return meta


def verify_files(directory: str | Path, meta: dict, checksums: bool = False) -> None:
    """Sizes of tokenizer and .bin files always; sha256 too when `checksums`."""
    directory = Path(directory)
    files = {f"{s}.bin": meta["splits"][s] for s in SPLITS} | {TOKENIZER: meta["tokenizer"]}
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            raise HpcyuanError(f"{path} is missing although {directory / META} lists it: {PREPARE_HINT} with --force")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise HpcyuanError(f"{path}: {size} bytes, {META} says {entry['bytes']} (truncated or "
                               f"overwritten): {PREPARE_HINT} with --force")
        if checksums and sha256_file(path) != entry["sha256"]:
            raise HpcyuanError(f"{path}: sha256 differs from {META} (corrupt file): {PREPARE_HINT} with --force")


def check_split_length(directory: Path, meta: dict, split: str, seq_length: int) -> int:
    """The split's token count; error if it cannot fill one window of seq_length + 1 tokens."""
    n_tokens = int(meta["splits"][split]["tokens"])
    if n_tokens < seq_length + 1:
        raise HpcyuanError(f"{Path(directory) / META}: split '{split}' has {n_tokens} tokens, too few for "
                           f"model.seq_length = {seq_length} (needs at least {seq_length + 1}); use a "
                           "shorter seq_length, a larger corpus or a larger data.val_fraction")
    return n_tokens


class TokenDataset:
    """One split, memory-mapped, cut into consecutive windows of seq_length + 1 tokens.

    Window i starts at token i * seq_length, so consecutive windows share one token: the last
    target of window i is the first input of window i + 1, and every token is a target once.
    """

    def __init__(self, directory: str | Path, split: str, seq_length: int, verify_checksums: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.directory, self.split, self.seq_length = Path(directory), split, seq_length
        self.meta = read_meta(self.directory)
        verify_files(self.directory, self.meta, checksums=verify_checksums)
        self.eod_id = int(self.meta["eod_id"])
        n_tokens = check_split_length(self.directory, self.meta, split, seq_length)
        path = self.directory / f"{split}.bin"
        self.tokens = np.memmap(path, dtype=DTYPES[self.meta["dtype"]], mode="r", shape=(n_tokens,))
        self.num_samples = (n_tokens - 1) // seq_length

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, i: int) -> np.ndarray:
        """Tokens [i*T, i*T + T + 1) as int64 (seq_length + 1,)."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples}) of split '{self.split}'")
        start = i * self.seq_length
        return np.asarray(self.tokens[start:start + self.seq_length + 1], dtype=np.int64)
