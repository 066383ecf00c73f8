"""The embedded world written in the hub's file formats: the offline mirror of the CPU rehearsal.

    python -m search_r1.world.mirror out=outputs/rehearsal/mirror

At paper scale the data come from two hub datasets: FlashRAG's QA JSONL (``<name>/<split>.jsonl``
rows ``{"id", "question", "golden_answers"}``) and Search-R1's wiki-18 release (``wiki-18.jsonl.gz``
plus a FAISS ``IndexFlatIP`` split into ``part_aa``/``part_ab``). Both download scripts accept a
local mirror folder with those file names. This module writes such a folder from the embedded world
(its questions as ``nq``, its corpus, and its dense index's Flat FAISS file), so the rehearsal runs
the real ``prepare_data`` and ``download_wiki18`` import code, offline, on data a tiny model can
answer. The index rows are the corpus rows, in order, as in the real release.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.config import die, entry_point, parse_config
from search_r1.data.schema import read_parquet
from search_r1.paths import HOME, INDEX_DIR, WORLD_DIR
from search_r1.retrieval.download import CORPUS_FILE, INDEX_PARTS


@dataclass
class MirrorConfig:
    out: str = field(default=str(HOME / "rehearsal" / "mirror"), metadata={"help": "mirror folder to write"})
    world_dir: str = field(default=str(WORLD_DIR), metadata={"help": "the embedded world (parquet splits)"})
    index_dir: str = field(
        default=str(INDEX_DIR / "world"), metadata={"help": "the world's index (its dense Flat FAISS file)"}
    )
    dataset: str = field(default="nq", metadata={"help": "FlashRAG dataset name the questions pose as"})
    splits: list[str] = field(default_factory=lambda: ["train", "test"], metadata={"help": "world splits"})


def write_questions(world_dir: Path, out: Path, dataset: str, splits: list[str]) -> list[Path]:
    """Each world split as ``<out>/flashrag/<dataset>/<split>.jsonl`` in FlashRAG's row format."""
    paths = []
    for split in splits:
        path = out / "flashrag" / dataset / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for i, row in enumerate(read_parquet(world_dir / f"{split}.parquet")):
                golds = row["reward_model"]["ground_truth"]["target"]
                record = {
                    "id": f"{split}_{i}",
                    "question": row["extra_info"]["question"],
                    "golden_answers": golds,
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def write_wiki18(corpus: Path, faiss_file: Path, out: Path) -> list[Path]:
    """The corpus gzipped and the Flat index split in two byte ranges, under the release's names."""
    import faiss

    index = faiss.read_index(str(faiss_file))
    if not isinstance(index, faiss.IndexFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"{faiss_file} is not a Flat inner-product index, as the wiki-18 release is")
    out.mkdir(parents=True, exist_ok=True)
    with corpus.open("rb") as src, gzip.open(out / CORPUS_FILE, "wb") as dst:
        shutil.copyfileobj(src, dst)
    data = faiss_file.read_bytes()
    half = len(data) // 2
    for name, chunk in zip(INDEX_PARTS, (data[:half], data[half:]), strict=True):
        (out / name).write_bytes(chunk)
    return [out / CORPUS_FILE, *(out / name for name in INDEX_PARTS)]


def write_mirror(cfg: MirrorConfig) -> list[Path]:
    from search_r1.retrieval import dense

    out, index_dir = Path(cfg.out), Path(cfg.index_dir)
    corpus = Path(json.loads((index_dir / "manifest.json").read_text())["corpus"])
    questions = write_questions(Path(cfg.world_dir), out, cfg.dataset, cfg.splits)
    return questions + write_wiki18(corpus, index_dir / "dense" / dense.INDEX_FILE, out / "wiki18")


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(MirrorConfig, __doc__.splitlines()[0], None, argv)
    try:
        paths = write_mirror(cfg)
    except (OSError, ValueError, KeyError) as exc:
        die(f"cannot write the mirror: {exc}", code=2)
    print(f"[mirror] {len(paths)} files in {cfg.out}")


if __name__ == "__main__":
    main()
