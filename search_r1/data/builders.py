"""FlashRAG-style QA JSONL → verl parquet (DESIGN §3), for the seven datasets of the paper.

A FlashRAG row is ``{"id", "question", "golden_answers": [...], "metadata": {...}}``; the files come
from the ``RUC-NLPIR/FlashRAG_datasets`` collection on the Hugging Face Hub (``<name>/<split>.jsonl``).
Each source gets ``<out>/<name>/<split>.parquet``; ``<out>/train.parquet`` merges the training
sources (the paper: NQ + HotpotQA) and ``<out>/test.parquet`` merges every source's evaluation split.
Group ids are ``<source>-<split>-<row index in that source>``, so they stay unique in merged files.
Prompts are rendered by ``search_r1.agent.prompt`` (one template for data, teacher, RL and eval).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from search_r1.data.schema import QAExample, to_verl_row
from search_r1.paths import HOME

FLASHRAG_REPO = "RUC-NLPIR/FlashRAG_datasets"
# Splits that exist in the collection; the evaluation split is "test" where there is one, else
# "dev" (the multi-hop sets publish no test answers), as in Search-R1.
SPLITS: dict[str, tuple[str, ...]] = {
    "nq": ("train", "dev", "test"),
    "triviaqa": ("train", "dev", "test"),
    "popqa": ("test",),
    "hotpotqa": ("train", "dev"),
    "2wikimultihopqa": ("train", "dev"),
    "musique": ("train", "dev"),
    "bamboogle": ("test",),
}


def eval_split(name: str) -> str:
    return "test" if "test" in SPLITS[name] else "dev"


class DataDownloadError(RuntimeError):
    """A dataset file could not be fetched; the message says where to put it by hand."""


@dataclass
class PrepareConfig:
    sources: list[str] = field(default_factory=lambda: list(SPLITS), metadata={"help": "datasets to build"})
    train_sources: list[str] = field(
        default_factory=lambda: ["nq", "hotpotqa"], metadata={"help": "merged into train.parquet"}
    )
    raw_dir: str = field(default=str(HOME / "data" / "flashrag"), metadata={"help": "FlashRAG JSONL cache"})
    out_dir: str = field(default=str(HOME / "data" / "qa"), metadata={"help": "parquet output folder"})
    template: str = field(default="search_r1", metadata={"help": "prompt template (search_r1.agent.prompt)"})
    download: bool = field(default=True, metadata={"help": "fetch missing JSONL from the Hub"})
    max_per_split: int = field(default=-1, metadata={"help": "first N rows per file (-1 = all)"})


def read_flashrag_jsonl(
    path: Path, data_source: str, split: str, limit: int = -1
) -> tuple[list[QAExample], int]:
    """Examples of one file and how many rows were skipped for having no gold answer."""
    examples, skipped = [], 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if 0 <= limit <= len(examples):
                break
            try:
                row = json.loads(line)
                question, golds = str(row["question"]).strip(), row["golden_answers"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a FlashRAG row ({exc})") from None
            golds = [str(g).strip() for g in ([golds] if isinstance(golds, str) else golds) if str(g).strip()]
            if not golds or not question:
                skipped += 1
                continue
            examples.append(QAExample(str(row.get("id", lineno)), question, golds, data_source, split))
    return examples, skipped


def download(name: str, split: str, raw_dir: Path) -> Path:
    """``<raw_dir>/<name>/<split>.jsonl``, fetched from the FlashRAG collection when missing."""
    target = raw_dir / name / f"{split}.jsonl"
    if target.exists():
        return target
    try:
        from huggingface_hub import hf_hub_download

        got = hf_hub_download(FLASHRAG_REPO, f"{name}/{split}.jsonl", repo_type="dataset", local_dir=raw_dir)
    except Exception as exc:  # offline, no such file, auth, network: all end the same way for the user
        raise DataDownloadError(
            f"could not download {name}/{split}.jsonl from the Hugging Face dataset {FLASHRAG_REPO} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Offline? Copy the file "
            f"to {target} and rerun with download=false."
        ) from None
    return Path(got)


def _rows(examples: list[QAExample], template: str) -> list[dict[str, Any]]:
    return [to_verl_row(ex, i, template) for i, ex in enumerate(examples)]


def _write(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def build(cfg: PrepareConfig, log: Any = print) -> dict[str, Path]:
    """Write every per-source split plus the merged train/test files; returns name → path."""
    unknown = sorted(set(cfg.sources) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; choose from {sorted(SPLITS)}")
    raw, out = Path(cfg.raw_dir), Path(cfg.out_dir)
    written: dict[str, Path] = {}
    merged_train: list[dict[str, Any]] = []
    merged_test: list[dict[str, Any]] = []
    for name in cfg.sources:
        wanted = {eval_split(name)} | ({"train"} if name in cfg.train_sources else set())
        for split in sorted(wanted):
            path = raw / name / f"{split}.jsonl"
            if not path.exists():
                if not cfg.download:
                    raise DataDownloadError(f"missing {path} (download=false)")
                path = download(name, split, raw)
            examples, skipped = read_flashrag_jsonl(path, name, split, cfg.max_per_split)
            rows = _rows(examples, cfg.template)
            written[f"{name}/{split}"] = _write(rows, out / name / f"{split}.parquet")
            log(
                f"[data] {name}/{split}: {len(rows)} rows"
                + (f" ({skipped} without answers skipped)" if skipped else "")
            )
            if split == "train":
                merged_train += rows
            if split == eval_split(name):
                merged_test += rows
    if merged_train:
        written["train"] = _write(merged_train, out / "train.parquet")
    if merged_test:
        written["test"] = _write(merged_test, out / "test.parquet")
    log(f"[data] merged: train {len(merged_train)} rows, test {len(merged_test)} rows -> {out}")
    return written
