#!/usr/bin/env python
"""How likely a model is to *start* with a search, by question kind: the first reply token's
probability of ``<think>`` (every search turn opens with it, every closed-book answer with
``<answer>``) after the experiment's prompt, i.e. what sampling at T=1 starts with, and the share of
questions where it is above 0.5 (what greedy decoding does). Used for the tool-use demo builds in
docs/benchmarks.md.

Example: ``python benchmarks/first_action.py outputs/models/tiny-base --split test``
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from search_r1.agent.prompt import render_prompt
from search_r1.paths import WORLD_DIR
from search_r1.world.probe import search_probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="HF model folders")
    parser.add_argument("--world", default=str(WORLD_DIR), help="a built world")
    parser.add_argument("--split", default="test", help="question split")
    args = parser.parse_args()
    world = Path(args.world)
    template = json.loads((world / "manifest.json").read_text())["config"]["prompt_template"]
    questions = [json.loads(line) for line in (world / "questions.jsonl").open(encoding="utf-8")]
    questions = [q for q in questions if q["split"] == args.split]
    for model_dir in args.models:
        probs = search_probabilities(
            Path(model_dir), [render_prompt(q["question"], template) for q in questions]
        )
        groups: dict[str, list[float]] = defaultdict(list)
        for q, p in zip(questions, probs, strict=True):
            kind = q["relation"] if q["hops"] == 1 else "two-hop"
            groups[f"{'known' if q['known'] else 'unknown'} {kind}"].append(p)
        print(
            f"{model_dir} ({len(questions)} {args.split} questions): mean P(search first) "
            f"{sum(probs) / len(probs):.3f}, greedy share {sum(p > 0.5 for p in probs) / len(probs):.3f}"
        )
        for name in sorted(groups):
            ps = groups[name]
            print(
                f"  {name:24s} n={len(ps):4d}  P={sum(ps) / len(ps):.3f}  greedy={sum(p > 0.5 for p in ps) / len(ps):.2f}"
            )


if __name__ == "__main__":
    main()
