"""Training health: the collapse detector on synthetic runs, a real tiny run that stops on a collapse,
verl's step hook, and the training curves of the experiment report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sft_helpers import TitleRetriever  # noqa: E402

from search_r1.config import load_config  # noqa: E402
from search_r1.experiment.config import ExperimentConfig  # noqa: E402
from search_r1.experiment_report import CURVES, training_curves, training_runs, write_report  # noqa: E402
from search_r1.paths import CONFIG_DIR  # noqa: E402
from search_r1.rl.config import HealthConfig, PPOConfig  # noqa: E402
from search_r1.rl.health import TRAINER_KEYS, HealthMonitor  # noqa: E402
from search_r1.rl.learning import read_metrics  # noqa: E402
from search_r1.rl.trainer import train  # noqa: E402

SEARCHES, ENTROPY, FORMAT = (
    TRAINER_KEYS["searches/question"],
    TRAINER_KEYS["entropy"],
    TRAINER_KEYS["format validity"],
)
HEALTHY = {SEARCHES: 2.0, ENTROPY: 1.0, FORMAT: 0.9}


def steps(*changes: dict[str, float], healthy: int = 5) -> list[dict]:
    """``healthy`` steps of :data:`HEALTHY` metrics, then one step per ``changes`` (over HEALTHY)."""
    return [{"step": i + 1, **HEALTHY, **c} for i, c in enumerate([{}] * healthy + list(changes))]


def run(monitor: HealthMonitor, metrics: list[dict]) -> list[list[str]]:
    """The collapsed measures after each step."""
    return [[c.measure for c in monitor.check(m, m["step"])] for m in metrics]


# ---- the detector ---------------------------------------------------------------------------------------


def test_falling_searches_fire_with_the_measure_and_both_values(capsys) -> None:
    monitor = HealthMonitor(HealthConfig(early_steps=5, recent_steps=2), TRAINER_KEYS)
    after = run(monitor, steps({SEARCHES: 1.0}, {SEARCHES: 0.2}, {SEARCHES: 0.1}, {SEARCHES: 0.1}))
    # current = mean of the last 2 steps after the early 5; step 7's (1.0 + 0.2) / 2 = 0.6 is above
    # 0.25 x 2 = 0.5, step 8's (0.2 + 0.1) / 2 = 0.15 is below
    assert after == [[]] * 7 + [["searches/question"]] * 2
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1  # a measure that stays down warns once
    assert "step 8" in lines[0] and "searches/question" in lines[0] and SEARCHES in lines[0]
    assert "current 0.15 vs early 2" in lines[0] and "below 0.5" in lines[0]


def test_falling_entropy_fires() -> None:
    monitor = HealthMonitor(HealthConfig(early_steps=3, recent_steps=1), TRAINER_KEYS)
    after = run(monitor, steps({ENTROPY: 0.5}, {ENTROPY: 0.1}, healthy=3))
    assert after == [[], [], [], [], ["entropy"]]


def test_format_drop_fires_by_fraction_and_by_floor() -> None:
    by_fraction = HealthMonitor(HealthConfig(early_steps=2, recent_steps=1), TRAINER_KEYS)
    assert run(by_fraction, steps({FORMAT: 0.4}, healthy=2))[-1] == ["format validity"]  # < 0.5 x 0.9
    by_floor = HealthMonitor(
        HealthConfig(early_steps=2, recent_steps=1, format_valid_fraction=0, format_valid_floor=0.7),
        TRAINER_KEYS,
    )
    after = run(by_floor, steps({FORMAT: 0.8}, {FORMAT: 0.6}, healthy=2))
    assert after[-2:] == [[], ["format validity"]]
    assert by_floor.check({"step": 5, **HEALTHY, FORMAT: 0.6}, 5)[0].rule == "health.format_valid_floor"


def test_a_healthy_run_never_fires(capsys) -> None:
    monitor = HealthMonitor(HealthConfig(), TRAINER_KEYS)
    wobble = [
        {SEARCHES: 2 + (-1) ** i * 0.8, ENTROPY: 1 - 0.01 * i, FORMAT: 0.9 - 0.005 * i} for i in range(30)
    ]
    assert run(monitor, steps(*wobble)) == [[]] * 35
    assert capsys.readouterr().out == ""


def test_nothing_is_judged_before_the_early_window_is_full() -> None:
    monitor = HealthMonitor(HealthConfig(early_steps=4, recent_steps=1), TRAINER_KEYS)
    crash = {SEARCHES: 0.0, ENTROPY: 0.0, FORMAT: 0.0}
    after = run(monitor, steps(crash, crash, crash, crash, healthy=1))
    # steps 2-4 have fallen to zero, but they are still early steps; step 5 is the first judged
    assert after[:4] == [[]] * 4
    assert after[4] == ["searches/question", "entropy", "format validity"]


def test_recovery_clears_a_collapse_and_a_later_one_warns_again(capsys) -> None:
    monitor = HealthMonitor(HealthConfig(early_steps=2, recent_steps=1), TRAINER_KEYS)
    after = run(monitor, steps({ENTROPY: 0.1}, {}, {ENTROPY: 0.1}, healthy=2))
    assert after[2:] == [["entropy"], [], ["entropy"]]
    assert capsys.readouterr().out.count("WARNING") == 2


def test_replayed_history_keeps_the_early_values_silently(capsys) -> None:
    cfg = HealthConfig(early_steps=3, recent_steps=1)
    past = steps({ENTROPY: 0.1}, healthy=3)
    resumed = HealthMonitor(cfg, TRAINER_KEYS, history=past)
    assert capsys.readouterr().out == ""
    assert [c.measure for c in resumed.check({"step": 5, **HEALTHY, ENTROPY: 0.1}, 5)] == ["entropy"]
    assert capsys.readouterr().out == ""  # the collapse began before the resume and was warned of then


def test_missing_measures_and_bad_windows() -> None:
    monitor = HealthMonitor(HealthConfig(early_steps=1, recent_steps=1), TRAINER_KEYS)
    assert run(monitor, [{"step": 1, SEARCHES: 2.0}, {"step": 2, SEARCHES: 0.0}]) == [
        [],
        ["searches/question"],
    ]
    with pytest.raises(ValueError, match="early_steps"):
        HealthMonitor(HealthConfig(early_steps=0), TRAINER_KEYS)


# ---- the single-machine trainer ------------------------------------------------------------------------


def test_tiny_run_stops_on_a_collapse_and_says_why(tiny_model, world, tmp_path, capsys) -> None:
    """A real run whose entropy threshold must trigger (current < 1e6 x early): it ends after step 2
    of 4 with a checkpoint and its metrics, the merged model, a warning and the stop summary."""
    cfg = load_config(
        PPOConfig,
        CONFIG_DIR / "rl" / "tiny_grpo.yaml",
        [
            f"actor_rollout_ref.model.path={tiny_model}",
            f"trainer.default_local_dir={tmp_path}",
            "data.train_batch_size=2",
            "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=2",
            "trainer.total_training_steps=4",
            "trainer.save_freq=-1",
            "health.early_steps=1",
            "health.recent_steps=1",
            "health.entropy_fraction=1e6",
            "trainer.stop_on_collapse=true",
        ],
    )
    run_dir = train(cfg, retriever=TitleRetriever(world.corpus))
    out = capsys.readouterr().out
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(0 <= m["rollout/format_valid"] <= 1 and 0 <= m["rollout/answered"] <= 1 for m in metrics)
    assert (run_dir / "global_step_2" / "state.pt").exists() and not (run_dir / "global_step_4").exists()
    assert (run_dir / "merged" / "config.json").exists()
    assert "WARNING step 2: entropy (actor/entropy) collapsed" in out
    summary = [line for line in out.splitlines() if "stopped at step" in line]
    assert len(summary) == 1 and "stopped at step 2 of 4 (trainer.stop_on_collapse)" in summary[0]
    assert "entropy" in summary[0]


# ---- verl ----------------------------------------------------------------------------------------------


def test_verl_step_hook_warns_of_falling_searches(monkeypatch, capsys) -> None:
    """The wrapper's ``_compute_metrics`` feeds each step's metrics (verl's entropy, our search metrics)
    to one monitor per trainer. The step's episodes come from TransferQueue, a Ray actor these CPU
    tests do not start: here they are given per step."""
    from verl.trainer.ppo.v1 import PPOTrainerSync

    import search_r1.rl.verl_main as verl_main

    per_step = [2] * 5 + [0] * 3  # searches of each step's two episodes
    current: dict[str, int] = {}
    episode = {"retrieval_failures": 0, "invalid_actions": 0, "finish_reason": "answer", "format_valid": True}
    monkeypatch.setattr(
        verl_main, "step_extra_fields", lambda batch: [episode | {"searches": current["searches"]}] * 2
    )
    monkeypatch.setattr(
        PPOTrainerSync,
        "_compute_metrics",
        lambda self, b, metrics, t, global_steps, epoch: metrics.update({"actor/entropy": 1.0}),
    )
    trainer = object.__new__(verl_main.with_search_metrics(PPOTrainerSync))
    for step, searches in enumerate(per_step, 1):
        current["searches"] = searches
        metrics: dict = {}
        trainer._compute_metrics(None, metrics, {}, global_steps=step, epoch=0)
        assert (
            metrics["search_r1/searches_per_question"] == searches
            and metrics["search_r1/format_valid"] == 1.0
        )
    warnings = capsys.readouterr().out.splitlines()
    assert len(warnings) == 1 and "step 6: searches/question (search_r1/searches_per_question)" in warnings[0]


# ---- the experiment report -----------------------------------------------------------------------------


def write_run(root: Path, seed: int, name: str, steps_: list[dict], folder: str = "ppo") -> None:
    run = root / f"seed{seed}" / folder / name
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in steps_))


def curve_steps(n: int, entropy: bool = True) -> list[dict]:
    return [
        {
            "step": i,
            "reward/mean": 0.1 * i,
            "reward/em": 0.05 * i,
            "rollout/searches_per_question": 1.0,
            **({"actor/entropy": 1.0 / i} if entropy else {}),
        }
        for i in range(1, n + 1)
    ]


def test_report_draws_one_line_per_run_from_metrics_jsonl(tmp_path) -> None:
    write_run(tmp_path, 0, "rl_from_sft", curve_steps(4))
    write_run(tmp_path, 0, "rl_from_base", curve_steps(3, entropy=False))
    write_run(tmp_path, 1, "rl_from_sft", curve_steps(4), folder="ppo_single")  # a verl rehearsal's run
    (tmp_path / "seed1" / "ppo" / "rl_from_sft").mkdir(parents=True)  # a verl checkpoint: no metrics
    runs = training_runs(tmp_path)
    assert sorted(runs) == ["seed0/rl_from_base", "seed0/rl_from_sft", "seed1/rl_from_sft"]

    png = tmp_path / "curves.png"
    drawn = training_curves(runs, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(drawn) == [title for _, title in CURVES]
    for title in ("reward", "EM", "searches / question"):
        assert sorted(drawn[title]) == sorted(runs)
    assert sorted(drawn["entropy"]) == ["seed0/rl_from_sft", "seed1/rl_from_sft"]  # the base run logged none


def test_write_report_puts_the_curves_beside_the_table(tmp_path) -> None:
    write_run(tmp_path, 0, "rl_from_sft", curve_steps(3))
    row = {"seeds": 1, "searches_failed": 0} | {k: {"mean": 0.5, "std": 0.0} for k in ("em", "f1", "rouge_l")}
    row |= {k: {"mean": 0.5, "std": 0.0} for k in ("searches", "format_valid")}
    summary = {
        "groups": {g: row for g in ("baseline", "sft", "rl", "sft_rl")},
        "definitions": {},
        "seconds": 60,
    }
    cfg = ExperimentConfig(preset="unit", out_dir=str(tmp_path))
    write_report(summary, cfg, tmp_path, publish_dir=tmp_path / "published")
    assert (tmp_path / "unit.training.png").stat().st_size > 0
    assert "![training curves](unit.training.png)" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "published" / "unit.training.png").exists()
