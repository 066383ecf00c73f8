"""Build (or resume) an index folder from a corpus: docstore, dense FAISS index, BM25.

Layout of an index folder::

    manifest.json        what was built, from which corpus (fingerprint), with which settings
    ids.bin, contents.bin, *.off.npy   the docstore (row → document)
    dense/               embeddings.bin (memmap), progress.json, index.faiss
    bm25/                bm25s matrices + tokenizer vocabulary
    lucene/              Lucene BM25 index for backend=pyserini (optional: requirements/pyserini.txt)

Each part is skipped when the manifest says it is done for the same corpus and settings, so
re-running a build (or ``retrieval_launch.sh``) is cheap, and an interrupted dense build resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from dataclasses import asdict
from pathlib import Path

from search_r1.data.corpus import iter_corpus
from search_r1.paths import HOME
from search_r1.retrieval.config import BuildConfig, EncoderConfig
from search_r1.retrieval.docstore import write_docstore

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LUCENE_DIR = "lucene"  # the pyserini part's Lucene index, inside the index folder
BACKENDS = ("dense", "bm25", "pyserini")


def corpus_fingerprint(path: Path) -> dict:
    """Size plus a hash of the first and last MiB: cheap on a 14 GB corpus, catches any re-generation."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(size - (1 << 20))
            h.update(fh.read())
    return {"size": size, "sha256_head_tail": h.hexdigest()}


def read_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out_dir / MANIFEST)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    ``VmHWM`` is reset by exec; ``ru_maxrss`` is not (a child forked from a big parent reports the
    parent's peak), so it is only the fallback where /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stats(t0: float, n: int) -> dict:
    secs = time.perf_counter() - t0
    return {
        "seconds": round(secs, 2),
        "passages_per_s": round(n / max(secs, 1e-9), 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def ensure_docstore(corpus: Path, out_dir: Path, manifest: dict) -> int:
    """Write the docstore unless the manifest already has one for this corpus; returns the row count."""
    fp = corpus_fingerprint(corpus)
    if manifest.get("fingerprint") == fp and manifest.get("docstore", {}).get("done"):
        return int(manifest["n_docs"])
    if manifest.get("fingerprint") not in (None, fp):
        log.warning("corpus changed since the last build: rebuilding every part")
        for key in BACKENDS:
            manifest.pop(key, None)
    t0 = time.perf_counter()
    n = write_docstore(iter_corpus(corpus), out_dir)
    manifest.update(corpus=str(corpus), fingerprint=fp, n_docs=n, docstore={"done": True, **_stats(t0, n)})
    _write_manifest(out_dir, manifest)
    return n


def build_index(cfg: BuildConfig) -> Path:
    """Build every backend in ``cfg.backends`` that is not already built with the same settings."""
    corpus, out_dir = Path(cfg.corpus), Path(cfg.out_dir)
    unknown = set(cfg.backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    if not corpus.exists():
        raise FileNotFoundError(f"corpus not found: {corpus}")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {} if cfg.force else read_manifest(out_dir)
    n = ensure_docstore(corpus, out_dir, manifest)

    if "dense" in cfg.backends:
        from search_r1.retrieval import dense

        settings = {
            "encoder": asdict(cfg.encoder),
            "factory": cfg.faiss_factory,
            "dtype": cfg.embedding_dtype,
        }
        settings["encoder"].pop("device")  # where it ran does not change the vectors' meaning
        settings["encoder"].pop("batch_size")
        prev = manifest.get("dense", {})
        if not (prev.get("done") and prev.get("settings") == settings):
            import torch

            from search_r1.retrieval.embedding_cache import EmbeddingCache
            from search_r1.retrieval.encoder import Encoder

            if cfg.torch_threads > 0:
                torch.set_num_threads(cfg.torch_threads)

            t0 = time.perf_counter()
            encoder = Encoder(cfg.encoder)
            fingerprint = {"corpus": manifest["fingerprint"], **settings}
            fingerprint.pop("factory")  # a new factory string reuses the embeddings
            emb = dense.encode_corpus(
                iter_corpus(corpus),
                n,
                encoder,
                out_dir / "dense",
                chunk_size=cfg.chunk_size,
                dtype=cfg.embedding_dtype,
                fingerprint=fingerprint,
                cache=EmbeddingCache(HOME / cfg.embedding_cache, settings["encoder"])
                if cfg.embedding_cache
                else None,
            )
            dense.build_faiss(
                emb,
                cfg.faiss_factory,
                out_dir / "dense" / dense.INDEX_FILE,
                train_size=cfg.train_size,
                chunk_size=cfg.chunk_size,
            )
            manifest["dense"] = {"done": True, "settings": settings, "dim": encoder.dim, **_stats(t0, n)}
            _write_manifest(out_dir, manifest)

    if "bm25" in cfg.backends:
        from search_r1.retrieval.bm25 import build_bm25

        settings = {"stopwords": cfg.bm25_stopwords}
        prev = manifest.get("bm25", {})
        if not (prev.get("done") and prev.get("settings") == settings):
            t0 = time.perf_counter()
            build_bm25(iter_corpus(corpus), out_dir / "bm25", stopwords=cfg.bm25_stopwords)
            manifest["bm25"] = {"done": True, "settings": settings, **_stats(t0, n)}
            _write_manifest(out_dir, manifest)

    if "pyserini" in cfg.backends:
        from search_r1.retrieval.lucene import INDEX_SETTINGS, build_lucene

        prev = manifest.get("pyserini", {})
        if not (prev.get("done") and prev.get("settings") == INDEX_SETTINGS):
            t0 = time.perf_counter()
            counters = build_lucene(iter_corpus(corpus), n, out_dir / LUCENE_DIR, threads=cfg.lucene_threads)
            manifest["pyserini"] = {
                "done": True,
                "settings": INDEX_SETTINGS,
                "counters": counters,
                **_stats(t0, n),
            }
            _write_manifest(out_dir, manifest)
    return out_dir


def import_faiss_index(corpus: Path, faiss_file: Path, out_dir: Path, encoder: EncoderConfig) -> Path:
    """Make an index folder around a prebuilt FAISS index (e.g. wiki-18 e5 Flat) and its corpus.

    The FAISS file is hard-linked (or moved) into ``out_dir/dense``; rows must be in corpus order.
    """
    from search_r1.retrieval import dense

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out_dir)
    n = ensure_docstore(corpus, out_dir, manifest)
    target = out_dir / "dense" / dense.INDEX_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            target.hardlink_to(faiss_file)
        except OSError:
            faiss_file.replace(target)
    index = dense.read_faiss_index(target)  # memory-mapped: only ntotal and d are needed here
    if index.ntotal != n:
        raise ValueError(f"{faiss_file} holds {index.ntotal} vectors but the corpus has {n} rows")
    settings = {"encoder": asdict(encoder), "factory": "prebuilt", "dtype": "float32"}
    settings["encoder"].pop("device")
    settings["encoder"].pop("batch_size")
    manifest["dense"] = {
        "done": True,
        "settings": settings,
        "dim": int(index.d),
        "imported_from": str(faiss_file),
    }
    _write_manifest(out_dir, manifest)
    return out_dir
