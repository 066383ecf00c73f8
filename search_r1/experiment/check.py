"""The dry run's checks: what a machine without GPUs can verify of a plan before a GPU node runs it."""

from __future__ import annotations

from pathlib import Path

from search_r1.config import load_config
from search_r1.experiment.config import ExperimentConfig
from search_r1.experiment.stages import Stage, line_up
from search_r1.paths import FIXTURE_DIR, REPO_ROOT


def check_plan(cfg: ExperimentConfig, stages: list[Stage]) -> tuple[list[str], list[str]]:
    """What a machine without GPUs can check of a plan: (problems, notes)."""
    problems, notes = line_up(stages), []
    if not set(cfg.retriever_gpus) <= set(cfg.gpus):
        problems.append(f"retriever_gpus {cfg.retriever_gpus} are not among gpus {cfg.gpus}")
    if cfg.gpus and not cfg.train_gpus:
        problems.append("every GPU is the retriever's: none left for the trainers")
    for venv in {cfg.venv_sft, cfg.venv_rl} - {""}:
        if not (REPO_ROOT / venv / "bin" / "python").exists():  # stages run from the repository root
            notes.append(
                f"venv {venv} is not on this machine (docs/environments.md creates it on the GPU node)"
            )
    fake = {
        "retriever": "http://127.0.0.1:8000",
        "unseen_retriever": "http://127.0.0.1:8002",
        "rl_retriever": "http://127.0.0.1:8003",
        "teacher": "http://127.0.0.1:8001/v1",
    }
    for stage in stages:
        if stage.config is None:
            continue
        kind, config, overrides = stage.config
        overrides = [o.format(**fake) if "{" in o else o for o in overrides]
        if kind == "verl":  # verl reads the model's config: a model a later stage makes gets a stand-in
            overrides, note = _stand_in_model(overrides)
            notes += [f"{stage.name}: {note}"] if note else []
        try:
            compose(kind, config, overrides)
        except Exception as exc:  # any composition failure is a finding of the dry run
            problems.append(f"{stage.name}: its {kind} config does not compose: {exc}")
    return problems, notes


def _stand_in_model(overrides: list[str]) -> tuple[list[str], str]:
    key = "actor_rollout_ref.model.path="
    path = next((o[len(key) :] for o in overrides if o.startswith(key)), "")
    if not path or (REPO_ROOT / path).exists():
        return overrides, ""
    stand_in = FIXTURE_DIR / "models" / "tiny-sft"
    note = f"verl validated with {stand_in} in place of {path} (not on this machine yet)"
    return [key + str(stand_in) if o.startswith(key) else o for o in overrides], note


def compose(kind: str, config: str, overrides: list[str]) -> None:
    """Build a stage's config as its entry point would; for verl, compose and validate it (verl's
    ``validate_config``), which is what ``train_ppo.sh`` runs before verl's trainer."""
    if kind == "verl":
        from search_r1.rl.verl_config import check

        check(Path(config).stem, overrides)
        return
    if kind == "sft":
        from sft.config import SFTConfig as cls
    elif kind == "eval":
        from search_r1.eval.run import EvalConfig as cls
    else:
        from search_r1.rl.config import PPOConfig as cls
    load_config(cls, Path(config), overrides)
