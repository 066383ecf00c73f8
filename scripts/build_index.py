#!/usr/bin/env python
"""Build (or resume) a retrieval index folder: docstore, dense FAISS index, BM25.

Examples:
  python scripts/build_index.py                                   # the embedded world (MiniLM + bm25s)
  python scripts/build_index.py --config configs/retriever/build_wiki18_e5.yaml faiss_factory=HNSW64
  python scripts/build_index.py corpus=my.jsonl out_dir=outputs/indexes/mine backends=[bm25]
  python scripts/build_index.py backends=[pyserini]                 # + a Lucene BM25 index (requirements/pyserini.txt)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search_r1.config import die, entry_point, parse_config  # noqa: E402
from search_r1.paths import CONFIG_DIR  # noqa: E402
from search_r1.retrieval.build import build_index, read_manifest  # noqa: E402
from search_r1.retrieval.config import BuildConfig  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(
        BuildConfig, __doc__.split("\n")[0], CONFIG_DIR / "retriever" / "build_world.yaml", argv
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        out = build_index(cfg)
    except (FileNotFoundError, ValueError) as exc:  # a missing or malformed corpus, a bad setting
        die(str(exc), 2)
    manifest = read_manifest(out)
    for part in ("docstore", "dense", "bm25", "pyserini"):
        if part in manifest:
            m = manifest[part]
            print(
                f"{part:8s} done  {m.get('passages_per_s', '-')} passages/s  peak RSS {m.get('peak_rss_mib', '-')} MiB"
            )
    print(f"index ready: {out} ({manifest['n_docs']} passages)")


if __name__ == "__main__":
    main()
