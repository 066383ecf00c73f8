"""Training health: collapse detection over the per-step metrics of either trainer.

A search agent under RL can degenerate in ways the reward hides for a while: it stops searching and
answers from memory, its sampling entropy falls towards zero (every sample the same response), or it
stops following the tag grammar. :class:`HealthMonitor` follows one metric per failure mode. A
measure's *early* value is its mean over the run's first ``early_steps`` steps; its *current* value
is its mean over the last ``recent_steps`` steps after those, so a single unlucky batch does not
fire. A measure collapses when its current value falls below its fraction of the early value (or,
for format validity, below an absolute floor). Each collapse prints one warning line when it starts;
the single-machine trainer can also end the run on it (``trainer.stop_on_collapse``), verl's only
warns (docs/rl.md, "Training health").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from search_r1.rl.config import HealthConfig

TRAINER_KEYS = {
    "searches/question": "rollout/searches_per_question",
    "entropy": "actor/entropy",
    "format validity": "rollout/format_valid",
}
"""Measure name -> metric key of the single-machine trainer's ``metrics.jsonl``."""

VERL_KEYS = {
    "searches/question": "search_r1/searches_per_question",
    "entropy": "actor/entropy",
    "format validity": "search_r1/format_valid",
}
"""Measure name -> step-metric key of the verl trainer (``search_r1.rl.verl_main``)."""


@dataclass(frozen=True)
class Collapse:
    """One measure below its threshold at ``step``: what fell, from where, to where."""

    measure: str
    key: str
    step: int
    early: float
    current: float
    threshold: float
    rule: str

    def message(self) -> str:
        return (
            f"[health] WARNING step {self.step}: {self.measure} ({self.key}) collapsed: current "
            f"{self.current:.3g} vs early {self.early:.3g}, below {self.threshold:.3g} ({self.rule})"
        )


class HealthMonitor:
    """Follows searches/question, entropy and format validity step by step (``keys`` names their
    metrics) and reports the collapses of :class:`~search_r1.rl.config.HealthConfig`'s rule.

    ``history`` replays earlier steps' metrics silently, so a resumed run keeps its early values.
    """

    def __init__(self, cfg: HealthConfig, keys: Mapping[str, str], history: Iterable[Mapping[str, Any]] = ()):
        if cfg.early_steps < 1 or cfg.recent_steps < 1:
            raise ValueError("health.early_steps and health.recent_steps must be at least 1")
        self.cfg = cfg
        self.keys = dict(keys)
        self.fractions = {
            "searches/question": cfg.searches_fraction,
            "entropy": cfg.entropy_fraction,
            "format validity": cfg.format_valid_fraction,
        }
        self.values: dict[str, list[float]] = {m: [] for m in self.keys}
        self.active: dict[str, Collapse] = {}
        for metrics in history:
            self.check(metrics, int(metrics["step"]), quiet=True)

    def check(self, metrics: Mapping[str, Any], step: int, quiet: bool = False) -> list[Collapse]:
        """Add one step's metrics; return every measure collapsed now, printing a warning for each
        collapse that starts at this step (a measure that stays down warns once, again only after it
        recovered). A measure missing from ``metrics`` is left as it was."""
        for measure, key in self.keys.items():
            if metrics.get(key) is None:
                continue
            self.values[measure].append(float(metrics[key]))
            found = self._judge(measure, step)
            if found is None:
                self.active.pop(measure, None)
            elif measure not in self.active:
                self.active[measure] = found
                if not quiet:
                    print(found.message(), flush=True)
        return list(self.active.values())

    def _judge(self, measure: str, step: int) -> Collapse | None:
        k, values = self.cfg.early_steps, self.values[measure]
        if len(values) <= k:
            return None
        early = fmean(values[:k])
        current = fmean(values[max(k, len(values) - self.cfg.recent_steps) :])
        fraction = self.fractions[measure]
        key = self.keys[measure]
        if fraction > 0 and current < fraction * early:
            return Collapse(measure, key, step, early, current, fraction * early, f"{fraction:g} x early")
        floor = self.cfg.format_valid_floor if measure == "format validity" else 0.0
        if floor > 0 and current < floor:
            return Collapse(measure, key, step, early, current, floor, "health.format_valid_floor")
        return None


def stop_summary(collapses: Iterable[Collapse], step: int, total_steps: int) -> str:
    """The line a run stopped by ``trainer.stop_on_collapse`` ends with: where, and which measures."""
    why = "; ".join(
        f"{c.measure} {c.current:.3g} (early {c.early:.3g}, threshold {c.threshold:.3g})" for c in collapses
    )
    return (
        f"[health] stopped at step {step} of {total_steps} (trainer.stop_on_collapse): collapse of {why}; "
        "the step's checkpoint is saved"
    )
