"""The reward: verl's ``compute_score`` signature (DESIGN §3), plus a named registry.

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` with the decoded
*response* (the prompt is never scored — the predecessor parsed prompt + response and had to skip
the prompt's example answer). Point verl at it with::

    custom_reward_function.path=search_r1/rewards/score.py custom_reward_function.name=compute_score

and pick a reward with ``custom_reward_function.reward_kwargs.reward=em_format``.

Under verl, ``extra_info`` also carries our agent loop's episode counts (verl's reward loop merges the
loop's ``extra_fields`` into it); ``compute_score`` returns them with the metrics, because verl logs
every key of the returned dict in its validation metrics (docs/rl.md, "Step metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from search_r1.agent.protocol import final_answer
from search_r1.rewards.format import is_valid_format
from search_r1.rewards.metrics import cover_exact_match, exact_match, rouge_l, token_f1

RewardFn = Callable[..., float]

ROLLOUT_COUNTS = ("searches", "retrieval_failures", "invalid_actions")
"""Episode counts :class:`search_r1.rl.agent_loop.SearchAgentLoop` puts in ``extra_fields``."""

REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return deco


@register_reward("em")
def em_reward(metrics: dict[str, float], **_: Any) -> float:
    """The paper's reward: exact match of the final answer."""
    return metrics["em"]


@register_reward("f1")
def f1_reward(metrics: dict[str, float], **_: Any) -> float:
    return metrics["f1"]


@register_reward("em_format")
def em_format_reward(metrics: dict[str, float], format_score: float = 0.2, **_: Any) -> float:
    """EM shaped by format: correct 1 (1 - λ if ill-formed), wrong λ if well-formed else 0."""
    if metrics["em"]:
        return 1.0 if metrics["format_valid"] else 1.0 - format_score
    return format_score if metrics["format_valid"] else 0.0


def golds_of(ground_truth: Any) -> list[str]:
    """verl's ``{"target": [...]}``, a list, or one string → a list of gold answers."""
    if isinstance(ground_truth, dict):
        ground_truth = ground_truth["target"]
    if isinstance(ground_truth, str):
        return [ground_truth]
    return [str(g) for g in ground_truth]


def answer_metrics(answer: str | None, golds: Sequence[str]) -> dict[str, float]:
    return {
        "em": exact_match(answer, golds),
        "cover_em": cover_exact_match(answer, golds),
        "f1": token_f1(answer, golds),
        "rouge_l": rouge_l(answer, golds),
        "has_answer": float(answer is not None),
    }


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    *,
    reward: str = "em",
    format_score: float = 0.2,
    require_think: bool = True,
) -> dict[str, float]:
    """Score one response: ``score`` (the named reward) plus every metric, all floats; plus the
    :data:`ROLLOUT_COUNTS` that ``extra_info`` holds (verl passes them from the agent loop)."""
    metrics = answer_metrics(final_answer(solution_str), golds_of(ground_truth))
    metrics["format_valid"] = float(is_valid_format(solution_str, require_think))
    try:
        fn = REWARDS[reward]
    except KeyError:
        raise ValueError(f"unknown reward {reward!r}; choose from {sorted(REWARDS)}") from None
    counts = {k: float(extra_info[k]) for k in ROLLOUT_COUNTS if extra_info and extra_info.get(k) is not None}
    return {"score": fn(metrics, format_score=format_score), **metrics, **counts}
