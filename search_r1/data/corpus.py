"""The corpus format (DESIGN §3): JSONL, one passage a line.

Accepted rows: ``{"id", "contents": "\\"Title\\"\\npassage text"}`` (the predecessor's wiki-18 format)
or ``{"id", "title", "text"}``. Row order is index order for dense indexes. A malformed row raises
:class:`CorpusError` naming the file and the 1-based line, never a silent skip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class CorpusError(ValueError):
    """A corpus row that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Doc:
    id: str
    contents: str  # '"Title"\ntext' — what the retriever API returns

    @property
    def title(self) -> str:
        return split_contents(self.contents)[0]

    @property
    def text(self) -> str:
        return split_contents(self.contents)[1]


def make_contents(title: str, text: str) -> str:
    """The wiki-18 ``contents`` string for a title and a passage."""
    return f'"{title}"\n{text}'


def split_contents(contents: str) -> tuple[str, str]:
    """``'"Title"\\ntext'`` → ``("Title", "text")``; contents without a title line give ``("", contents)``."""
    head, sep, rest = contents.partition("\n")
    if not sep:
        return "", contents
    return head.strip().strip('"'), rest


def parse_row(row: object, where: str) -> Doc:
    if not isinstance(row, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("id"), str | int) or isinstance(row["id"], bool):
        raise CorpusError(f"{where}: needs an 'id' (a string or an integer), got {row.get('id')!r}")
    if isinstance(row.get("contents"), str):
        return Doc(str(row["id"]), row["contents"])
    if isinstance(row.get("text"), str):
        return Doc(str(row["id"]), make_contents(str(row.get("title", "")), row["text"]))
    raise CorpusError(f"{where}: needs a string 'contents', or 'title' and 'text'")


def iter_corpus(path: str | Path) -> Iterator[Doc]:
    """Stream the corpus in file order; raises :class:`CorpusError` on the first bad row."""
    path = Path(path)
    lineno = 0
    with path.open("r", encoding="utf-8") as fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{where}: invalid JSON ({exc.msg})") from None
                yield parse_row(row, where)
        except UnicodeDecodeError as exc:  # decoded a block at a time: the line is approximate
            raise CorpusError(f"{path}: not UTF-8 text near line {lineno + 1} ({exc.reason})") from None


def write_corpus(docs: list[Doc], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"id": d.id, "contents": d.contents}, ensure_ascii=False) + "\n")
