"""Download the seven QA datasets (FlashRAG collection) and write verl parquet.

    python scripts/prepare_data.py                                  # all seven, train = nq + hotpotqa
    python scripts/prepare_data.py sources=[nq,bamboogle] download=false raw_dir=/data/flashrag

Offline machines: put ``<name>/<split>.jsonl`` under ``raw_dir`` and pass ``download=false``.
"""

from __future__ import annotations

from search_r1.config import die, entry_point, parse_config
from search_r1.data.builders import DataDownloadError, PrepareConfig, build


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PrepareConfig, __doc__.splitlines()[0], None, argv)
    try:
        build(cfg)
    except DataDownloadError as exc:  # download=false: a raw file is missing (bad input); else offline
        die(str(exc), 1 if cfg.download else 2)
    except ValueError as exc:  # an unknown dataset name, a raw file that is not FlashRAG JSONL
        die(str(exc), 2)


if __name__ == "__main__":
    main()
