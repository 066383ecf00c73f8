"""Passage vectors kept across index builds, keyed by the encoder's settings and each passage's text.

Corpora that share passages need not encode them again: the embedded world, its practice copies
and its unseen test world draw their Wikipedia distractors from one pool, so each index build after
the first finds many of its passages already encoded. A cached vector equals a fresh
encoding up to float32 rounding (the batch a passage was encoded in changes the last bits), as the
rows of a resumed build do.

Layout: ``<root>/<settings hash>/<shard>.npz``, each shard the ``keys`` (a digest per text) and
``vectors`` of one build's new passages. A shard is written whole and renamed into place, so builds
running at once never read a partial one. Off (``embedding_cache: ""``) for large corpora, whose
vectors the index itself already holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np

KEY_BYTES = 16


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:KEY_BYTES]


class EmbeddingCache:
    """The vectors already computed with ``settings`` (the encoder's, without device/batch size)."""

    def __init__(self, root: Path, settings: dict):
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / digest
        self._rows: dict[bytes, np.ndarray] = {}
        for shard in sorted(self.dir.glob("*.npz")):
            with np.load(shard) as data:
                self._rows.update(zip(map(bytes, data["keys"]), data["vectors"], strict=True))

    def lookup(self, texts: list[str]) -> tuple[list[np.ndarray | None], list[int]]:
        """The cached vector of each text (None where absent) and the indices of the absent ones."""
        found = [self._rows.get(text_key(t)) for t in texts]
        return found, [i for i, v in enumerate(found) if v is None]

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        """Keep ``vectors`` (rows of ``texts``) for later builds: one new shard."""
        if not texts:
            return
        keys = [text_key(t) for t in texts]
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{uuid.uuid4().hex}.tmp.npz"
        np.savez(
            tmp, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES), vectors=vectors
        )
        os.replace(tmp, self.dir / f"{uuid.uuid4().hex}.npz")
        self._rows.update(zip(keys, vectors, strict=True))
