"""The unit of a search result inside the server (kept import-light: no torch, no FAISS)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    id: str
    contents: str
    score: float
