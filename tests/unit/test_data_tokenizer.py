"""Tokenizer: exact round trip of any text, special ids, clear vocabulary-size errors."""


import pytest

from hpcyuan.data.corpus import Document
from hpcyuan.data.tokenizer import MIN_VOCAB, Tokenizer
from helpers import one_line_error, pseudo_text


def _text(seed: int, lines: int = 60) -> str:
    return pseudo_text(seed, lines) + "中文测试，你好世界。莎士比亚的戏剧。\n"


CORPUS = [Document(f"doc{i}", _text(i)) for i in range(4)]

TEXTS = [
    "",
    "Hello world",
    "  two leading spaces, three   inside, trailing  ",
    "line one\nline two\n\n\nafter blank lines\n",
    "def f(x):\n    if x:\n\treturn x  # tab\n",
    "\r\nwindows line end\r\n",
    "中文文本：今天天气很好，我们去公园散步吧。",
    "mixed 中英 text with emoji 🎉👍🏽 and 🇨🇳 flags",
    "rare code points: \u2581 (the SentencePiece space mark) \u0000 \ufeff \U0010fffd",
    "<eod> <s> </s> <pad> <unk> written as plain text",
    "\n",
    " ",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    Tokenizer.train(CORPUS, 400, path)
    return Tokenizer.load(path)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_ids_and_vocab_size(tok):
    assert tok.vocab_size == 400
    assert [tok.sp.id_to_piece(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "<pad>", "<eod>"]
    assert tok.eod_id == 4 and tok.pad_id == 3
    # text never encodes to <eod>, even when it spells it; decoding <eod> gives nothing
    assert tok.eod_id not in tok.encode("a <eod> b")
    assert tok.decode(tok.encode("ab") + [tok.eod_id] + tok.encode("cd")) == "abcd"


def test_newline_is_one_piece_and_training_is_deterministic(tok):
    assert len(tok.encode("\n")) == 1
    again = Tokenizer.train(CORPUS, 400)
    assert again.model_proto == tok.model_proto


def test_loaded_equals_trained(tok, tmp_path):
    path = tmp_path / "t.model"
    trained = Tokenizer.train(CORPUS, 400, path)
    text = CORPUS[1].text
    assert Tokenizer.load(path).encode(text) == trained.encode(text)


def test_vocab_too_large_for_corpus():
    one_line_error(lambda: Tokenizer.train(CORPUS, 20000), "model.vocab_size = 20000", "too large")


def test_vocab_below_byte_pieces_and_specials():
    one_line_error(lambda: Tokenizer.train(CORPUS, 200), "model.vocab_size = 200", str(MIN_VOCAB))


def test_vocab_too_small_for_characters():
    many_chars = [Document("zh", "".join(chr(0x4E00 + i) for i in range(400)) + "\n")]
    one_line_error(lambda: Tokenizer.train(many_chars, MIN_VOCAB), f"model.vocab_size = {MIN_VOCAB}", "too small")


def test_load_missing_file(tmp_path):
    one_line_error(lambda: Tokenizer.load(tmp_path / "nope.model"), "nope.model")
