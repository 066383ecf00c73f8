"""Did a run learn? Its reward on the same questions early and late in training, from metrics.jsonl.

A window of steps samples questions as well as responses, and in the embedded world the questions
dominate: one step's mean reward swings between 0.2 and 0.9 with the four questions it draws. A
first-versus-last-window comparison over fresh questions therefore mostly measures the data order
(session 7: the same 16-step GRPO run gave +0.35, -0.08 and -0.09 with three data seeds). The
comparison here is paired instead: train on a fixed set of questions for several epochs, take each
question's mean reward in an early window and in a late one, and judge the mean of the per-question
differences against its standard error across questions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def read_metrics(run_dir: Path) -> list[dict]:
    """The per-step metrics a run logged (``<run>/metrics.jsonl``), in step order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def reward_by_question(metrics: list[dict]) -> dict[str, float]:
    """Mean reward of each question over the given steps. A step logs its prompts' uids and then
    every sample's reward, ``rollout.n`` consecutive samples per prompt."""
    rewards: dict[str, list[float]] = defaultdict(list)
    for m in metrics:
        uids, samples = m["data/uids"], m["reward/samples"]
        n = len(samples) // len(uids)
        for k, uid in enumerate(uids):
            rewards[uid].extend(samples[k * n : (k + 1) * n])
    return {uid: float(np.mean(r)) for uid, r in rewards.items()}


@dataclass
class PairedGain:
    """Reward on the questions seen in both windows: early mean, late mean, the mean per-question
    gain and its standard error across those questions."""

    early: float
    late: float
    gain: float
    se: float
    questions: int

    def __str__(self) -> str:
        return (
            f"reward on {self.questions} questions {self.early:.3f} -> {self.late:.3f}: "
            f"gain {self.gain:+.3f} ± {self.se:.3f} (SE over questions)"
        )


def paired_gain(metrics: list[dict], early: slice, late: slice) -> PairedGain:
    """Compare the steps ``early`` and ``late`` on the questions both contain."""
    a, b = reward_by_question(metrics[early]), reward_by_question(metrics[late])
    shared = sorted(a.keys() & b.keys())
    if len(shared) < 2:
        raise ValueError(
            f"the windows share {len(shared)} questions; train on fewer questions for more epochs"
        )
    x, y = np.array([a[u] for u in shared]), np.array([b[u] for u in shared])
    diff = y - x
    return PairedGain(
        float(x.mean()),
        float(y.mean()),
        float(diff.mean()),
        float(diff.std(ddof=1) / np.sqrt(len(diff))),
        len(diff),
    )
