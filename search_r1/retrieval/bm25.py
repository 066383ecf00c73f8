"""BM25 with ``bm25s`` (pure Python/NumPy, the default): no Java, its sparse matrix memory-mapped at
serve time. Lucene BM25 through pyserini (optional, Java) lives in :mod:`search_r1.retrieval.lucene`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer

from search_r1.data.corpus import Doc

_QUIET = {"show_progress": False}


def _stopwords(name: str) -> str | list[str]:
    return [] if name in ("none", "") else name


def build_bm25(docs: Iterator[Doc], out_dir: Path, *, stopwords: str = "en") -> int:
    """Tokenise and index ``docs`` with bm25s into ``out_dir``; returns the number of documents."""
    tokenizer = Tokenizer(stopwords=_stopwords(stopwords))
    tokens = tokenizer.tokenize([d.contents for d in docs], return_as="tuple", show_progress=True)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    retriever.save(str(out_dir))
    tokenizer.save_vocab(str(out_dir))
    tokenizer.save_stopwords(str(out_dir))
    return len(tokens.ids)


class BM25Searcher:
    """bm25s over corpus rows. Rows that match no query term are dropped (row -1), not padded with noise."""

    def __init__(self, bm25_dir: Path):
        self.retriever = bm25s.BM25.load(str(bm25_dir), mmap=True, **_QUIET)
        self.tokenizer = Tokenizer()
        self.tokenizer.load_vocab(str(bm25_dir))
        self.tokenizer.load_stopwords(str(bm25_dir))
        self.n_docs = int(self.retriever.scores["num_docs"])

    def search_rows(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(queries)
        rows = np.full((n, k), -1, dtype=np.int64)
        scores = np.zeros((n, k), dtype=np.float32)
        if n == 0 or self.n_docs == 0:
            return scores, rows
        kk = min(k, self.n_docs)
        q_ids = self.tokenizer.tokenize(queries, update_vocab=False, return_as="ids", **_QUIET)
        found, s = self.retriever.retrieve(q_ids, k=kk, **_QUIET)
        hit = s > 0
        rows[:, :kk] = np.where(hit, found, -1)
        scores[:, :kk] = np.where(hit, s, 0.0)
        return scores, rows
