"""The RL/eval dataset schema (verl parquet, DESIGN §3), written and read in one place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from search_r1.agent.prompt import render_prompt

REQUIRED_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")


class DatasetError(ValueError):
    """A dataset file or row that does not follow the schema; the message names the file and the row
    (numbered from 0, as pandas and pyarrow number them)."""


@dataclass
class QAExample:
    """One question with its gold answers, before rendering to a verl row."""

    id: str
    question: str
    golden_answers: list[str]
    data_source: str
    split: str
    extra: dict[str, Any] = field(default_factory=dict)


def to_verl_row(ex: QAExample, index: int, template: str = "search_r1") -> dict[str, Any]:
    """The verl row for one example; ``uid`` is ``data_source-split-index`` (unique across sources)."""
    return {
        "data_source": ex.data_source,
        "prompt": render_prompt(ex.question, template),
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": list(ex.golden_answers)}},
        "extra_info": {
            "split": ex.split,
            "index": index,
            "uid": f"{ex.data_source}-{ex.split}-{index}",
            "id": ex.id,
            "question": ex.question,
            **ex.extra,
        },
    }


def write_parquet(examples: Sequence[QAExample], path: str | Path, template: str = "search_r1") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [to_verl_row(ex, i, template) for i, ex in enumerate(examples)]
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def read_parquet(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a verl-schema parquet as dicts, validated; a bad row raises naming file and row."""
    path = Path(path)
    try:
        df = pd.read_parquet(path)
    except ValueError as exc:  # pyarrow's ArrowInvalid: the file is there but is no parquet
        raise DatasetError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing columns {missing}")
    rows = df.to_dict(orient="records")
    for i, row in enumerate(rows):
        validate_row(row, f"{path}: row {i}")
        row["prompt"] = [dict(m) for m in row["prompt"]]
        target = row["reward_model"]["ground_truth"]["target"]
        row["reward_model"]["ground_truth"]["target"] = (
            [target] if isinstance(target, str) else [str(t) for t in target]
        )
    return rows


def validate_row(row: dict[str, Any], where: str) -> None:
    prompt = row.get("prompt")
    if prompt is None or len(prompt) == 0 or not all("role" in m and "content" in m for m in prompt):
        raise DatasetError(f"{where}: 'prompt' must be a non-empty list of chat messages")
    try:
        target = row["reward_model"]["ground_truth"]["target"]
    except (KeyError, TypeError):
        target = None
    if target is None:  # parquet keeps a struct's schema, so a missing field reads back as None
        raise DatasetError(f"{where}: missing reward_model.ground_truth.target")
    if isinstance(target, str):
        target = [target]
    if len(target) == 0:
        raise DatasetError(f"{where}: empty gold answer list")
    if any(t is None or str(t).strip() == "" for t in target):  # str(None) would become the answer "None"
        raise DatasetError(f"{where}: a gold answer is missing or empty: {list(target)!r}")
    extra = row.get("extra_info")
    if not isinstance(extra, dict) or not isinstance(extra.get("question"), str):  # None: absent in this row
        raise DatasetError(f"{where}: extra_info must hold 'question'")


def uid_of(row: dict[str, Any]) -> str:
    """The group id of a verl row: ``extra_info.uid`` when present, else source-split-index."""
    extra = row["extra_info"]
    return str(extra.get("uid") or f"{row['data_source']}-{extra.get('split')}-{extra.get('index')}")
