"""The experiment runner in miniature: every stage for real, a few steps each, all four groups."""

from __future__ import annotations

import json

import pytest

from search_r1.config import load_config
from search_r1.experiment import ExperimentConfig, run_experiment
from search_r1.experiment_report import GROUPS
from search_r1.paths import CONFIG_DIR


@pytest.mark.slow
def test_runner_in_miniature_produces_all_four_groups_and_the_table(tiny_model, tmp_path):
    cfg = load_config(
        ExperimentConfig,
        CONFIG_DIR / "experiment" / "tiny.yaml",
        [
            f"out_dir={tmp_path}",
            f"base_model={tiny_model}",
            "sft_overrides=[generate.max_questions=24,generate.n_samples=1,practice.worlds=1,llamafactory.max_steps=3,llamafactory.save_steps=3]",
            "rl_overrides=[trainer.total_training_steps=1,data.train_batch_size=2,actor_rollout_ref.rollout.n=2,actor_rollout_ref.actor.ppo_mini_batch_size=2]",
            "eval_overrides=[max_examples=12]",
        ],
    )
    summary = run_experiment(cfg)

    assert set(summary["groups"]) == set(GROUPS)
    for group, row in summary["groups"].items():
        assert row["n_questions"] == 12, group
        for key in ("em", "f1", "rouge_l", "searches", "format_valid"):
            assert 0 <= row[key]["mean"] <= (10 if key == "searches" else 1), (group, key)
    for name in ("results.md", "results.json", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "results.md").read_text()
    assert all(title in table for title in GROUPS.values())
    assert json.loads((tmp_path / "results.json").read_text())["git_commit"]
    # the SFT and both RL runs wrote a model each, and each group was evaluated on its own model
    models = {
        json.loads((tmp_path / "seed0" / "eval" / g / "results.json").read_text())["config"]["engine"][
            "model"
        ]
        for g in ("sft", "rl", "sft_rl")
    }
    assert len(models) == 3
    # the SFT set holds the world's trajectories and those of the practice world
    report = json.loads((tmp_path / "seed0" / "sft" / "filter_report.json").read_text())
    assert set(report["sources"]) == {"world", "p1"}
    # resume: a second call re-runs nothing, gives the same table, and says its time is partial
    assert not summary["resumed"]
    again = run_experiment(cfg)
    assert {g: r["em"]["mean"] for g, r in again["groups"].items()} == {
        g: r["em"]["mean"] for g, r in summary["groups"].items()
    }
    assert again["resumed"] and "reused stages" in (tmp_path / "results.md").read_text()
