"""Corpus: built-in Shakespeare split into scenes, file and directory corpora, clear errors."""

from hpcyuan.data.corpus import iter_documents, split_scenes
from helpers import one_line_error


def test_split_scenes_keeps_headings_with_their_scene_and_loses_nothing():
    play = ("# Play\n\n## ACT I\n\n### SCENE I. A room.\n\n**A**  \nHello.\n\n"
            "### SCENE II.\n\nBye.\n\n## ACT II\n\n### SCENE I.\nEnd.")
    scenes = split_scenes(play)
    assert len(scenes) == 3
    assert scenes[0].startswith("# Play\n\n## ACT I\n\n### SCENE I.") and "**A**\nHello." in scenes[0]
    assert scenes[2].startswith("## ACT II\n")
    assert "".join(scenes) == "\n".join(line.rstrip() for line in play.split("\n")) + "\n"


def test_shakespeare_builtin():
    docs = list(iter_documents("shakespeare"))
    assert 700 < len(docs) < 900  # one per scene of 38 plays
    assert docs[0].name.endswith("/000") and docs[0].text.startswith("# ")
    assert sum(len(d.text) for d in docs) > 4_500_000
    assert any("To be, or not to be" in d.text for d in docs if d.name.startswith("hamlet/"))


def test_file_and_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "a.md").write_text("ay\n")
    (tmp_path / "sub" / "c.txt").write_text("sea\n")
    (tmp_path / "skip.json").write_text("{}")
    docs = list(iter_documents(str(tmp_path)))
    assert [d.name for d in docs] == ["a.md", "b.txt", "sub/c.txt"]
    assert [d.text for d in iter_documents(str(tmp_path / "b.txt"))] == ["bee\n"]


def test_missing_path():
    one_line_error(lambda: iter_documents("/no/such/corpus.txt"), "/no/such/corpus.txt")


def test_unknown_name():
    one_line_error(lambda: iter_documents("shakespear"), "shakespear", "shakespeare")


def test_empty_corpus(tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\n")
    one_line_error(lambda: list(iter_documents(str(tmp_path))), str(tmp_path), "no text")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(lambda: list(iter_documents(str(empty))), str(empty))


def test_not_utf8(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok\xff\xfe")
    one_line_error(lambda: list(iter_documents(str(tmp_path))), "bad.txt", "UTF-8")
