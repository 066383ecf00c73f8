#!/usr/bin/env python
"""Download the wiki-18 corpus and the prebuilt e5 Flat index (Search-R1's HF datasets) and make a
servable index folder; then `bash retrieval_launch.sh --config configs/retriever/wiki18.yaml`.

Needs internet access to huggingface.co (about 14 GB corpus + 65 GB index). Offline, copy the hub
files (wiki-18.jsonl.gz, part_aa, part_ab) into a folder and pass mirror=/that/folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search_r1.config import die, entry_point, parse_config  # noqa: E402
from search_r1.retrieval.download import DownloadConfig, DownloadError, download_wiki18  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(DownloadConfig, __doc__.split("\n\n")[0], None, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        index_dir = download_wiki18(cfg)
    except DownloadError as exc:  # from a mirror folder nothing is downloaded: a file is missing there
        die(str(exc), 2 if cfg.mirror else 1)
    except ValueError as exc:
        die(str(exc), 2)
    print(f"files in {cfg.raw_dir}" + (f"; servable index: {index_dir}" if index_dir else ""))


if __name__ == "__main__":
    main()
