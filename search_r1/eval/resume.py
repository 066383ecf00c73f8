"""Resumable evaluation: each question's prediction is appended to the output folder as it finishes.

``predictions.partial.jsonl`` gets one line per finished question (flushed at once), and
``run.json`` the run's name and the config that decides the predictions. Rerun with the same
``out_dir`` after a kill and only the missing questions are evaluated; with greedy decoding the result
is the one an uninterrupted run writes. A question whose trajectory had a failed search counts as
missing, so a rerun after an outage also redoes those. A folder made with a different config is
refused (mixing two configs' predictions would score neither); options that do not change a
prediction (where outputs go, logging, retry policy, the server's address) may differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

PARTIAL_NAME = "predictions.partial.jsonl"
RUN_NAME = "run.json"
_NOT_DECIDING = frozenset(
    {
        "out_dir",
        "name",
        "wandb",
        "wandb_project",
        "samples_in_report",
        "retry_failed_s",
        "retry_rounds",
        "max_failed_share",
        "max_concurrency",
        "retriever_url",
        "retriever_timeout",
        "retriever_token",
        "replay",
        "replay_miss",
    }
)


class ResumeConflict(ValueError):
    """The output folder holds an evaluation made with a different config."""


def deciding(config: dict[str, Any]) -> dict[str, Any]:
    """The part of an eval config that decides its predictions."""
    return {k: v for k, v in config.items() if k not in _NOT_DECIDING}


class PartialPredictions:
    """The predictions finished so far in ``out``; :meth:`add` appends one durably."""

    def __init__(self, out: Path, name: str, config: dict[str, Any]):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / PARTIAL_NAME
        run_file = out / RUN_NAME
        self.done: dict[str, dict[str, Any]] = {}
        if run_file.exists() and self.path.exists():
            earlier = json.loads(run_file.read_text())
            if earlier["config"] != deciding(config):
                keys = sorted(k for k in deciding(config) if earlier["config"].get(k) != config[k])
                raise ResumeConflict(
                    f"{out} holds an evaluation with a different config (differs in: {', '.join(keys)}); "
                    "use another out_dir or remove that folder"
                )
            self.name = earlier["name"]
            self.done = _read(self.path)
            _rewrite(self.path, self.done.values())  # drops a line a kill cut short before appending
        else:
            self.name = name
            self.path.unlink(missing_ok=True)
            run_file.write_text(json.dumps({"name": name, "config": deciding(config)}, indent=2) + "\n")
        self._fh: IO[str] = self.path.open("a", encoding="utf-8")

    @property
    def resuming(self) -> bool:
        return bool(self.done)

    def add(self, prediction: dict[str, Any]) -> None:
        self._fh.write(json.dumps(prediction, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def finish(self) -> None:
        """The run is complete (``predictions.jsonl`` written): the partial record goes."""
        self.close()
        self.path.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """uid -> the last prediction recorded for it, without those that had a failed search.

    A kill can cut the last line short; that line is dropped (its question is simply rerun).
    """
    done: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                p = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[p["uid"]] = p
    return {uid: p for uid, p in done.items() if not p["retrieval_failures"]}


def _rewrite(path: Path, predictions: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for p in predictions:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    tmp.replace(path)
