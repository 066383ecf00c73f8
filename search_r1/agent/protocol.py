"""The search protocol (DESIGN §4): tags, stop strings, action parsing and observation rendering.

This is the only module that knows the tag grammar; every stage imports it from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, SEARCH_OPEN, SEARCH_CLOSE, INFO_OPEN, INFO_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
STOP_STRINGS = (SEARCH_CLOSE, ANSWER_CLOSE)


class TitledDoc(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...


def format_docs(docs: Sequence[TitledDoc]) -> str:
    """Passages as the predecessor rendered them: ``Doc 1(Title: T) text`` one per line."""
    return "\n".join(f"Doc {i}(Title: {d.title}) {d.text}" for i, d in enumerate(docs, start=1))
