#!/usr/bin/env python
"""How much GRPO raises the reward in a few steps: the RL learning test's run, from any start.

Prints the reward per step and the first/last-window means with their standard errors; the
margin is two standard errors of the difference, the rule of ``tests/test_rl.py``. Session 6 used
it to find a start and a question set where RL learns within minutes (docs/benchmarks.md, RL).

    python benchmarks/bench_rl_learning.py outputs/runs/sft/tiny/merged --steps 16 --lr 1e-4 \\
        retriever.index_dir=outputs/world/practice/seed3/index \\
        data.train_files=outputs/world/practice/seed3/train.parquet
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from search_r1.config import load_config
from search_r1.paths import CONFIG_DIR
from search_r1.rl.config import PPOConfig
from search_r1.rl.trainer import train


def window(metrics: list[dict], steps: slice) -> tuple[float, float]:
    """Mean reward over the samples of a window of steps, and its standard error."""
    rewards = [r for m in metrics[steps] for r in m["reward/samples"]]
    return float(np.mean(rewards)), float(np.std(rewards, ddof=1) / np.sqrt(len(rewards)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start", help="HF folder of the policy to start from")
    parser.add_argument("--steps", type=int, default=16, help="GRPO steps")
    parser.add_argument("--lr", type=float, default=1e-4, help="actor learning rate")
    parser.add_argument("--window", type=int, default=3, help="steps in the first and last windows")
    parser.add_argument("overrides", nargs="*", help="more PPOConfig overrides (key=value)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run = train(
            load_config(
                PPOConfig,
                CONFIG_DIR / "rl" / "tiny_ppo.yaml",
                [
                    f"actor_rollout_ref.model.path={args.start}",
                    f"trainer.default_local_dir={out}",
                    "algorithm.adv_estimator=grpo",
                    "data.train_batch_size=4",
                    "actor_rollout_ref.rollout.n=4",
                    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                    f"actor_rollout_ref.actor.optim.lr={args.lr}",
                    f"trainer.total_training_steps={args.steps}",
                    "trainer.save_freq=-1",
                    "trainer.save_merged=false",
                    "reward.reward_kwargs.reward=em_format",
                    *args.overrides,
                ],
            )
        )
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, first_se = window(metrics, slice(0, args.window))
    last, last_se = window(metrics, slice(-args.window, None))
    print("reward per step:", " ".join(f"{np.mean(m['reward/samples']):.2f}" for m in metrics))
    print(
        f"first {args.window} steps {first:.3f} ± {first_se:.3f}, last {last:.3f} ± {last_se:.3f}, "
        f"difference {last - first:.3f}, margin {2 * np.hypot(first_se, last_se):.3f}, "
        f"{time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
