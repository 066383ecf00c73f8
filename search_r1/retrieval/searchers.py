"""Backends behind the server: dense, BM25, hybrid (RRF), optional cross-encoder reranking.

Row searchers answer ``search_rows(queries, k) -> (scores, rows)`` with ``n × k`` arrays (row -1 =
no hit), one batched call per micro-batch. A :class:`Retriever` turns rows into documents with the
docstore and optionally reranks. Everything here is synchronous and called from one worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from search_r1.retrieval.bm25 import BM25Searcher
from search_r1.retrieval.build import LUCENE_DIR, read_manifest
from search_r1.retrieval.config import EncoderConfig, RerankerConfig, ServerConfig
from search_r1.retrieval.dense import open_engine
from search_r1.retrieval.docstore import DocStore
from search_r1.retrieval.encoder import Encoder, resolve_device, resolve_model
from search_r1.retrieval.hits import Hit
from search_r1.retrieval.lucene import LuceneRetriever

log = logging.getLogger(__name__)


class RowSearcher(Protocol):
    def search_rows(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]: ...


class DenseSearcher:
    """Encode the whole batch in one pass, then one index search."""

    def __init__(self, encoder: Encoder, engine):
        self.encoder, self.engine = encoder, engine

    def search_rows(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        q = self.encoder.encode(queries, is_query=True)
        scores, rows = self.engine.search(q, k)
        return scores.astype(np.float32), rows.astype(np.int64)


class HybridSearcher:
    """Reciprocal-rank fusion of two row searchers: score(d) = Σ 1 / (rrf_k + rank(d)), rank from 1.

    RRF needs no score calibration between BM25 and cosine similarity, which is why it is the default
    way to combine them.
    """

    def __init__(self, a: RowSearcher, b: RowSearcher, *, rrf_k: int = 60, candidates: int = 50):
        self.parts, self.rrf_k, self.candidates = (a, b), rrf_k, candidates

    def search_rows(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        c = max(k, self.candidates)
        ranked = [p.search_rows(queries, c)[1] for p in self.parts]
        n = len(queries)
        scores = np.zeros((n, k), dtype=np.float32)
        rows = np.full((n, k), -1, dtype=np.int64)
        weights = 1.0 / (self.rrf_k + np.arange(1, c + 1, dtype=np.float64))
        for i in range(n):
            fused: dict[int, float] = {}
            for r in ranked:
                for row, w in zip(r[i].tolist(), weights.tolist(), strict=True):
                    if row >= 0:
                        fused[row] = fused.get(row, 0.0) + w
            # ties broken by row id so results are deterministic
            best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            for j, (row, s) in enumerate(best):
                rows[i, j], scores[i, j] = row, s
        return scores, rows


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a sequence-classification model (one logit = relevance)."""

    def __init__(self, cfg: RerankerConfig):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        assert cfg.model is not None
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        path = resolve_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(self.device).eval()
        )

    @torch.inference_mode()
    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        out = []
        for s in range(0, len(pairs), self.cfg.batch_size):
            chunk = pairs[s : s + self.cfg.batch_size]
            batch = self.tokenizer(
                [q for q, _ in chunk],
                [p for _, p in chunk],
                padding=True,
                truncation=True,
                max_length=self.cfg.max_length,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**batch).logits.float()
            out.append(logits[:, 0].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def rerank(self, queries: list[str], hits: list[list[Hit]], k: int) -> list[list[Hit]]:
        pairs = [(q, h.contents) for q, per in zip(queries, hits, strict=True) for h in per]
        scores = self.score(pairs).tolist()
        out, pos = [], 0
        for per in hits:
            rescored = [
                Hit(h.id, h.contents, s) for h, s in zip(per, scores[pos : pos + len(per)], strict=True)
            ]
            pos += len(per)
            out.append(sorted(rescored, key=lambda h: -h.score)[:k])
        return out


class Retriever:
    """What the server calls: ``retrieve(queries, k) -> hits per query``, best first."""

    def __init__(
        self,
        backend: str,
        n_docs: int,
        first_stage: RowSearcher | LuceneRetriever,
        docstore: DocStore | None,
        reranker: CrossEncoderReranker | None,
        candidates: int,
        where: str,
    ):
        self.backend, self.n_docs, self.where = backend, n_docs, where
        self._first, self._docs, self._reranker, self._candidates = (
            first_stage,
            docstore,
            reranker,
            candidates,
        )

    def _first_stage(self, queries: list[str], k: int) -> list[list[Hit]]:
        if isinstance(self._first, LuceneRetriever):
            return self._first.retrieve(queries, k)
        scores, rows = self._first.search_rows(queries, k)
        valid = rows >= 0
        docs = iter(self._docs.get(rows[valid]))  # one vectorised gather for the whole batch
        score_list, valid_list = scores.tolist(), valid.tolist()
        out = []
        for i in range(len(queries)):
            out.append([Hit(*next(docs), score_list[i][j]) for j, ok in enumerate(valid_list[i]) if ok])
        return out

    def retrieve(self, queries: list[str], k: int) -> list[list[Hit]]:
        if not queries:
            return []
        if self._reranker is None:
            return self._first_stage(queries, k)
        hits = self._first_stage(queries, max(k, self._candidates))
        return self._reranker.rerank(queries, hits, k)


def _device(requested: str, gpu_devices: list[int]) -> str:
    """``auto`` means the first GPU the config names, else the CPU: the server never takes a GPU
    nobody gave it (on a training node cuda:0 usually belongs to the trainer)."""
    if requested != "auto":
        return requested
    return f"cuda:{gpu_devices[0]}" if gpu_devices else "cpu"


def _load_lucene(cfg: ServerConfig, reranker: CrossEncoderReranker | None) -> Retriever:
    """pyserini over ``cfg.pyserini_index``, else over ``<index_dir>/lucene`` (build_index
    ``backends=[pyserini]``). The docstore of ``index_dir``, when it has one, gives the contents of
    indexes that store no documents."""
    index_dir = Path(cfg.index_dir)
    manifest = read_manifest(index_dir)
    index = cfg.pyserini_index
    if index is None:
        if not manifest.get("pyserini", {}).get("done"):
            raise FileNotFoundError(
                f"index {index_dir} has no finished 'pyserini' part (build it with backends=[pyserini]) "
                "and no pyserini_index= is set"
            )
        index = str(index_dir / LUCENE_DIR)
    docstore = DocStore(index_dir) if manifest.get("docstore", {}).get("done") else None
    first = LuceneRetriever(index, docstore=docstore, threads=cfg.pyserini_threads)
    return Retriever("pyserini", first.n_docs, first, None, reranker, cfg.reranker.candidates, "lucene")


def load_retriever(cfg: ServerConfig) -> Retriever:
    """Open the backend named by ``cfg.backend`` from ``cfg.index_dir`` (see the build manifest)."""
    reranker = None
    if cfg.reranker.model:
        rr_cfg = replace(cfg.reranker, device=_device(cfg.reranker.device, list(cfg.gpu_devices)))
        reranker = CrossEncoderReranker(rr_cfg)
    if cfg.backend == "pyserini":
        return _load_lucene(cfg, reranker)
    if cfg.backend not in ("dense", "bm25", "hybrid"):
        raise ValueError(f"backend must be dense | bm25 | hybrid | pyserini, got {cfg.backend!r}")
    index_dir = Path(cfg.index_dir)
    manifest = read_manifest(index_dir)
    if not manifest.get("docstore", {}).get("done"):
        raise FileNotFoundError(f"no finished index in {index_dir}: run scripts/build_index.py first")
    needed = ["dense", "bm25"] if cfg.backend == "hybrid" else [cfg.backend]
    for part in needed:
        if not manifest.get(part, {}).get("done"):
            raise FileNotFoundError(
                f"index {index_dir} has no finished '{part}' part (build it with backends=[{part}])"
            )
    parts, where = {}, []
    if "dense" in needed:
        enc_cfg = EncoderConfig(
            **manifest["dense"]["settings"]["encoder"],
            device=_device(cfg.encoder_device, list(cfg.gpu_devices)),
        )
        engine = open_engine(
            index_dir / "dense",
            engine=cfg.engine,
            gpu_devices=list(cfg.gpu_devices),
            search_params=cfg.search_params,
        )
        parts["dense"] = DenseSearcher(Encoder(enc_cfg), engine)
        where.append(engine.where)
    if "bm25" in needed:
        parts["bm25"] = BM25Searcher(index_dir / "bm25")
        where.append("bm25s")
    first = (
        HybridSearcher(parts["dense"], parts["bm25"], rrf_k=cfg.rrf_k, candidates=cfg.hybrid_candidates)
        if cfg.backend == "hybrid"
        else parts[cfg.backend]
    )
    return Retriever(
        cfg.backend,
        int(manifest["n_docs"]),
        first,
        DocStore(index_dir),
        reranker,
        cfg.reranker.candidates,
        "+".join(where),
    )
