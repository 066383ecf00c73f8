"""The paper-scale plan, checked on a CPU: what each stage runs, where, and that its configs compose."""

from __future__ import annotations

from pathlib import Path

import pytest

from search_r1.config import load_config
from search_r1.experiment import ExperimentConfig, check_plan, plan, run_experiment, services
from search_r1.paths import CONFIG_DIR, REPO_ROOT
from sft.config import SFTConfig

PAPER = CONFIG_DIR / "experiment" / "qwen2.5-3b-nq.yaml"
TINY = CONFIG_DIR / "experiment" / "tiny.yaml"


def _paper(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, PAPER, [f"out_dir={tmp_path}", *overrides])


def _arg(stage, key: str) -> str:
    return next(c.split("=", 1)[1] for c in stage.cmd if c.startswith(key + "="))


def test_paper_plan_runs_every_stage_in_its_venv_and_on_its_gpus(tmp_path) -> None:
    cfg = _paper(tmp_path)
    stages = {s.name: s for s in plan(cfg)}
    assert list(stages) == [
        "data", "wiki18", "baseline", "seed0/trajectories", "seed0/sft",
        "seed0/rl_from_sft", "seed0/rl_from_sft_export", "seed0/rl_from_base", "seed0/rl_from_base_export",
        "seed0/eval/sft", "seed0/eval/rl", "seed0/eval/sft_rl",
    ]  # fmt: skip
    svc = services(cfg)
    # the retriever alone on GPU 7; every trainer (and the teacher) on the other seven
    assert svc["retriever"].env["CUDA_VISIBLE_DEVICES"] == "7"
    for name in ("seed0/sft", "seed0/rl_from_sft", "baseline"):
        assert stages[name].env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6", name
    assert svc["teacher"].env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6"
    assert _arg(stages["seed0/rl_from_sft"], "trainer.n_gpus_per_node") == "7"
    # SFT in the LLaMA-Factory venv, RL and evaluation in the verl/vLLM venv
    assert stages["seed0/sft"].env["SEARCH_R1_VENV"] == ".venv-sft"
    assert stages["seed0/trajectories"].cmd[0] == ".venv-sft/bin/python"
    assert stages["seed0/rl_from_sft"].env["SEARCH_R1_VENV"] == ".venv-rl"
    assert stages["seed0/eval/sft"].cmd[0] == ".venv-rl/bin/python"
    # only the trajectories need the teacher: it is stopped before SFT takes its GPUs
    assert [s for s in stages if "teacher" in stages[s].services] == ["seed0/trajectories"]
    assert _arg(stages["seed0/trajectories"], "teacher.base_url") == "{teacher}"
    # a hub model needs the hub: no stage forces offline mode
    assert not any("HF_HUB_OFFLINE" in s.env for s in stages.values())


def test_paper_plan_paths_line_up(tmp_path) -> None:
    cfg = _paper(tmp_path)
    stages = {s.name: s for s in plan(cfg)}
    # SFT reads the train split prepare_data writes (the preset once read a folder nothing made)
    sft = load_config(SFTConfig, CONFIG_DIR / "sft" / "qwen2.5-3b-instruct.yaml")
    assert str(REPO_ROOT / sft.world_dir / "train.parquet") in stages["data"].outputs
    # the table is NQ test (3,610 questions), not the seven sets (~51k)
    assert _arg(stages["seed0/eval/sft"], "data") == "[outputs/data/qa/nq/test.parquet]"
    eval_cfg = (CONFIG_DIR / "eval" / "nq_3b.yaml").read_text()
    assert "nq/test.parquet" in eval_cfg and "triviaqa" not in eval_cfg
    # RL starts from what SFT merged; the standalone RL preset names the standalone SFT preset's folder
    assert _arg(stages["seed0/rl_from_sft"], "actor_rollout_ref.model.path") == str(
        tmp_path / "seed0/sft/merged"
    )
    rl_preset = (CONFIG_DIR / "rl" / "qwen2.5-3b_nq_ppo.yaml").read_text()
    assert f"path: {sft.root.relative_to(REPO_ROOT)}/merged" in rl_preset
    # verl checkpoints become the Hugging Face folders that evaluation loads
    export = stages["seed0/rl_from_base_export"]
    assert _arg(export, "out") == _arg(stages["seed0/eval/rl"], "engine.model")


def test_paper_dry_run_validates_every_config_with_verl(tmp_path, capsys) -> None:
    out = run_experiment(_paper(tmp_path, "dry_run=true"))
    assert out["problems"] == []
    printed = capsys.readouterr().out
    assert "CUDA_VISIBLE_DEVICES=7" in printed and "vllm serve" in printed and "[dry-run] ok" in printed
    assert not (tmp_path / "stages").exists()  # a dry run runs nothing


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["rl_overrides=[data.train_batch_size=512]"], "rl_from_sft: its verl config does not compose"),
        (["retriever_gpus=[8]"], "retriever_gpus [8] are not among gpus"),
        (["gpus=[7]", "retriever_gpus=[7]"], "none left for the trainers"),
        (
            ["test_files=[outputs/data/qa/nq/dev.parquet]"],
            "input outputs/data/qa/nq/dev.parquet does not exist",
        ),
        (["eval_overrides=[engine.nmae=vllm]"], "its eval config does not compose"),
    ],
)
def test_dry_run_reports_a_broken_plan(tmp_path, overrides, expected) -> None:
    cfg = _paper(tmp_path, *overrides)
    problems, _ = check_plan(cfg, plan(cfg))
    assert any(expected in p for p in problems), problems


def test_no_entry_script_forces_offline_hub_mode() -> None:
    for script in ("train_sft.sh", "train_ppo.sh", "eval.sh", "retrieval_launch.sh", "scripts/quickstart.sh"):
        assert "HF_HUB_OFFLINE=" not in (REPO_ROOT / script).read_text(), script


def test_overrides_may_stand_before_and_after_config(tmp_path) -> None:
    """``scripts/quickstart.sh publish=true --config X seeds=[0,1]``: overrides on both sides of --config."""
    from search_r1.config import parse_config
    from search_r1.experiment import ExperimentConfig

    cfg = parse_config(
        ExperimentConfig,
        "x",
        None,
        ["publish=true", "--config", str(PAPER), "seeds=[0,1]", f"out_dir={tmp_path}"],
    )
    assert cfg.publish and cfg.seeds == [0, 1] and cfg.preset == "qwen2.5-3b-nq" and cfg.root == tmp_path


def test_tiny_plan_scores_every_group_on_the_unseen_world_with_its_own_retriever(tmp_path) -> None:
    cfg = load_config(ExperimentConfig, TINY, [f"out_dir={tmp_path}", "seeds=[0,1]"])
    stages = {s.name: s for s in plan(cfg)}
    unseen = cfg.unseen_dir
    assert unseen.name == f"seed{cfg.unseen_world_seed}"
    assert str(unseen / "test.parquet") in stages["unseen_world"].outputs
    assert stages["unseen_world_index"].outputs == [str(unseen / "index" / "manifest.json")]
    names = ["unseen/baseline"] + [
        f"seed{s}/eval/unseen/{g}" for s in (0, 1) for g in ("sft", "rl", "sft_rl")
    ]
    for name in names:
        stage = stages[name]
        assert stage.services == ("unseen_retriever",), name
        assert (
            f"data=[{unseen / 'test.parquet'}]" in stage.cmd
            and "retriever_url={unseen_retriever}" in stage.cmd
        )
    for name in ["baseline"] + [f"seed{s}/eval/{g}" for s in (0, 1) for g in ("sft", "rl", "sft_rl")]:
        assert stages[name].services == ("retriever",) and "retriever_url={retriever}" in stages[name].cmd
    # no stage other than the unseen world's evaluations reads it
    readers = {s.name for s in stages.values() if any(str(unseen) in i for i in s.inputs)}
    assert readers == {"unseen_world_index", *names}
    svc = services(cfg)["unseen_retriever"]
    assert f"index_dir={unseen / 'index'}" in svc.cmd and "backend=dense" in svc.cmd


def test_an_unseen_world_the_student_is_distilled_on_is_refused(tmp_path) -> None:
    cfg = load_config(ExperimentConfig, TINY, [f"out_dir={tmp_path}", "unseen_world_seed=2"])
    with pytest.raises(ValueError, match=r"unseen_world_seed=2 is one of the SFT practice worlds \[1, 2\]"):
        plan(cfg)
    with pytest.raises(ValueError, match="need the embedded world"):
        plan(load_config(ExperimentConfig, PAPER, [f"out_dir={tmp_path}", "unseen_world_seed=100"]))


def test_rl_runs_train_on_the_rl_world_questions_their_start_solves_sometimes(tmp_path) -> None:
    cfg = load_config(
        ExperimentConfig,
        TINY,
        [f"out_dir={tmp_path}", "rl_world_seed=4", "rl_select=[max_questions=32,min_keep=8]"],
    )
    stages = {s.name: s for s in plan(cfg)}
    world = cfg.rl_world_dir
    assert stages["rl_world_index"].outputs == [str(world / "index" / "manifest.json")]
    for name, start in (
        ("rl_from_sft", str(tmp_path / "seed0" / "sft" / "merged")),
        ("rl_from_base", cfg.base_model),
    ):
        select, train = stages[f"seed0/{name}_select"], stages[f"seed0/{name}"]
        selected = str(tmp_path / "seed0" / "ppo" / name / "select.parquet")
        assert select.services == train.services == ("rl_retriever",)
        assert _arg(select, "model") == start and _arg(select, "train_files") == str(world / "train.parquet")
        assert _arg(select, "retriever.url") == "{rl_retriever}" and _arg(select, "min_keep") == "8"
        assert select.outputs == [selected] and _arg(train, "data.train_files") == selected
        assert _arg(train, "retriever.url") == "{rl_retriever}"
        order = list(stages)
        assert order.index(select.name) < order.index(train.name)
    svc = services(cfg)["rl_retriever"]
    assert f"index_dir={world / 'index'}" in svc.cmd
    # the evaluations still search the world's own index
    assert stages["seed0/eval/sft_rl"].services == ("retriever",)
    problems, _ = check_plan(cfg, list(stages.values()))
    assert not [p for p in problems if "compose" in p], problems

    with pytest.raises(ValueError, match="rl_world_seed=1 is one of the SFT practice worlds"):
        plan(load_config(ExperimentConfig, TINY, [f"out_dir={tmp_path}", "rl_world_seed=1"]))
    with pytest.raises(ValueError, match="is the RL world"):
        plan(load_config(ExperimentConfig, TINY, [f"out_dir={tmp_path}", "rl_world_seed=100"]))
