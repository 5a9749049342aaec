"""The tokenizer: a SentencePiece Unigram model (as Yuan 2.0 uses), trained offline on the corpus.

    tok = Tokenizer.train(documents, vocab_size=2048, path="data/x/tokenizer.model")
    tok = Tokenizer.load("data/x/tokenizer.model")
    assert tok.decode(tok.encode(text)) == text          # for any text

Exact round trip: identity normalisation, no dummy prefix, whitespace kept as is, byte fallback
(any character not in the vocabulary becomes its UTF-8 bytes) and "\\n" as a piece of its own.
The one character SentencePiece cannot round-trip by itself is U+2581 "▁", its internal space
marker; `encode` writes it as its three byte pieces, which decode back to "▁".

Piece ids: <unk>=0, <s>=1, </s>=2, <pad>=3, <eod>=4 (end of document; a control piece, so text
never encodes to it: `prepare` appends it after each document), "\\n"=5, then 256 byte pieces,
then the learned pieces. The vocabulary size is exact (SentencePiece's hard limit).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from hpcyuan.data.corpus import Document
from hpcyuan.errors import HpcyuanError

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<eod>", "\n")
MIN_VOCAB = len(SPECIALS) + 256 + 1  # + at least one learned piece
SPACE_MARK = "\u2581"
# SentencePiece skips training sentences longer than this (bytes); cut long lines to keep them.
MAX_SENTENCE_CHARS = 1024


class Tokenizer:
    """A loaded SentencePiece model plus the ids this project relies on."""

    def __init__(self, model_proto: bytes, source: str = "<memory>"):
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.source = source
        self.eod_id = self.sp.piece_to_id("<eod>")
        self.pad_id = self.sp.pad_id()
        if self.eod_id == self.sp.unk_id() or not self.sp.is_control(self.eod_id):
            raise HpcyuanError(f"{source}: not an hpcyuan tokenizer (no <eod> control piece)")
        self._mark_bytes = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in SPACE_MARK.encode()]

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise HpcyuanError(f"{path}: no tokenizer model here")
        return cls(path.read_bytes(), str(path))

    @classmethod
    def train(cls, documents: Iterable[Document], vocab_size: int, path: str | Path | None = None,
              seed: int = 1234) -> "Tokenizer":
        """Train on the documents' lines and save to `path` (if given). Deterministic for a seed."""
        proto = train_model_proto(documents, vocab_size, seed)
        if path is not None:
            Path(path).write_bytes(proto)
        return cls(proto, str(path or "<memory>"))

    @property
    def vocab_size(self) -> int:
        """Number of pieces (ids run 0 .. vocab_size - 1)."""
        return self.sp.get_piece_size()

    @property
    def model_proto(self) -> bytes:
        return self.sp.serialized_model_proto()

    def encode(self, text: str) -> list[int]:
        if SPACE_MARK not in text:
            return self.sp.encode(text)
        ids: list[int] = []
        for i, part in enumerate(text.split(SPACE_MARK)):
            if i:
                ids.extend(self._mark_bytes)
            ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; control pieces (<s>, </s>, <pad>, <eod>) decode to nothing."""
        return self.sp.decode([int(i) for i in ids])


def train_model_proto(documents: Iterable[Document], vocab_size: int, seed: int = 1234) -> bytes:
    if vocab_size < MIN_VOCAB:
        raise HpcyuanError(f"model.vocab_size = {vocab_size}: too small, the tokenizer needs at least "
                           f"{MIN_VOCAB} ({len(SPECIALS)} special pieces + 256 byte pieces + 1)")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_lines(documents), model_writer=model,
            vocab_size=vocab_size, model_type="unigram", hard_vocab_limit=True,
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, split_digits=True, byte_fallback=True,
            character_coverage=0.9995,  # rare characters fall back to bytes instead of needing pieces
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, control_symbols=["<eod>"], user_defined_symbols=["\n"],
            input_sentence_size=2_000_000, shuffle_input_sentence=True, num_threads=2, minloglevel=2)
    except RuntimeError as err:
        raise HpcyuanError(_explain_training_error(err, vocab_size)) from None
    return model.getvalue()


def _training_lines(documents: Iterable[Document]):
    """SentencePiece trains on lines; newlines themselves are the "\\n" piece."""
    for doc in documents:
        for line in doc.text.split("\n"):
            for start in range(0, len(line), MAX_SENTENCE_CHARS):
                chunk = line[start:start + MAX_SENTENCE_CHARS]
                if chunk.strip():
                    yield chunk


def _explain_training_error(err: RuntimeError, vocab_size: int) -> str:
    text = str(err)
    high = re.search(r"Vocabulary size too high \((\d+)\).*?<= (\d+)", text)
    if high:
        return (f"model.vocab_size = {vocab_size}: too large for this corpus, SentencePiece can learn "
                f"at most {high.group(2)} pieces from it; use a smaller vocab_size or a larger corpus")
    chars = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", text)
    if chars:
        return (f"model.vocab_size = {vocab_size}: too small for this corpus, which needs at least "
                f"{chars.group(2)} pieces (special, byte and character pieces); use a larger vocab_size")
    first_line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"tokenizer training failed (model.vocab_size = {vocab_size}): {first_line}"
