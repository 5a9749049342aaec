"""Token files and prepare: round trip, dtype, atomic meta, idempotency, and every error one line."""

import json
import os
import time

import numpy as np
import pytest

from hpcyuan.config import Config, DataConfig, ModelConfig
from hpcyuan.data import tokens as tf
from hpcyuan.data.prepare import check_data, prepare_data, split_document
from hpcyuan.data.tokenizer import Tokenizer
from hpcyuan.data.tokens import TokenDataset
from helpers import one_line_error, pseudo_text

VOCAB = 360


def _config(tmp_path, vocab=VOCAB, seq_length=16, corpus=None) -> Config:
    if corpus is None:
        corpus = tmp_path / "corpus"
        corpus.mkdir(exist_ok=True)
        for i in range(4):
            (corpus / f"doc{i}.txt").write_text(pseudo_text(i))
    return Config(model=ModelConfig(vocab_size=vocab, seq_length=seq_length),
                  data=DataConfig(corpus=str(corpus), dir=str(tmp_path / "data")))


@pytest.fixture
def prepared(tmp_path):
    config = _config(tmp_path)
    prepare_data(config)
    return config


# ---------------------------------------------------------------------------------------------
# Format


def test_dtype_choice():
    assert tf.token_dtype_name(512) == "uint16" and tf.token_dtype_name(65536) == "uint16"
    assert tf.token_dtype_name(65537) == "uint32" and tf.token_dtype_name(135040) == "uint32"


@pytest.mark.parametrize("vocab", [1000, 100_000])
def test_write_read_round_trip(tmp_path, vocab):
    rng = np.random.default_rng(0)
    splits = {s: rng.integers(0, vocab, size=n) for s, n in (("train", 1001), ("val", 101))}
    (tmp_path / tf.TOKENIZER).write_bytes(b"model")
    meta = {"dtype": tf.token_dtype_name(vocab), "vocab_size": vocab, "eod_id": 4,
            "tokenizer": {"bytes": 5, "sha256": "x"},
            "splits": {s: tf.write_split(tmp_path, s, ids, vocab) for s, ids in splits.items()}}
    tf.write_meta(tmp_path, meta)
    itemsize = 2 if vocab <= 65536 else 4
    assert (tmp_path / "train.bin").stat().st_size == 1001 * itemsize
    assert np.array_equal(np.fromfile(tmp_path / "train.bin", dtype=f"<u{itemsize}"), splits["train"])
    ds = TokenDataset(tmp_path, "train", seq_length=10)
    assert ds.num_samples == 100
    for i in (0, 57, 99):
        window = ds.sample(i)
        assert window.dtype == np.int64 and np.array_equal(window, splits["train"][i * 10:i * 10 + 11])
    assert not list(tmp_path.glob("*.tmp")), "no temp files are left behind"


def test_prepare_writes_a_consistent_directory(prepared):
    directory = prepared.data.dir
    meta = json.loads((tf.Path(directory) / "meta.json").read_text())
    assert meta["format_version"] == tf.FORMAT_VERSION and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == VOCAB and meta["eod_id"] == 4
    assert meta["config"] == {"vocab_size": VOCAB, "val_fraction": prepared.data.val_fraction}
    assert meta["splits"]["train"]["documents"] == 4 and meta["splits"]["val"]["documents"] == 4
    assert 0 < meta["unigram_entropy_nats"] < np.log(VOCAB) + 0.5
    tf.verify_files(directory, meta, checksums=True)
    # train.bin decodes to the documents' heads, each followed by <eod>
    tok = Tokenizer.load(tf.Path(directory) / "tokenizer.model")
    train = np.fromfile(tf.Path(directory) / "train.bin", dtype="<u2")
    assert train[-1] == tok.eod_id and (train == tok.eod_id).sum() == 4
    first_doc = train[:int(np.argmax(train == tok.eod_id))]
    assert tok.decode(first_doc) == split_document(pseudo_text(0), prepared.data.val_fraction)[0]


def test_validation_tail_is_cut_at_a_line_break():
    text = "".join(f"line {i}\n" for i in range(100))
    head, tail = split_document(text, 0.1)
    assert head + tail == text and head.endswith("\n") and tail.startswith("line ")
    assert 0.05 < len(tail) / len(text) < 0.15
    assert split_document("one line, no break", 0.1) == ("one line, no break", "")


def test_check_data_accepts_padding_below_128(prepared):
    assert check_data(prepared)["vocab_size"] == VOCAB
    padded = Config(model=ModelConfig(vocab_size=VOCAB + 127, seq_length=16), data=prepared.data)
    check_data(padded)


# ---------------------------------------------------------------------------------------------
# Prepare: idempotent, and its errors


def test_prepare_is_idempotent(prepared, monkeypatch, capsys):
    model = tf.Path(prepared.data.dir) / "tokenizer.model"
    before = (model.stat().st_mtime_ns, (model.parent / "meta.json").read_bytes())
    monkeypatch.setattr(Tokenizer, "train", lambda *a, **k: pytest.fail("retrained a prepared directory"))
    prepare_data(prepared)
    assert "already prepared" in capsys.readouterr().out
    assert (model.stat().st_mtime_ns, (model.parent / "meta.json").read_bytes()) == before


def test_prepare_redoes_work_when_inputs_change(prepared, monkeypatch):
    calls = []
    real_train = Tokenizer.train.__func__
    counting = classmethod(lambda cls, *a, **k: calls.append(1) or real_train(cls, *a, **k))
    monkeypatch.setattr(Tokenizer, "train", counting)
    prepare_data(prepared, force=True)
    (tf.Path(prepared.data.corpus) / "doc0.txt").write_text(pseudo_text(99))  # corpus content changed
    prepare_data(prepared)
    prepare_data(Config(model=ModelConfig(vocab_size=VOCAB + 10), data=prepared.data))
    assert len(calls) == 3


def test_interrupted_prepare_does_not_look_prepared(prepared, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(Tokenizer, "train", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(prepared, force=True)
    one_line_error(lambda: check_data(prepared), "meta.json", "hpcyuan data prepare")


def test_missing_and_empty_corpus(tmp_path):
    one_line_error(lambda: prepare_data(_config(tmp_path, corpus=tmp_path / "nope")), "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(lambda: prepare_data(_config(tmp_path, corpus=empty)), str(empty), "no text")
    assert not (tmp_path / "data" / "meta.json").exists()


def test_vocab_too_large_for_corpus(tmp_path):
    one_line_error(lambda: prepare_data(_config(tmp_path, vocab=30000)), "model.vocab_size = 30000")


# ---------------------------------------------------------------------------------------------
# Opening errors


def test_missing_dir(tmp_path):
    one_line_error(lambda: TokenDataset(tmp_path / "nodata", "train", 16), "nodata", "hpcyuan data prepare")


def test_missing_meta(tmp_path):
    one_line_error(lambda: TokenDataset(tmp_path, "train", 16), "meta.json", "hpcyuan data prepare")


def test_truncated_bin(prepared):
    path = tf.Path(prepared.data.dir) / "val.bin"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 2)
    one_line_error(lambda: TokenDataset(prepared.data.dir, "train", 16), "val.bin", "bytes")


def test_corrupt_bin_caught_by_checksum(prepared):
    path = tf.Path(prepared.data.dir) / "train.bin"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    TokenDataset(prepared.data.dir, "train", 16)  # sizes match: only the checksum can tell
    one_line_error(lambda: TokenDataset(prepared.data.dir, "train", 16, verify_checksums=True),
                    "train.bin", "sha256")


def test_seq_length_beyond_data(prepared):
    n_val = json.loads((tf.Path(prepared.data.dir) / "meta.json").read_text())["splits"]["val"]["tokens"]
    one_line_error(lambda: TokenDataset(prepared.data.dir, "val", n_val), "'val'", str(n_val),
                    f"model.seq_length = {n_val}")
    TokenDataset(prepared.data.dir, "val", n_val - 1)  # exactly one window fits
    long = Config(model=ModelConfig(vocab_size=VOCAB, seq_length=n_val), data=prepared.data)
    one_line_error(lambda: check_data(long), "'val'", "model.seq_length")


def test_vocab_mismatch(prepared):
    for vocab in (VOCAB - 1, VOCAB + 128):
        config = Config(model=ModelConfig(vocab_size=vocab, seq_length=16), data=prepared.data)
        one_line_error(lambda: check_data(config, "configs/x.toml"), "meta.json", str(VOCAB),
                        f"model.vocab_size = {vocab}", "configs/x.toml", "prepare")


# ---------------------------------------------------------------------------------------------
# The real corpus (about 10 s on 2 cores)


def test_prepare_shakespeare(tmp_path):
    config = Config(model=ModelConfig(vocab_size=512, seq_length=64),
                    data=DataConfig(corpus="shakespeare", dir=str(tmp_path / "shakespeare")))
    start = time.perf_counter()
    prepare_data(config)
    meta = check_data(config)
    print(f"shakespeare vocab 512: {time.perf_counter() - start:.1f} s, train {meta['splits']['train']['tokens']} "
          f"tokens, val {meta['splits']['val']['tokens']}, unigram entropy {meta['unigram_entropy_nats']:.3f}")
    assert meta["documents"] > 700 and meta["splits"]["val"]["documents"] > 700
    assert 2_000_000 < meta["splits"]["train"]["tokens"] < 4_000_000
    assert 0.03 < meta["splits"]["val"]["tokens"] / meta["splits"]["train"]["tokens"] < 0.08
    assert 3.0 < meta["unigram_entropy_nats"] < np.log(512)
    tf.verify_files(config.data.dir, meta, checksums=True)
    assert os.path.getsize(tmp_path / "shakespeare" / "tokenizer.model") == meta["tokenizer"]["bytes"]


def test_meta_of_another_version_or_incomplete(prepared):
    path = tf.Path(prepared.data.dir) / "meta.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "format_version": 99}))
    one_line_error(lambda: check_data(prepared), "meta.json", "format_version 99")
    path.write_text(json.dumps({k: v for k, v in meta.items() if k != "eod_id"}))
    one_line_error(lambda: check_data(prepared), "meta.json", "eod_id")
    path.write_text("{not json")
    one_line_error(lambda: check_data(prepared), "meta.json", "JSON")
