"""The experiment runner in miniature: every stage for real, a few steps each, all four groups."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from search_r1.config import load_config
from search_r1.data.schema import read_parquet, uid_of
from search_r1.experiment import ExperimentConfig, plan, run_experiment
from search_r1.experiment.stages import Stage, marker
from search_r1.experiment_report import GROUPS
from search_r1.paths import CONFIG_DIR, REPO_ROOT


def _mtimes(root: Path, stages: list) -> dict[str, int]:
    """Modification times of every done stage's marker and outputs (each file under an output folder)."""
    paths = [marker(root, s) for s in stages if not s.always]
    for stage in (s for s in stages if not s.always):
        for out in map(Path, stage.outputs):
            out = out if out.is_absolute() else REPO_ROOT / out
            paths += sorted(out.rglob("*")) if out.is_dir() else [out]
    return {str(p): p.stat().st_mtime_ns for p in paths if p.is_file()}


def test_a_second_call_skips_done_stages_and_reruns_only_what_is_missing(
    tmp_path, monkeypatch, capsys
) -> None:
    """The runner's resume logic on stand-in stages (seconds, not the 4 minutes of the miniature run):
    each stage appends a line to its output, so the files count how often each one ran."""
    from search_r1.experiment import run

    outs = {name: tmp_path / f"{name}.txt" for name in ("data", "train", "eval", "cached_build")}
    stages = [
        Stage(name, ["sh", "-c", f"echo ran >> {out}"], outputs=[str(out)], always=name == "cached_build")
        for name, out in outs.items()
    ]
    monkeypatch.setattr(run, "plan", lambda cfg: stages)
    monkeypatch.setattr(run, "services", lambda cfg: {})
    monkeypatch.setattr(run, "summarize", lambda results: {})
    monkeypatch.setattr(run, "write_report", lambda *args, **kwargs: None)
    cfg = load_config(
        ExperimentConfig, CONFIG_DIR / "experiment" / "tiny.yaml", [f"out_dir={tmp_path / 'run'}"]
    )

    def runs() -> dict[str, int]:
        return {name: len(out.read_text().splitlines()) for name, out in outs.items()}

    assert not run.run_experiment(cfg)["resumed"]
    assert runs() == {"data": 1, "train": 1, "eval": 1, "cached_build": 1}
    written = _mtimes(cfg.root, stages)
    capsys.readouterr()
    assert run.run_experiment(cfg)["resumed"]
    printed = capsys.readouterr().out
    assert runs() == {"data": 1, "train": 1, "eval": 1, "cached_build": 2}  # only the cached build ran
    assert _mtimes(cfg.root, stages) == written
    for name in ("data", "train", "eval"):
        assert f"[experiment] skip {name}: done\n" in printed and f"[experiment] {name}: " not in printed
    assert "[experiment] cached_build: " in printed and "skip cached_build" not in printed

    outs["train"].unlink()  # a done stage whose output went: it runs again, the others stay skipped
    run.run_experiment(cfg)
    assert runs() == {"data": 1, "train": 1, "eval": 1, "cached_build": 3}
    cfg.resume = False  # resume=false: everything runs again
    run.run_experiment(cfg)
    assert runs() == {"data": 2, "train": 2, "eval": 2, "cached_build": 4}


@pytest.mark.slow
def test_runner_in_miniature_produces_all_four_groups_and_the_table(tiny_model, tmp_path, capsys):
    cfg = load_config(
        ExperimentConfig,
        CONFIG_DIR / "experiment" / "tiny.yaml",
        [
            f"out_dir={tmp_path}",
            f"base_model={tiny_model}",
            "sft_overrides=[generate.max_questions=24,generate.n_samples=1,practice.worlds=1,llamafactory.max_steps=3,llamafactory.save_steps=3]",
            "rl_overrides=[trainer.total_training_steps=1,data.train_batch_size=2,actor_rollout_ref.rollout.n=2,actor_rollout_ref.actor.ppo_mini_batch_size=2]",
            "rl_select=[max_questions=4,n=2,min_keep=1]",
            "eval_overrides=[max_examples=12]",
        ],
    )
    assert (
        cfg.unseen_world_seed is not None and cfg.rl_world_seed is not None and not cfg.publish
    )  # the quickstart's own unseen world
    published = {p: p.stat().st_mtime_ns for p in (REPO_ROOT / "docs" / "results").glob("*")}
    summary = run_experiment(cfg)

    assert set(summary["groups"]) == set(GROUPS)
    for group, row in summary["groups"].items():
        assert row["n_questions"] == 12, group
        for key in ("em", "f1", "rouge_l", "searches", "format_valid"):
            assert 0 <= row[key]["mean"] <= (10 if key == "searches" else 1), (group, key)
    # every group was also scored on the unseen world, by its own retriever, and compared question by
    # question; tracked files were left alone
    (label, unseen), *more = summary["test_sets"].items()
    assert not more and f"seed {cfg.unseen_world_seed}" in label
    assert {g: r["n_questions"] for g, r in unseen["groups"].items()} == dict.fromkeys(GROUPS, 12)
    for paired in (summary["paired"], unseen["paired"]):
        assert set(paired) == {"sft_rl-sft", "rl-baseline", "sft-baseline"}
        assert all(d["low"] <= d["mean"] <= d["high"] and d["n_questions"] == 12 for d in paired.values())
    unseen_eval = json.loads((tmp_path / "seed0" / "eval" / "unseen" / "sft" / "results.json").read_text())
    assert unseen_eval["config"]["data"] == [str(cfg.unseen_dir / "test.parquet")]
    assert (
        unseen_eval["config"]["retriever_url"]
        != json.loads((tmp_path / "seed0" / "eval" / "sft" / "results.json").read_text())["config"][
            "retriever_url"
        ]
    )
    assert "paired EM difference" in (tmp_path / "results.md").read_text()
    # each RL run trained on the RL world's questions its pre-pass kept, through that world's retriever
    for name in ("rl_from_sft", "rl_from_base"):
        selected = tmp_path / "seed0" / "ppo" / name / "select.parquet"
        report = json.loads(selected.with_suffix(".pass_rates.json").read_text())
        assert report["config"]["train_files"] == str(cfg.rl_world_dir / "train.parquet")
        assert report["selected"] == len(read_parquet(selected)) >= 1
        kept = {uid_of(row) for row in read_parquet(selected)}
        steps = [json.loads(line) for line in (selected.parent / "metrics.jsonl").read_text().splitlines()]
        assert steps and all(set(step["data/uids"]) <= kept for step in steps), name
    assert {p: p.stat().st_mtime_ns for p in (REPO_ROOT / "docs" / "results").glob("*")} == published
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
    # resume: a second call re-runs nothing (each stage says it skipped, no stage starts, no output or
    # marker is rewritten), gives the same table, and says its time is partial
    assert not summary["resumed"]
    stages = plan(cfg)
    written = _mtimes(cfg.root, stages)
    assert len(written) >= 2 * sum(not s.always for s in stages)  # a marker and an output at least, each
    capsys.readouterr()
    again = run_experiment(cfg)
    printed = capsys.readouterr().out
    for stage in stages:
        assert (f"[experiment] skip {stage.name}: done\n" in printed) != stage.always, stage.name
        assert (f"[experiment] {stage.name}: " in printed) == stage.always, stage.name  # its start line
    assert "train_sft.sh" not in printed and "train_ppo.sh" not in printed
    assert _mtimes(cfg.root, stages) == written
    assert {g: r["em"]["mean"] for g, r in again["groups"].items()} == {
        g: r["em"]["mean"] for g, r in summary["groups"].items()
    }
    assert again["resumed"] and "reused stages" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def _kill_when(cmd: list[str], starts: str, log: Path, target: str) -> str:
    """Run the runner in a process group of its own and, as soon as stage ``starts`` begins, SIGKILL
    either the whole group (``runner``: the runner, its services and the stage in flight, as a lost
    terminal or node would) or only its retriever service (``retriever``); returns the output."""
    retriever = 0
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if found := re.search(r"^\[retriever\] up at \S+ \(pid (\d+)", line):
                retriever = int(found.group(1))
            if line.startswith(f"[experiment] {starts}: "):
                if target == "runner":
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                os.kill(retriever, signal.SIGKILL)
        proc.wait(timeout=600)
    expected = -signal.SIGKILL if target == "runner" else 1
    assert proc.returncode == expected, log.read_text()[-3000:]
    return log.read_text()


def test_rehearsal_of_the_paper_plan_runs_every_stage_for_real(tiny_model, tmp_path, capsys):
    """configs/experiment/rehearsal.yaml in miniature: the paper plan's stages on CPU stand-ins,
    killed mid-way once and resumed."""
    from search_r1.data.schema import read_parquet

    overrides = [
        f"out_dir={tmp_path}",
        "sft_overrides=[generate.max_questions=24,generate.n_samples=1,llamafactory.max_steps=3,llamafactory.save_steps=3,check.max_questions=8]",
        "rl_overrides=[data.train_files=outputs/rehearsal/data/qa/nq/train.parquet,trainer.total_training_steps=1,data.train_batch_size=2,actor_rollout_ref.rollout.n=2,actor_rollout_ref.actor.ppo_mini_batch_size=2]",
        "eval_overrides=[max_examples=12]",
        "verl_rehearsal_args=[rehearsal.rows=2]",
    ]
    config = CONFIG_DIR / "experiment" / "rehearsal.yaml"
    cfg = load_config(ExperimentConfig, config, overrides)
    runner = [sys.executable, "-m", "search_r1.experiment", "--config", str(config), *overrides]
    # the retriever dies while the teacher works: the teacher keeps no trajectory with a failed search,
    # exits 3, and the runner stops on that stage (nothing after it runs on a dead retriever)
    text = _kill_when(runner, "seed0/trajectories", tmp_path / "retriever_killed.log", "retriever")
    assert "seed0/trajectories failed (exit 3)" in text and "had a failed search" in text
    assert "[experiment] seed0/sft: " not in text and (tmp_path / "stages" / "baseline.done").exists()
    # killed while SFT trains: the stages before it are done and skipped by the next call, SFT runs again
    _kill_when(runner, "seed0/sft", tmp_path / "runner_killed.log", "runner")
    assert not (tmp_path / "stages" / "seed0" / "sft.done").exists()
    capsys.readouterr()
    summary = run_experiment(cfg)
    printed = capsys.readouterr().out
    for stage in ("mirror", "data", "wiki18", "baseline", "seed0/trajectories"):
        assert f"skip {stage}: done" in printed, stage
    assert "[experiment] seed0/sft: " in printed and "[retriever] up at" in printed
    assert set(summary["groups"]) == set(GROUPS)
    assert all(row["n_questions"] == 12 for row in summary["groups"].values())

    # data: the real prepare_data and wiki-18 import code, from the mirror of the world
    test = read_parquet(REPO_ROOT / "outputs/rehearsal/data/qa/nq/test.parquet")
    assert len(test) == 225 and {r["data_source"] for r in test} == {"nq"}
    manifest = json.loads((REPO_ROOT / "outputs/rehearsal/indexes/wiki18/manifest.json").read_text())
    assert manifest["dense"]["settings"]["factory"] == "prebuilt" and manifest["n_docs"] > 2000
    # teacher: every trajectory came from the OpenAI-compatible server process, and some passed the filters
    seed = tmp_path / "seed0"
    trajectories = [json.loads(line) for line in (seed / "sft" / "trajectories.jsonl").open()]
    assert len(trajectories) == 24 and {t["extra"]["teacher"] for t in trajectories} == {"openai"}
    assert json.loads((seed / "sft" / "filter_report.json").read_text())["kept"] > 0
    # SFT: a LoRA adapter trained by LLaMA-Factory, merged; train_sft.sh's own check on check.max_questions
    assert json.loads((seed / "sft" / "lora" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    check = json.loads((seed / "sft" / "eval_test.json").read_text())["results"]
    assert [r["questions"] for r in check.values()] == [8, 8]
    # RL: verl validated the runner's exact overrides and ran the agent loop in its AgentLoopWorker
    for run in ("rl_from_sft", "rl_from_base"):
        rep = json.loads((seed / "ppo" / run / "verl_rehearsal.json").read_text())
        assert rep["config"]["n_gpus_per_node"] == 7 and rep["config"]["train_batch_size"] == 448
        assert rep["episodes"] == 2 and rep["response_mask"]["ok"] and rep["retrieval_failures"] == 0
        # the trained policy as verl's sharded FSDP checkpoint, exported by the GPU path's export stage
        assert (
            len(list((seed / "ppo" / run / "global_step_1" / "actor").glob("model_world_size_2_rank_*.pt")))
            == 2
        )
    for group, run in (("rl", "rl_from_base"), ("sft_rl", "rl_from_sft")):
        evaluated = json.loads((seed / "eval" / group / "results.json").read_text())["config"]["engine"][
            "model"
        ]
        assert evaluated == str(seed / "ppo" / run / "merged")

    # resume: a second call runs only the cached builds and skips every other stage
    capsys.readouterr()
    run_experiment(cfg)
    printed = capsys.readouterr().out
    for stage in plan(cfg):
        assert (f"skip {stage.name}: done" in printed) != stage.always, stage.name
