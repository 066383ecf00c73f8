"""Dynamic sampling (DAPO's group filtering, verl's ``algorithm.filter_groups``) for the single-machine trainer.

GRPO's advantage of a sample is its reward against the other samples of its group (the same
question's ``rollout.n`` samples). A group whose samples all score the same, every one right or
every one wrong, has zero advantage on every token: it adds no policy gradient, yet it still takes
rollout and update time and counts in a token-mean loss. Dynamic sampling drops such groups after
scoring and rolls out more questions until the step has ``data.train_batch_size`` groups that vary.

Everything here is a pure function of its arguments (the rollout comes in as ``generate``), so the
questions a step draws depend only on the step, the attempt and ``data.seed``: resume stays exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from search_r1.agent.rollout import RolloutStats
from search_r1.agent.trajectory import Trajectory

if TYPE_CHECKING:  # search_r1.rl.config imports this module to check the metric
    from search_r1.rl.config import DataConfig, FilterGroupsConfig

METRICS = ("reward", "score", "em", "cover_em", "f1", "rouge_l", "has_answer", "format_valid")
"""What ``algorithm.filter_groups.metric`` may name, as under verl: ``reward`` is the reward the
advantage is computed from (verl's canonical reward; our ``compute_score``'s ``score``), the others
are the keys of ``compute_score``'s result, which verl's reward loop hands on as ``reward_extra_info``."""

REFILL_STREAM = 0xD1F5
"""Entropy word of the refill order's seed: ``[data.seed, REFILL_STREAM, step]`` differs from
``batch_indices``'s ``[data.seed, epoch]``, so refills are a stream of their own."""


def check_metric(metric: str) -> None:
    """Refuse a metric that no sample carries: under verl it would fail only once rollouts finish."""
    if metric in METRICS:
        return
    hint = ""
    if metric == "acc":  # DAPO's name; verl sets it only for a reward function that returns a float
        hint = " (DAPO's 'acc' is our 'em': compute_score returns a dict without 'acc', so verl would not find it)"
    raise ValueError(
        f"algorithm.filter_groups.metric: unknown metric {metric!r}{hint}; choose from {list(METRICS)}"
    )


def sample_values(scored: Sequence[dict[str, float]], metric: str) -> list[float]:
    """Each sample's value of ``metric`` from its ``compute_score`` result."""
    key = "score" if metric == "reward" else metric
    return [float(s[key]) for s in scored]


def varying_groups(values: Sequence[float], n: int) -> list[bool]:
    """For each group of ``n`` consecutive samples, whether to keep it: its values are not all equal
    (std > 0, tested as inequality so that rounding in a mean cannot keep a constant group), or it has
    one sample, which has nothing to differ from (verl and DAPO keep those too)."""
    groups = [values[i : i + n] for i in range(0, len(values), n)]
    return [len(g) == 1 or max(g) != min(g) for g in groups]


def refill_rows(
    step: int, attempt: int, first: Sequence[int], n_rows: int, batch_size: int, seed: int, shuffle: bool
) -> list[int]:
    """Rows of refill ``attempt`` (1, 2, ...) of ``step``, whose first generation batch was ``first``.

    The step's refill order is a permutation of all rows seeded by ``(seed, step)`` (with
    ``shuffle=False``: the rows after the step's own in file order); rows of ``first`` are removed
    and attempt ``k`` takes the ``k``-th slice of ``batch_size``. So no question is drawn twice in one
    step, refills never shift the epoch order of later steps (``batch_indices`` is untouched), and
    the result depends on nothing but the arguments. Empty once the step has drawn every row."""
    if shuffle:
        order = np.random.default_rng([seed, REFILL_STREAM, step]).permutation(n_rows).tolist()
    else:
        order = [(step * batch_size + j) % n_rows for j in range(n_rows)]
    drawn = set(first)
    fresh = [i for i in order if i not in drawn]
    return fresh[(attempt - 1) * batch_size : attempt * batch_size]


@dataclass
class Generation:
    """One generation batch: the rows rolled out, ``n`` trajectories per row (prompt-major) and
    their ``compute_score`` results."""

    rows: list[int]
    trajectories: list[Trajectory]
    scored: list[dict[str, Any]]
    stats: RolloutStats = field(default_factory=RolloutStats)


class NotEnoughGroups(RuntimeError):
    """The step reached ``max_num_gen_batches`` (or drew every question) with fewer varying groups
    than ``train_batch_size``; verl's DAPO trainer raises here too rather than train on fewer."""


@dataclass
class StepDraw:
    """What dynamic sampling drew for one step."""

    gens: list[Generation]
    kept: list[tuple[int, int]]  # (generation batch, group) of each group trained on, in draw order
    found: int  # groups whose metric varies, the surplus beyond train_batch_size included
    dropped_all_correct: int  # constant groups whose every sample has em 1
    dropped_all_wrong: int  # constant groups whose every sample has em 0
    dropped: int  # every constant group (a constant metric other than em can drop a mixed-em group)

    def trained(self, n: int) -> Generation:
        """The kept groups as one generation batch. Its rollout statistics are those of the
        trained-on trajectories, except the retrieval failures: the sum over every generation batch,
        so an outage still shows even when the groups it spoiled were dropped."""
        rows, trajs, scored = [], [], []
        for g, pos in self.kept:
            gen = self.gens[g]
            rows.append(gen.rows[pos])
            trajs += gen.trajectories[pos * n : (pos + 1) * n]
            scored += gen.scored[pos * n : (pos + 1) * n]
        stats = dataclasses.replace(
            RolloutStats.of(trajs), retrieval_failures=sum(g.stats.retrieval_failures for g in self.gens)
        )
        return Generation(rows, trajs, scored, stats)

    def metrics(self, uid_of_row: Callable[[int], str]) -> dict[str, Any]:
        return {
            "dynamic_sampling/gen_batches": len(self.gens),
            "dynamic_sampling/kept_groups": self.found,
            "dynamic_sampling/surplus_groups": self.found - len(self.kept),
            "dynamic_sampling/dropped_groups": self.dropped,
            "dynamic_sampling/dropped_all_correct": self.dropped_all_correct,
            "dynamic_sampling/dropped_all_wrong": self.dropped_all_wrong,
            "dynamic_sampling/drawn_uids": [uid_of_row(i) for g in self.gens for i in g.rows],
        }


def draw_step(
    fg: FilterGroupsConfig,
    data: DataConfig,
    step: int,
    first: Sequence[int],
    n_rows: int,
    n: int,
    generate: Callable[[list[int], int], Generation],
) -> StepDraw:
    """Generate batches for one step until ``data.train_batch_size`` groups vary in ``fg.metric``.

    ``generate(rows, attempt)`` rolls out and scores ``rows`` (attempt 0 is ``first``, the step's
    ordinary batch; refills come from :func:`refill_rows`). Varying groups are kept in draw order and
    those beyond the batch size are dropped. After ``fg.max_num_gen_batches`` batches (<= 0: no limit)
    or once every question was drawn, a shortfall raises :class:`NotEnoughGroups`, as verl's DAPO
    trainer does ("Generated too many"); training on fewer groups would silently shrink the batch."""
    batch_size, metric, limit_n = data.train_batch_size, fg.metric, fg.max_num_gen_batches
    gens: list[Generation] = []
    kept: list[tuple[int, int]] = []
    correct = wrong = dropped = 0
    rows = list(first)
    while True:
        gen = generate(rows, len(gens))
        gens.append(gen)
        values, em = sample_values(gen.scored, metric), sample_values(gen.scored, "em")
        for pos, keep in enumerate(varying_groups(values, n)):
            if keep:
                kept.append((len(gens) - 1, pos))
                continue
            dropped += 1
            group_em = em[pos * n : (pos + 1) * n]
            correct += all(e == 1 for e in group_em)
            wrong += all(e == 0 for e in group_em)
        if len(kept) >= batch_size:
            break
        limit = 0 < limit_n <= len(gens)
        rows = (
            [] if limit else refill_rows(step, len(gens), first, n_rows, batch_size, data.seed, data.shuffle)
        )
        if not rows:
            why = (
                f"max_num_gen_batches={limit_n} reached; raise it (<= 0: no limit) or"
                if limit
                else "every training question was drawn in this step;"
            )
            raise NotEnoughGroups(
                f"step {step}: dynamic sampling (algorithm.filter_groups) found {len(kept)} of {batch_size} "
                f"groups whose {metric!r} varies in {len(gens)} generation batches: {why} train on "
                "questions the policy solves only sometimes (python -m search_r1.rl.select)"
            )
    return StepDraw(gens, kept[:batch_size], len(kept), correct, wrong, dropped)
