"""Paired comparison of two groups on the same questions, with a bootstrap confidence interval.

Two groups' mean EMs over seeds say little when their spreads overlap; what a reader wants to know is
whether one group answers the *same* questions better. Per seed, the difference of the two groups'
scores is taken question by question (``A - B``), and the differences are pooled over seeds. The
interval resamples **questions** (with replacement; a question keeps all its seeds' differences
together, so the test set's sampling is what the interval reflects, not only the seeds'), and takes
the 2.5 and 97.5 percentiles of the resampled means. Bootstrap draws come from a fixed seed, so the
same predictions give the same interval.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

RESAMPLES = 10_000
DEFINITION = (
    "paired per-question difference A - B of EM (each seed of A against the same seed of B, or "
    "against B's single run), pooled over seeds; 95% CI: percentile bootstrap over questions "
    f"({RESAMPLES:,} resamples, a question keeps all its seeds)"
)


class PairingError(ValueError):
    """The two groups were not evaluated on the same questions."""


@dataclass
class PairedDiff:
    mean: float  # mean over seeds and questions of A - B
    low: float  # 95% CI
    high: float
    per_seed: list[float]  # mean difference of each seed
    n_questions: int
    seeds: int
    a_only: int  # (question, seed) pairs A gets right and B wrong, pooled over seeds
    b_only: int

    def to_dict(self) -> dict:
        return asdict(self)


def question_scores(results_json: Path, metric: str = "em") -> dict[str, float]:
    """uid -> ``metric`` of each prediction beside ``results.json`` (its ``predictions.jsonl``)."""
    preds = Path(results_json).parent / "predictions.jsonl"
    scores: dict[str, float] = {}
    with preds.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            row = json.loads(line)
            if row["uid"] in scores:
                raise PairingError(f"{preds}:{line_no}: uid {row['uid']!r} appears twice")
            scores[row["uid"]] = float(row["metrics"][metric])
    return scores


def paired_bootstrap(
    a_runs: list[dict[str, float]], b_runs: list[dict[str, float]], seed: int = 0
) -> PairedDiff:
    """``A - B`` over the questions both were scored on: each of A's runs (seeds) is paired with B's
    run of the same index, or with B's only run when B has one (a deterministic baseline)."""
    if len(b_runs) not in (1, len(a_runs)):
        raise PairingError(f"{len(a_runs)} runs of A cannot be paired with {len(b_runs)} runs of B")
    uids = sorted(a_runs[0])
    for run in [*a_runs, *b_runs]:
        if set(run) != set(uids):
            diff = sorted(set(run) ^ set(uids))[:3]
            raise PairingError(f"the runs were scored on different questions (e.g. {diff})")
    a = np.array([[run[u] for u in uids] for run in a_runs])
    b = np.array([[run[u] for u in uids] for run in b_runs])
    d = a - b  # seeds x questions (b broadcasts when it is one run)
    per_question = d.mean(axis=0)  # each question's difference, averaged over seeds
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uids), size=(RESAMPLES, len(uids)))
    means = per_question[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedDiff(
        mean=float(d.mean()),
        low=float(low),
        high=float(high),
        per_seed=[float(x) for x in d.mean(axis=1)],
        n_questions=len(uids),
        seeds=len(a_runs),
        a_only=int(((a > 0) & (b <= 0)).sum()),
        b_only=int(((b > 0) & (a <= 0)).sum()),
    )


def verdict(diff: PairedDiff, a: str, b: str) -> str:
    """What the interval supports, in plain words."""
    ci = f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
    if diff.low > 0:
        return f"{a} beats {b}: {ci}, the 95% CI lies above 0"
    if diff.high < 0:
        return f"{a} is worse than {b}: {ci}, the 95% CI lies below 0"
    return f"no difference shown between {a} and {b}: {ci}, the 95% CI contains 0"
