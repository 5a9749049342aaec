"""`hpcyuan data prepare`: corpus -> tokenizer + token files; and the check training runs first.

    path = prepare_data(config)            # idempotent: a matching prepared dir is kept as is
    meta = check_data(config, "configs/demo.toml")   # at train start: vocab and seq_length fit?

Each document is split in two at a line break: its head goes to `train.bin`, its tail (about
`data.val_fraction` of its characters) to `val.bin`, so validation is unseen text from every
document. Each part is followed by <eod>. The format is in docs/data-format.md.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from hpcyuan.config import Config
from hpcyuan.data import tokens as tf
from hpcyuan.data.corpus import Document, iter_documents
from hpcyuan.data.tokenizer import Tokenizer
from hpcyuan.errors import HpcyuanError

MAX_VOCAB_PADDING = 128  # model.vocab_size may exceed the piece count by less than this
PROGRESS_SECONDS = 2.0


def prepare_data(config: Config, force: bool = False) -> Path:
    """Train the tokenizer and write the token files into config.data.dir; returns the directory."""
    data, vocab_size = config.data, config.model.vocab_size
    directory = Path(data.dir)
    start = time.perf_counter()
    docs = list(iter_documents(data.corpus))
    fingerprint = corpus_sha256(docs)
    if not force and _is_prepared(directory, data.corpus, fingerprint, vocab_size, data.val_fraction):
        _log(f"{directory}: already prepared from corpus '{data.corpus}' with vocab {vocab_size} and "
             f"val_fraction {data.val_fraction}; nothing to do (use --force to redo)")
        return directory

    directory.mkdir(parents=True, exist_ok=True)
    tf.unmark_prepared(directory)
    _log(f"corpus '{data.corpus}': {len(docs)} documents, {sum(len(d.text) for d in docs):,} characters")
    t = time.perf_counter()
    tok = Tokenizer.train(docs, vocab_size, directory / tf.TOKENIZER)
    _log(f"tokenizer: unigram, {tok.vocab_size} pieces, trained in {time.perf_counter() - t:.1f} s")
    train, val, counts = tokenize_documents(tok, docs, data.val_fraction)

    splits = {name: tf.write_split(directory, name, ids, tok.vocab_size) | {"documents": counts[name]}
              for name, ids in (("train", train), ("val", val))}
    entropy = unigram_entropy(train, val, tok.vocab_size)
    model_bytes = (directory / tf.TOKENIZER).read_bytes()
    tf.write_meta(directory, {
        "dtype": tf.token_dtype_name(tok.vocab_size), "vocab_size": tok.vocab_size,
        "eod_id": tok.eod_id, "pad_id": tok.pad_id, "splits": splits,
        "tokenizer": {"file": tf.TOKENIZER, "type": "sentencepiece-unigram", "bytes": len(model_bytes),
                      "sha256": hashlib.sha256(model_bytes).hexdigest()},
        "corpus": data.corpus, "corpus_sha256": fingerprint, "documents": len(docs),
        "config": {"vocab_size": vocab_size, "val_fraction": data.val_fraction},
        "unigram_entropy_nats": entropy,
        "prepare_seconds": round(time.perf_counter() - start, 3),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    _log(f"prepared {directory}: {len(docs)} documents, train {len(train):,} tokens, val {len(val):,} "
         f"tokens, vocab {tok.vocab_size}, unigram entropy {entropy or float('nan'):.3f} nats/token, "
         f"{time.perf_counter() - start:.1f} s")
    return directory


def load_data_meta(directory: str | Path, verify_checksums: bool = False) -> dict:
    """meta.json of a prepared directory after checking its files (sizes; sha256 on request)."""
    meta = tf.read_meta(directory)
    tf.verify_files(directory, meta, checksums=verify_checksums)
    return meta


def check_data(config: Config, config_path: str | None = None) -> dict:
    """What training calls first: the prepared data fits config.model (vocab and seq_length)."""
    directory = Path(config.data.dir)
    meta = load_data_meta(directory)
    pieces, vocab = int(meta["vocab_size"]), config.model.vocab_size
    if not pieces <= vocab < pieces + MAX_VOCAB_PADDING:
        where = f" (in {config_path})" if config_path else ""
        raise HpcyuanError(
            f"{directory / tf.META}: the tokenizer has {pieces} pieces but model.vocab_size = {vocab}{where}; "
            f"it must be in [{pieces}, {pieces + MAX_VOCAB_PADDING - 1}]: re-run `hpcyuan data prepare "
            f"--config {config_path or '...'} --force` to train a tokenizer of {vocab} pieces")
    for split in tf.SPLITS:
        tf.check_split_length(directory, meta, split, config.model.seq_length)
    return meta


# ---------------------------------------------------------------------------------------------
# Steps


def corpus_sha256(docs: list[Document]) -> str:
    """Fingerprint of the corpus content, so a changed file means a new prepare."""
    digest = hashlib.sha256()
    for doc in docs:
        for part in (doc.name, doc.text):
            data = part.encode()
            digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def split_document(text: str, val_fraction: float) -> tuple[str, str]:
    """(train head, val tail): the tail starts at a line start near len * (1 - val_fraction).

    The cut is the last line break at or before that point, else the first one after it; a
    document of one line stays whole in train.
    """
    target = max(1, round(len(text) * (1 - val_fraction)))
    cut = text.rfind("\n", 0, target) + 1
    if cut == 0:
        cut = text.find("\n", target) + 1
    if cut == 0 or cut >= len(text):
        return text, ""
    return text[:cut], text[cut:]


def tokenize_documents(tok: Tokenizer, docs: list[Document], val_fraction: float):
    """(train ids, val ids, document counts): each non-blank part followed by <eod>."""
    parts: dict[str, list[list[int]]] = {"train": [], "val": []}
    total, n_tokens, start, last = len(docs), 0, time.perf_counter(), time.perf_counter()
    for done, doc in enumerate(docs, 1):
        for split, text in zip(tf.SPLITS, split_document(doc.text, val_fraction)):
            if text.strip():
                ids = tok.encode(text) + [tok.eod_id]
                parts[split].append(ids)
                n_tokens += len(ids)
        if time.perf_counter() - last >= PROGRESS_SECONDS or done == total:
            last = time.perf_counter()
            _log(f"tokenizing: {done}/{total} documents, {n_tokens:,} tokens, {last - start:.1f} s")
    counts = {split: len(p) for split, p in parts.items()}
    arrays = [np.fromiter((i for ids in parts[s] for i in ids), dtype=np.int64) for s in tf.SPLITS]
    return arrays[0], arrays[1], counts


def unigram_entropy(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float | None:
    """Cross-entropy (nats/token) of val under add-one-smoothed unigram counts of train: the loss
    a model that learned only token frequencies would reach. None for an empty val split."""
    if len(val) == 0:
        return None
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts) - math.log(counts.sum())
    return float(-log_p[val].mean())


def _is_prepared(directory: Path, corpus: str, fingerprint: str, vocab_size: int, val_fraction: float) -> bool:
    try:
        meta = load_data_meta(directory)
    except HpcyuanError:
        return False
    wanted = {"vocab_size": vocab_size, "val_fraction": val_fraction}
    return meta.get("corpus") == corpus and meta.get("corpus_sha256") == fingerprint and meta.get("config") == wanted


def _log(message: str) -> None:
    print(message, flush=True)
