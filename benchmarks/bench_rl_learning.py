#!/usr/bin/env python
"""How much GRPO raises the reward on a fixed set of questions: the RL learning test's run, from any start.

Trains on ``--questions`` questions for ``--epochs`` epochs and compares each question's mean
reward in the first epoch with the last (``search_r1.rl.learning.paired_gain``), the rule of
``tests/test_rl.py``. Run it with several ``--seed`` values to measure the run-to-run spread, and
with ``--lr 0`` for the spread of a run that cannot learn (docs/benchmarks.md, RL).

    python benchmarks/bench_rl_learning.py data/models/tiny-sft --seed 1 \\
        retriever.index_dir=outputs/world/practice/seed3/index \\
        data.train_files=outputs/world/practice/seed3/train.parquet
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from search_r1.config import load_config
from search_r1.paths import CONFIG_DIR
from search_r1.rl.config import PPOConfig
from search_r1.rl.learning import paired_gain, read_metrics
from search_r1.rl.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start", help="HF folder of the policy to start from")
    parser.add_argument(
        "--questions", type=int, default=16, help="training questions (data.train_max_samples)"
    )
    parser.add_argument("--batch", type=int, default=4, help="prompts per step")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (GRPO group size)")
    parser.add_argument("--epochs", type=int, default=4, help="passes over the questions")
    parser.add_argument(
        "--lr", type=float, default=1e-4, help="actor learning rate (0: a run that cannot learn)"
    )
    parser.add_argument("--seed", type=int, default=1, help="data and sampling seed")
    parser.add_argument("--out", default="", help="keep the run folder here (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="more PPOConfig overrides (key=value)")
    args = parser.parse_intermixed_args()
    per_epoch = args.questions // args.batch
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        t0 = time.perf_counter()
        run = train(
            load_config(
                PPOConfig,
                CONFIG_DIR / "rl" / "tiny_ppo.yaml",
                [
                    f"actor_rollout_ref.model.path={args.start}",
                    f"trainer.default_local_dir={out}",
                    "algorithm.adv_estimator=grpo",
                    f"data.train_max_samples={args.questions}",
                    f"data.train_batch_size={args.batch}",
                    f"data.seed={args.seed}",
                    f"trainer.seed={args.seed}",
                    f"actor_rollout_ref.rollout.n={args.samples}",
                    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                    f"actor_rollout_ref.actor.optim.lr={args.lr}",
                    f"trainer.total_training_steps={per_epoch * args.epochs}",
                    "trainer.save_freq=-1",
                    "trainer.save_merged=false",
                    "reward.reward_kwargs.reward=em_format",
                    *args.overrides,
                ],
            )
        )
        metrics = read_metrics(run)
    print("reward per step:", " ".join(f"{np.mean(m['reward/samples']):.2f}" for m in metrics))
    gain = paired_gain(metrics, slice(0, per_epoch), slice(-per_epoch, None))
    print(f"seed {args.seed} lr {args.lr}: first vs last epoch, {gain}, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
