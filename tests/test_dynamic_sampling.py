"""Dynamic sampling (verl's ``algorithm.filter_groups``): the pure functions on hand-made scores, the
config and its verl twin, and the single-machine trainer with it on."""

from __future__ import annotations

import dataclasses
import inspect
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from sft_helpers import TitleRetriever  # noqa: E402

from search_r1.agent.rollout import RolloutStats  # noqa: E402
from search_r1.agent.trajectory import Trajectory, Turn  # noqa: E402
from search_r1.config import load_config  # noqa: E402
from search_r1.data.schema import read_parquet, uid_of  # noqa: E402
from search_r1.paths import CONFIG_DIR  # noqa: E402
from search_r1.rewards import compute_score  # noqa: E402
from search_r1.rl import trainer  # noqa: E402
from search_r1.rl.config import DataConfig, FilterGroupsConfig, PPOConfig  # noqa: E402
from search_r1.rl.dynamic_sampling import (  # noqa: E402
    METRICS,
    Generation,
    NotEnoughGroups,
    check_metric,
    draw_step,
    refill_rows,
    sample_values,
    varying_groups,
)
from search_r1.rl.learning import read_metrics  # noqa: E402
from search_r1.rl.trainer import batch_indices, train  # noqa: E402

GRPO = CONFIG_DIR / "rl" / "tiny_grpo.yaml"

# ---- the pure functions ------------------------------------------------------------------------------


def test_varying_groups_keeps_mixed_groups_and_single_samples() -> None:
    values = [1, 1, 1, 0, 0, 0, 1, 0, 1, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1]
    assert varying_groups(values, 3) == [False, False, True, False, False]
    assert np.std([0.1, 0.1, 0.1]) > 0  # why it tests inequality: the std of a constant group rounds above 0
    assert varying_groups([0.0, 1.0], 1) == [True, True]  # one sample per group: nothing to compare, kept


def test_metric_names_are_what_compute_score_returns() -> None:
    """``reward`` plus the keys of ``compute_score``'s result: exactly what verl's reward loop hands its
    group filter (as ``reward_extra_info``), so a metric means the same thing in both trainers."""
    scored = compute_score("world", "<think>x</think><answer>Paris</answer>", {"target": ["Paris"]}, {})
    assert set(METRICS) == set(scored) | {"reward"}
    assert sample_values([scored], "reward") == sample_values([scored], "score") == [1.0]
    for name in METRICS:
        check_metric(name)
    with pytest.raises(ValueError, match="'acc' is our 'em'"):
        check_metric("acc")
    with pytest.raises(ValueError, match=r"unknown metric 'seq_reward'.*choose from"):
        check_metric("seq_reward")


def test_refill_rows_are_a_function_of_step_and_attempt() -> None:
    first = batch_indices(3, n_rows=10, batch_size=3, seed=1, shuffle=True)
    refills = [refill_rows(3, k, first, 10, 3, 1, True) for k in (1, 2, 3)]
    drawn = first + [i for r in refills for i in r]
    assert [len(r) for r in refills] == [3, 3, 1]  # the last refill takes what is left ...
    assert sorted(drawn) == list(range(10))  # ... so no row twice in a step, and every row once
    assert refill_rows(3, 4, first, 10, 3, 1, True) == []  # then nothing: the step drew every question
    # Any attempt alone, in any order, with the global RNGs in another state: the same rows.
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    np.random.permutation(10), torch.randperm(10)
    assert [refill_rows(3, k, first, 10, 3, 1, True) for k in (3, 2, 1)] == refills[::-1]
    assert refill_rows(4, 1, first, 10, 3, 1, True) != refills[0]  # another step, another order
    assert refill_rows(3, 1, first, 10, 3, 2, True) != refills[0]  # another seed too
    # Without shuffling: the rows after the step's own, in file order.
    plain = batch_indices(2, 10, 3, 1, False)
    assert plain == [3, 4, 5]
    assert [refill_rows(2, k, plain, 10, 3, 1, False) for k in (1, 2, 3)] == [[6, 7, 8], [9, 0, 1], [2]]


def fake_generation(table: dict[int, list[float]], em: dict[int, list[float]] | None = None):
    """A ``generate`` that scores row ``r``'s samples ``table[r]`` (em = the score unless given), with
    one search and one failed retrieval per sample, and records its calls."""
    calls: list[tuple[list[int], int]] = []

    def generate(rows: list[int], attempt: int) -> Generation:
        calls.append((list(rows), attempt))
        trajs, scored = [], []
        for r in rows:
            for k, score in enumerate(table[r]):
                e = (em or table)[r][k]
                turns = [Turn("search", "q", query="q", retrieval_failed=True), Turn("answer", "a")]
                trajs.append(Trajectory(f"q{r}", [1], [2, 3], [1, 1], turns=turns, sample_index=k))
                scored.append({"score": score, "em": e, "f1": e})
        return Generation(list(rows), trajs, scored, RolloutStats.of(trajs))

    return generate, calls


ALL_RIGHT, ALL_WRONG, MIXED = [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]


def draw(generate, first, fg=None, n_rows=10, batch_size=3, step=1):
    fg = fg or FilterGroupsConfig(enable=True)
    data = DataConfig(train_batch_size=batch_size, seed=1, shuffle=True)
    return draw_step(fg, data, step, first, n_rows, 3, generate)


def test_a_batch_whose_groups_all_vary_is_trained_as_drawn() -> None:
    generate, calls = fake_generation(dict.fromkeys(range(10), MIXED))
    d = draw(generate, [4, 2, 7])
    assert calls == [([4, 2, 7], 0)]
    assert d.kept == [(0, 0), (0, 1), (0, 2)] and d.trained(3).rows == [4, 2, 7]
    m = d.metrics(lambda i: f"q{i}")
    assert m["dynamic_sampling/gen_batches"] == 1 and m["dynamic_sampling/dropped_groups"] == 0
    assert m["dynamic_sampling/drawn_uids"] == ["q4", "q2", "q7"]


def test_constant_groups_are_dropped_and_refilled_in_order() -> None:
    """Batch 0: all right, all wrong, mixed. Refill 1: mixed, all wrong, all wrong. Refill 2: mixed,
    mixed, all wrong: four varying groups for a batch of three, so the last is the surplus."""
    first = [0, 1, 2]
    r1, r2 = refill_rows(1, 1, first, 10, 3, 1, True), refill_rows(1, 2, first, 10, 3, 1, True)
    table = dict.fromkeys(range(10), ALL_WRONG) | {0: ALL_RIGHT, 2: MIXED, r1[0]: MIXED, r2[0]: MIXED}
    table |= {r2[1]: MIXED}
    generate, calls = fake_generation(table)
    d = draw(generate, first)
    assert calls == [(first, 0), (r1, 1), (r2, 2)]  # refills exactly as refill_rows draws them
    assert d.kept == [(0, 2), (1, 0), (2, 0)]  # first batch's first, then each refill's, in order
    trained = d.trained(3)
    assert trained.rows == [2, r1[0], r2[0]]  # r2[1] varied too: the surplus, dropped
    assert [s["score"] for s in trained.scored] == MIXED * 3
    assert [t.uid for t in trained.trajectories] == [f"q{r}" for r in trained.rows for _ in range(3)]
    m = d.metrics(lambda i: f"q{i}")
    expected = {
        "dynamic_sampling/gen_batches": 3,
        "dynamic_sampling/kept_groups": 4,
        "dynamic_sampling/surplus_groups": 1,
        "dynamic_sampling/dropped_groups": 5,
        "dynamic_sampling/dropped_all_correct": 1,
        "dynamic_sampling/dropped_all_wrong": 4,
        "dynamic_sampling/drawn_uids": [f"q{i}" for i in first + r1 + r2],
    }
    assert {k: m[k] for k in expected} == expected
    # rollout statistics of what is trained on; retrieval failures of everything generated
    assert trained.stats.n == 9 and trained.stats.searches == 1.0
    assert trained.stats.retrieval_failures == 27


def test_the_metric_decides_what_varies() -> None:
    """em_format-like scores: right-but-ill-formed 0.8 vs right 1.0 vary in the reward, not in em."""
    generate, _ = fake_generation(
        dict.fromkeys(range(10), [1.0, 0.8, 1.0]), em=dict.fromkeys(range(10), ALL_RIGHT)
    )
    assert draw(generate, [0, 1, 2]).dropped == 0
    generate, _ = fake_generation(
        dict.fromkeys(range(10), [1.0, 0.8, 1.0]), em=dict.fromkeys(range(10), ALL_RIGHT)
    )
    with pytest.raises(NotEnoughGroups):
        draw(generate, [0, 1, 2], FilterGroupsConfig(enable=True, metric="em"))


def test_a_shortfall_at_the_limit_raises_as_verl_does() -> None:
    table = dict.fromkeys(range(10), ALL_WRONG) | {0: MIXED}
    generate, calls = fake_generation(table)
    with pytest.raises(
        NotEnoughGroups,
        match=r"step 1: .* found 1 of 3 groups .* in 2 generation batches: "
        r"max_num_gen_batches=2 reached",
    ):
        draw(generate, [0, 1, 2], FilterGroupsConfig(enable=True, max_num_gen_batches=2))
    assert len(calls) == 2
    generate, calls = fake_generation(table)  # no limit: it stops once every question was drawn
    with pytest.raises(NotEnoughGroups, match="every training question was drawn in this step"):
        draw(generate, [0, 1, 2], FilterGroupsConfig(enable=True, max_num_gen_batches=0))
    assert sorted(i for rows, _ in calls for i in rows) == list(range(10)) and len(calls) == 4


# ---- the config, and verl's ------------------------------------------------------------------------


def test_config_rejects_an_unknown_metric_with_exit_2_and_one_line(capsys) -> None:
    cfg = load_config(PPOConfig, GRPO, [])
    assert cfg.algorithm.filter_groups == FilterGroupsConfig()  # exposed in the preset, off
    with pytest.raises(SystemExit) as exc:
        trainer.main(
            [
                "--config",
                str(GRPO),
                "algorithm.filter_groups.enable=true",
                "algorithm.filter_groups.metric=acc",
            ]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "algorithm.filter_groups.metric: unknown metric 'acc'" in err


def test_not_enough_groups_ends_the_run_with_exit_1_and_one_line(monkeypatch, capsys) -> None:
    def short(cfg, retriever=None):
        raise NotEnoughGroups("step 3: dynamic sampling found 1 of 8 groups")

    monkeypatch.setattr(trainer, "train", short)
    with pytest.raises(SystemExit) as exc:
        trainer.main(["--config", str(GRPO), "algorithm.filter_groups.enable=true"])
    assert exc.value.code == 1
    assert capsys.readouterr().err.strip().endswith("error: step 3: dynamic sampling found 1 of 8 groups")


@pytest.mark.parametrize("name", ["verl_ppo", "verl_grpo", "qwen2.5-3b_nq_ppo"])
def test_verl_presets_carry_the_same_option_and_v1_reads_it(name, toy_dir) -> None:
    """Each verl preset sets ``algorithm.filter_groups`` to verl's defaults, passes our check and
    verl's validation switched on too, and verl's V1 trainer (the default, ``trainer.use_v1``)
    resolves it; the single-machine option has the same keys. The legacy ``RayPPOTrainer`` never
    reads it (docs/rl.md)."""
    from verl.trainer.config import FilterGroupsConfig as VerlFilterGroups
    from verl.trainer.ppo import ray_trainer
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from search_r1.rl.verl_config import check, verl_defaults

    model = f"actor_rollout_ref.model.path={toy_dir}"
    cfg = check(name, [model])
    fg = cfg.algorithm.filter_groups
    assert (fg.enable, fg.metric, fg.max_num_gen_batches) == (False, "reward", 0)
    defaults = verl_defaults().algorithm.filter_groups
    assert (fg.enable, fg.metric, fg.max_num_gen_batches) == (
        defaults.enable,
        defaults.metric,
        defaults.max_num_gen_batches,
    )
    assert cfg.trainer.use_v1
    assert PPOTrainer._resolve_filter_groups_metric(SimpleNamespace(config=cfg)) is None
    on = check(name, [model, "algorithm.filter_groups.enable=true"])
    assert PPOTrainer._resolve_filter_groups_metric(SimpleNamespace(config=on)) == "reward"
    ours = {f.name for f in dataclasses.fields(FilterGroupsConfig)}
    assert ours <= {f.name for f in dataclasses.fields(VerlFilterGroups)}
    assert "filter_groups" not in inspect.getsource(ray_trainer)


# ---- the trainer ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_start(tiny_model) -> Path:
    from search_r1.world.setup import ensure_sft_model

    return ensure_sft_model(tiny_model)


N_ROWS, BATCH, SAMPLES, STEPS = 16, 2, 4, 2


@pytest.fixture(scope="module")
def questions(world, tmp_path_factory) -> tuple[Path, set[str]]:
    """The world's first training questions, with the first question of each step's ordinary batch
    given a gold answer no response can match: those groups are all wrong, whatever the policy does."""
    df = pd.read_parquet(world.train).head(N_ROWS).reset_index(drop=True)
    poisoned = [batch_indices(s, N_ROWS, BATCH, 1, True)[0] for s in range(1, STEPS + 1)]
    for i in poisoned:
        df.at[i, "reward_model"] = {"style": "rule", "ground_truth": {"target": ["no such answer zq"]}}
    out = tmp_path_factory.mktemp("dynamic_sampling") / "train.parquet"
    df.to_parquet(out, index=False)
    rows = read_parquet(out)
    return out, {uid_of(rows[i]) for i in poisoned}


def run_grpo(model: Path, train_files: Path, out: Path, world) -> Path:
    cfg = load_config(
        PPOConfig,
        GRPO,
        [
            f"actor_rollout_ref.model.path={model}",
            f"trainer.default_local_dir={out}",
            f"data.train_files={train_files}",
            f"data.train_batch_size={BATCH}",
            f"actor_rollout_ref.rollout.n={SAMPLES}",
            "actor_rollout_ref.actor.ppo_mini_batch_size=1",
            f"trainer.total_training_steps={STEPS}",
            "trainer.save_freq=-1",
            "trainer.save_merged=false",
            "algorithm.filter_groups.enable=true",
        ],
    )
    return train(cfg, retriever=TitleRetriever(world.corpus))


def test_trainer_trains_only_on_groups_that_vary(sft_start, questions, world, tmp_path) -> None:
    """GRPO from the SFT model with dynamic sampling on. Every group trained on has rewards that
    differ; a step whose ordinary batch holds an all-wrong group rolls out more; what each step
    draws is its ordinary batch then ``refill_rows`` for attempts 1, 2, ... (a function of the step
    and attempt), and a second run with the same seed logs the same questions and rewards."""
    train_files, poisoned = questions
    rows = read_parquet(train_files)
    m = read_metrics(run_grpo(sft_start, train_files, tmp_path / "a", world))
    assert [x["step"] for x in m] == list(range(1, STEPS + 1))
    for x in m:
        uids, samples = x["data/uids"], x["reward/samples"]
        assert len(uids) == BATCH and len(samples) == BATCH * SAMPLES
        groups = [samples[g * SAMPLES : (g + 1) * SAMPLES] for g in range(BATCH)]
        assert all(max(g) > min(g) for g in groups), groups  # nonzero std in every trained group
        assert x["reward/mean"] == pytest.approx(float(np.mean(samples)))  # metrics of what is trained on
        first = batch_indices(x["step"], N_ROWS, BATCH, 1, True)
        refills = [refill_rows(x["step"], k, first, N_ROWS, BATCH, 1, True) for k in range(1, N_ROWS)]
        expected = [uid_of(rows[i]) for i in first + [i for r in refills for i in r]]
        drawn = x["dynamic_sampling/drawn_uids"]
        n_gen = x["dynamic_sampling/gen_batches"]
        assert drawn == expected[: len(drawn)] and len(set(drawn)) == len(drawn)
        assert n_gen >= 2 and x["dynamic_sampling/dropped_all_wrong"] >= 1  # the poisoned group
        assert x["dynamic_sampling/kept_groups"] + x["dynamic_sampling/dropped_groups"] == len(drawn)
        assert x["dynamic_sampling/kept_groups"] - x["dynamic_sampling/surplus_groups"] == BATCH
        assert set(uids) <= set(drawn) - poisoned
        assert [u for u in drawn if u in uids] == uids  # kept in draw order
    again = read_metrics(run_grpo(sft_start, train_files, tmp_path / "b", world))
    for key in ("data/uids", "dynamic_sampling/drawn_uids", "reward/samples"):
        assert [x[key] for x in again] == [x[key] for x in m], key
