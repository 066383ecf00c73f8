"""Corpus coverage audit: the ceiling an agent can reach on a corpus, per data source.

    python -m search_r1.eval audit                          # world test split against the world index
    python -m search_r1.eval audit data=[a.parquet] index_dir=outputs/indexes/wiki18 workers=16

For each question it asks two things: does a gold answer occur anywhere in the corpus, and does
one occur in the top-k passages retrieved for the question text itself, by each backend the index
has (bm25, dense, pyserini) and optionally by a running server (``retriever_url``). "Occurs" is
cover-EM's rule: the normalised gold (``normalize_answer``, as EM) is a whole-word span of the
normalised passage, title line included (the agent sees it). A question counts when any gold does.

The corpus scan reads the index's docstore sequentially in chunks, so memory is one chunk plus the
set of normalised golds: each passage is normalised once, and only at words that start some gold
are the word n-grams of that gold's lengths looked up in the set. ``workers`` processes share the
chunks (wiki-18's 21M passages); the scan stops early once every gold has been seen.

Outputs in ``out_dir``: ``audit.json`` (config, shares per source and overall, timings),
``audit.md`` (the table) and ``questions.jsonl`` (per question: in corpus, rank of the first
answer-bearing passage per backend).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from search_r1.config import to_dict
from search_r1.paths import INDEX_DIR, RUNS_DIR, WORLD_DIR
from search_r1.rewards.metrics import cover_exact_match, normalize_answer

BACKENDS = ("bm25", "dense", "pyserini")

Search = Callable[[list[str], int], list[list[str]]]


@dataclass
class AuditConfig:
    data: list[str] = field(
        default_factory=lambda: [str(WORLD_DIR / "test.parquet")], metadata={"help": "verl parquet file(s)"}
    )
    index_dir: str = field(
        default=str(INDEX_DIR / "world"), metadata={"help": "index folder (build_index / download_wiki18)"}
    )
    backends: list[str] | None = field(
        default=None,
        metadata={"help": "in-process top-k backends: bm25, dense, pyserini; null = every finished part"},
    )
    topk: list[int] = field(
        default_factory=lambda: [1, 3, 10], metadata={"help": "k values of the top-k shares"}
    )
    batch_size: int = field(default=256, metadata={"help": "questions per retrieval call"})
    gpu_devices: list[int] = field(
        default_factory=list, metadata={"help": "GPUs for dense search and the query encoder; [] = CPU"}
    )
    retriever_url: str = field(
        default="", metadata={"help": "also audit the top-k of a running server ('' = none)"}
    )
    retriever_token: str | None = field(
        default=None, metadata={"help": "its bearer token; null = env SEARCH_R1_RETRIEVER_TOKEN"}
    )
    workers: int = field(default=1, metadata={"help": "processes for the corpus scan; 0 = all cores"})
    chunk_size: int = field(default=8192, metadata={"help": "passages per corpus-scan read"})
    max_examples: int = field(default=-1, metadata={"help": "first N rows per file (-1 = all rows)"})
    out_dir: str = field(
        default="", metadata={"help": "output folder ('' = outputs/runs/eval/audit-<index>-<time>)"}
    )


class GoldMatcher:
    """Finds which of a set of normalised golds occur as whole-word spans of a text."""

    def __init__(self, golds: Iterable[str]):
        self.golds = {g for g in golds if g}
        self.lengths: dict[str, set[int]] = defaultdict(set)  # first word -> word counts of golds
        for g in self.golds:
            words = g.split()
            self.lengths[words[0]].add(len(words))

    def find(self, text: str) -> set[str]:
        words = normalize_answer(text).split()
        found = set()
        for i, w in enumerate(words):
            for n in self.lengths.get(w, ()):
                span = " ".join(words[i : i + n])
                if span in self.golds:
                    found.add(span)
        return found


_matcher: GoldMatcher | None = None  # the scan workers' matcher, set once per process


def _init_worker(matcher: GoldMatcher) -> None:
    global _matcher
    _matcher = matcher


def _scan_rows(index_dir: Path, start: int, end: int) -> tuple[int, set[str]]:
    """Golds occurring in docstore rows ``[start, end)``, read with one sequential file read."""
    assert _matcher is not None
    off = np.load(index_dir / "contents.off.npy", mmap_mode="r")[start : end + 1].tolist()
    with (index_dir / "contents.bin").open("rb") as fh:
        fh.seek(off[0])
        blob = fh.read(off[-1] - off[0])
    found: set[str] = set()
    for a, b in pairwise(off):
        found |= _matcher.find(blob[a - off[0] : b - off[0]].decode("utf-8"))
    return end - start, found


def _scan_task(args: tuple[Path, int, int]) -> tuple[int, set[str]]:
    return _scan_rows(*args)


def scan_corpus(index_dir: Path, golds: set[str], workers: int = 1, chunk_size: int = 8192) -> set[str]:
    """The normalised golds that occur in some passage of the index's docstore."""
    n_docs = len(np.load(index_dir / "contents.off.npy", mmap_mode="r")) - 1
    matcher = GoldMatcher(golds)
    tasks = [(index_dir, a, min(a + chunk_size, n_docs)) for a in range(0, n_docs, chunk_size)]
    found: set[str] = set()
    bar = tqdm(total=n_docs, desc="corpus scan", unit="passage", unit_scale=True, dynamic_ncols=True)
    pool = None
    if workers == 1:
        _init_worker(matcher)
        results: Iterable[tuple[int, set[str]]] = map(_scan_task, tasks)
    else:
        pool = multiprocessing.Pool(workers or None, _init_worker, (matcher,))
        results = pool.imap(_scan_task, tasks)
    try:
        for n, got in results:
            found |= got
            bar.update(n)
            bar.set_postfix(golds_found=f"{len(found)}/{len(matcher.golds)}")
            if found == matcher.golds:  # nothing left to learn from the rest of the corpus
                break
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return found


def first_hit_ranks(
    search: Search, questions: list[str], golds: list[list[str]], k: int, batch_size: int, desc: str
) -> list[int | None]:
    """Per question, the 1-based rank of the first top-``k`` passage containing a gold (None: none)."""
    ranks: list[int | None] = []
    with tqdm(total=len(questions), desc=desc, unit="q", dynamic_ncols=True) as bar:
        for s in range(0, len(questions), batch_size):
            for passages, gs in zip(
                search(questions[s : s + batch_size], k), golds[s : s + batch_size], strict=True
            ):
                hit = (r for r, text in enumerate(passages, 1) if cover_exact_match(text, gs))
                ranks.append(next(hit, None))
            bar.update(min(batch_size, len(questions) - s))
    return ranks


def open_backend(cfg: AuditConfig, backend: str) -> Search:
    """The index's ``backend`` loaded in-process by the server's own loader."""
    from search_r1.retrieval.config import ServerConfig
    from search_r1.retrieval.searchers import load_retriever

    sc = ServerConfig(index_dir=cfg.index_dir, backend=backend, gpu_devices=list(cfg.gpu_devices))
    retriever = load_retriever(sc)
    return lambda qs, k: [[h.contents for h in hits] for hits in retriever.retrieve(qs, k)]


def shares(
    sources: list[str], in_corpus: list[bool], ranks: dict[str, list[int | None]], ks: list[int]
) -> dict[str, dict[str, Any]]:
    """Per data source and ``overall``: n, share in the corpus, share in the top-k per backend and k."""
    groups = {s: [i for i, x in enumerate(sources) if x == s] for s in sorted(set(sources))}
    groups["overall"] = list(range(len(sources)))
    out = {}
    for name, idx in groups.items():
        n = len(idx)
        out[name] = {
            "n": n,
            "in_corpus": sum(in_corpus[i] for i in idx) / n,
            "in_topk": {
                b: {str(k): sum(r[i] is not None and r[i] <= k for i in idx) / n for k in ks}
                for b, r in ranks.items()
            },
        }
    return out


def table(by_source: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per data source, a column per (backend, k)."""
    cols = [(b, k) for b, per_k in by_source["overall"]["in_topk"].items() for k in per_k]
    head = ["source", "n", "in corpus", *(f"{b}@{k}" for b, k in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in by_source.items():
        cells = [name, str(m["n"]), f"{m['in_corpus']:.4f}", *(f"{m['in_topk'][b][k]:.4f}" for b, k in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class AuditError(ValueError):
    """A bad input (missing file, unbuilt index part); the message says which."""


def backends_of(cfg: AuditConfig, manifest: dict) -> list[str]:
    """The in-process backends to audit, checked against the index's manifest."""
    if cfg.backends is None:
        return [b for b in BACKENDS if manifest.get(b, {}).get("done")]
    for b in cfg.backends:
        if b not in BACKENDS:
            raise AuditError(f"unknown backend {b!r}; choose from {list(BACKENDS)}")
        if not manifest.get(b, {}).get("done"):
            raise AuditError(f"index {cfg.index_dir} has no finished '{b}' part")
    return list(cfg.backends)


def audit(cfg: AuditConfig) -> Path:
    """Run the audit and write its outputs; returns the output folder."""
    from search_r1.data.schema import read_parquet
    from search_r1.retrieval.build import peak_rss_mib, read_manifest
    from search_r1.rewards.score import golds_of

    index_dir = Path(cfg.index_dir)
    manifest = read_manifest(index_dir)
    if not manifest.get("docstore", {}).get("done"):
        raise AuditError(f"no finished index in {index_dir} (no manifest.json with a docstore)")
    if not cfg.topk or min(cfg.topk) < 1:
        raise AuditError(f"topk must be a non-empty list of k >= 1, got {cfg.topk}")
    missing = [p for p in cfg.data if not Path(p).is_file()]
    if missing:
        raise AuditError(f"dataset file not found: {missing[0]}")
    backends = backends_of(cfg, manifest)
    rows = []
    for p in cfg.data:
        part = read_parquet(p)
        rows += part if cfg.max_examples < 0 else part[: cfg.max_examples]
    if not rows:
        raise AuditError(f"no questions in {cfg.data}")
    questions = [r["extra_info"]["question"] for r in rows]
    sources = [r["data_source"] for r in rows]
    golds = [golds_of(r["reward_model"]["ground_truth"]) for r in rows]
    normalised = [[normalize_answer(g) for g in gs] for gs in golds]

    t0 = time.perf_counter()
    found = scan_corpus(index_dir, {g for gs in normalised for g in gs}, cfg.workers, cfg.chunk_size)
    timings: dict[str, float] = {"corpus_scan_s": round(time.perf_counter() - t0, 2)}
    in_corpus = [any(g in found for g in gs) for gs in normalised]

    k, ranks = max(cfg.topk), {}
    for b in backends:
        t0 = time.perf_counter()
        ranks[b] = first_hit_ranks(open_backend(cfg, b), questions, golds, k, cfg.batch_size, f"top-{k} {b}")
        timings[f"{b}_s"] = round(time.perf_counter() - t0, 2)
    if cfg.retriever_url:
        from search_r1.retrieval.client import RetrieverClient

        with RetrieverClient(cfg.retriever_url, timeout=300.0, token=cfg.retriever_token) as client:
            name = f"server-{client.health()['backend']}"

            def search(qs: list[str], k: int) -> list[list[str]]:
                return [[p.contents for p in ps] for ps in client.retrieve(qs, k)]

            ranks[name] = first_hit_ranks(search, questions, golds, k, cfg.batch_size, f"top-{k} {name}")

    by_source = shares(sources, in_corpus, ranks, sorted(set(cfg.topk)))
    out = Path(cfg.out_dir or RUNS_DIR / "eval" / f"audit-{index_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "config": to_dict(cfg),
        "n_docs": int(manifest["n_docs"]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "by_source": by_source,
        "timings": timings | {"peak_rss_mib": round(peak_rss_mib(), 1)},
    }
    (out / "audit.json").write_text(json.dumps(results, indent=2) + "\n")
    with (out / "questions.jsonl").open("w", encoding="utf-8") as fh:
        for i, r in enumerate(rows):
            record = {
                "uid": r["extra_info"].get("uid"),
                "data_source": sources[i],
                "question": questions[i],
                "golds": golds[i],
                "in_corpus": in_corpus[i],
                "first_hit_rank": {b: rs[i] for b, rs in ranks.items()},
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    (out / "audit.md").write_text(
        f"# Corpus coverage audit\n\nIndex `{index_dir}` ({results['n_docs']} passages); data "
        + ", ".join(f"`{p}`" for p in cfg.data)
        + ".\n\nShare of questions with a gold answer (normalised as EM) as a whole-word span of some "
        "passage of the corpus (`in corpus`), and of the top-k passages retrieved for the question "
        "text by each backend (`backend@k`): the ceiling an agent can reach on this corpus.\n\n"
        + table(by_source)
    )
    return out


def main(argv: list[str] | None = None) -> None:
    from search_r1.config import die, parse_config
    from search_r1.data.schema import DatasetError
    from search_r1.paths import CONFIG_DIR
    from search_r1.retrieval.client import RetrieverError

    description = "Corpus coverage audit: the share of questions whose gold answer the corpus / top-k holds."
    cfg = parse_config(AuditConfig, description, CONFIG_DIR / "eval" / "audit.yaml", argv)
    try:
        out = audit(cfg)
    except (AuditError, DatasetError) as exc:
        die(str(exc), 2)
    except RetrieverError as exc:
        die(f"retriever at {cfg.retriever_url}: {exc}", 2)
    print(table(json.loads((out / "audit.json").read_text())["by_source"]), end="")
    print(f"[audit] -> {out}")
