"""Filters and balance: which teacher trajectories become training data, and a report of why.

    python -m sft.filters --config configs/sft/tiny.yaml [filters.mix.no_search=0.2 ...]

Per-trajectory checks run in a fixed order and each removal is charged to the first check that
fails, so the report adds up. Then per-question selection (the correct trajectory with the fewest
searches), a cap on questions every sample solved (they teach little), and downsampling towards a
target mix of no-search / one-search / multi-search trajectories.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from search_r1.agent.protocol import INFO_OPEN
from search_r1.agent.trajectory import Trajectory
from search_r1.config import entry_point, parse_config
from search_r1.rewards.format import is_valid_format
from search_r1.rewards.metrics import exact_match
from sft.config import DEFAULT_CONFIG, FilterConfig, SFTConfig
from sft.export import reproducible
from sft.generate import read_trajectories

MIX_KEYS = ("no_search", "one_search", "multi_search")


def mix_key(t: Trajectory) -> str:
    return MIX_KEYS[min(t.num_searches, 2)]


def response_text(t: Trajectory) -> str:
    return "".join(turn.text + turn.observation for turn in t.turns)


def _support_retrieved(t: Trajectory) -> bool:
    support = set(t.extra.get("meta", {}).get("support") or [])
    retrieved = {d for turn in t.turns for d in turn.doc_ids}
    return support <= retrieved or t.num_searches == 0  # an answer from memory needs no evidence


def checks(
    cfg: FilterConfig, tokenizer: PreTrainedTokenizerBase
) -> list[tuple[str, Callable[[Trajectory], bool]]]:
    """``(name, keep?)`` in order; a disabled filter is left out."""
    out: list[tuple[str, Callable[[Trajectory], bool]]] = [
        ("not_answered", lambda t: t.finish_reason == "answer" and t.final_answer is not None),
        ("wrote_information", lambda t: not any(INFO_OPEN in turn.text for turn in t.turns)),
    ]
    if cfg.require_format:
        out.append(("bad_format", lambda t: is_valid_format(response_text(t))))
    if cfg.require_correct:
        out.append(("wrong_answer", lambda t: exact_match(t.final_answer, t.extra["golds"]) == 1.0))
    out += [
        ("too_many_searches", lambda t: t.num_searches <= cfg.max_searches),
        ("too_long", lambda t: len(t.prompt_ids) + len(t.response_ids) <= cfg.max_tokens),
        ("retrieval_failed", lambda t: t.num_retrieval_failures == 0),
    ]
    if cfg.drop_duplicate_queries:
        out.append(("duplicate_query", lambda t: len({q.lower() for q in _queries(t)}) == len(_queries(t))))
    if cfg.require_support:
        out.append(("support_not_retrieved", _support_retrieved))
    out.append(("not_reproducible", lambda t: reproducible(t, tokenizer)))
    return out


def _queries(t: Trajectory) -> list[str]:
    return [turn.query for turn in t.turns if turn.action == "search" and turn.query]


@dataclass
class FilterReport:
    input: int = 0
    questions: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # filter name -> trajectories removed
    kept: int = 0
    kept_questions: int = 0
    mix: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)  # kept per world ("world", "p<seed>")

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__ | {
            "mix_share": {k: round(v / max(self.kept, 1), 3) for k, v in self.mix.items()}
        }


def select(
    trajs: list[Trajectory], cfg: FilterConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[Trajectory], FilterReport]:
    """The kept trajectories (in input order) and the report."""
    report = FilterReport(input=len(trajs), questions=len({t.uid for t in trajs}))
    kept, tests = [], checks(cfg, tokenizer)
    for t in trajs:
        failed = next((name for name, keep in tests if not keep(t)), None)
        if failed is None:
            kept.append(t)
        else:
            report.removed[failed] = report.removed.get(failed, 0) + 1

    by_q: dict[str, list[Trajectory]] = defaultdict(list)
    for t in kept:
        by_q[t.uid].append(t)
    samples = Counter(t.uid for t in trajs)
    rng = random.Random(cfg.seed)

    if cfg.fewest_searches:
        before = len(kept)
        kept = [min(ts, key=lambda t: (t.num_searches, t.sample_index)) for ts in by_q.values()]
        report.removed["not_fewest_searches"] = before - len(kept)

    if cfg.max_all_solved_fraction < 1.0:
        easy = [u for u, ts in by_q.items() if len(ts) == samples[u]]
        cap = int(cfg.max_all_solved_fraction * len(by_q))
        drop = set(rng.sample(easy, max(len(easy) - cap, 0)))
        before = len(kept)
        kept = [t for t in kept if t.uid not in drop]
        report.removed["all_samples_solved_cap"] = before - len(kept)

    if cfg.mix:
        before = len(kept)
        kept = balance(kept, cfg.mix, rng)
        report.removed["mix_balance"] = before - len(kept)

    report.kept, report.kept_questions = len(kept), len({t.uid for t in kept})
    report.mix = {k: sum(mix_key(t) == k for t in kept) for k in MIX_KEYS}
    report.sources = dict(Counter(t.extra.get("source", "world") for t in kept))
    return kept, report


def balance(trajs: list[Trajectory], target: dict[str, float], rng: random.Random) -> list[Trajectory]:
    """Downsample so the no/one/multi-search shares approach ``target`` (largest feasible total)."""
    unknown = set(target) - set(MIX_KEYS)
    if unknown:
        raise ValueError(f"unknown mix keys {sorted(unknown)}; use {MIX_KEYS}")
    groups = {k: [t for t in trajs if mix_key(t) == k] for k in MIX_KEYS}
    weights = {k: target.get(k, 0.0) for k in MIX_KEYS}
    total = min((len(groups[k]) / w for k, w in weights.items() if w > 0), default=0.0)
    keep_ids = set()
    for k, w in weights.items():
        chosen = rng.sample(groups[k], min(len(groups[k]), round(total * w)))
        keep_ids |= {id(t) for t in chosen}
    return [t for t in trajs if id(t) in keep_ids]


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(SFTConfig, "Filter and balance teacher trajectories.", DEFAULT_CONFIG, argv)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    trajs = [t for path in cfg.trajectory_files for t in read_trajectories(path)]
    kept, report = select(trajs, cfg.filters, tokenizer)
    with cfg.filtered.open("w", encoding="utf-8") as f:
        for t in kept:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
    cfg.filter_report.write_text(json.dumps(report.to_dict(), indent=1))
    print(
        f"[sft.filters] {report.kept}/{report.input} kept -> {cfg.filtered}\n{json.dumps(report.to_dict(), indent=1)}"
    )


if __name__ == "__main__":
    main()
