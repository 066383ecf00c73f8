"""Counterfactual worlds beside the embedded one: the unseen world every group is scored on, and the
world the RL runs train on. Each is a practice world (``search_r1.world.practice``) with its own index.
"""

from __future__ import annotations

from pathlib import Path

from search_r1.config import load_config
from search_r1.experiment.config import ExperimentConfig
from search_r1.experiment.stages import Stage, python
from search_r1.paths import WORLD_DIR
from search_r1.world.practice import PracticeWorldConfig

PRACTICE_SPLITS = PracticeWorldConfig().split_fractions  # a practice world as SFT builds one


def served_parts(cfg: ExperimentConfig) -> str:
    """The index parts the experiment's retriever serves (``backend=`` of ``retriever_args``), built
    the way SFT indexes its practice worlds, so a world indexed by either is reused by the other."""
    from sft.practice import INDEX_PARTS

    backend = next((a.split("=", 1)[1] for a in cfg.retriever_args if a.startswith("backend=")), "dense")
    if backend not in INDEX_PARTS:
        raise ValueError(f"counterfactual worlds need a dense, bm25 or hybrid retriever, not {backend!r}")
    return ",".join(INDEX_PARTS[backend])


def practice_world_stages(
    cfg: ExperimentConfig, name: str, seed: int, world: Path, fractions: list[float]
) -> list[Stage]:
    """A counterfactual world (``search_r1.world.practice``) and its own index, both cached by their
    own builds (so they run every time)."""
    py = python(cfg.venv_rl)
    split = ",".join(map(str, fractions))
    return [
        Stage(
            name,
            [py, "-m", "search_r1.world.practice", f"seed={seed}", f"out_dir={world}", f"split_fractions=[{split}]"],
            always=True,
            inputs=[str(WORLD_DIR / "kb.json")],
            outputs=[str(world / "train.parquet"), str(world / "test.parquet"), str(world / "corpus.jsonl")],
        ),
        Stage(
            f"{name}_index",
            [
                py, "scripts/build_index.py", f"corpus={world / 'corpus.jsonl'}", f"out_dir={world / 'index'}",
                f"backends=[{served_parts(cfg)}]",
            ],
            always=True,
            inputs=[str(world / "corpus.jsonl")],
            outputs=[str(world / "index" / "manifest.json")],
        ),
    ]  # fmt: skip


def check_worlds(cfg: ExperimentConfig) -> None:
    """The unseen world must be one no stage trains on, and the RL world one SFT did not distil on."""
    from sft.config import SFTConfig

    if not cfg.embedded_world:
        raise ValueError("unseen_world_seed and rl_world_seed need the embedded world (embedded_world=true)")
    if not 0 < cfg.unseen_test_fraction <= 1:
        raise ValueError(f"unseen_test_fraction must be in (0, 1], got {cfg.unseen_test_fraction}")
    overrides = [o for o in cfg.sft_overrides if "{" not in o]
    practice = load_config(SFTConfig, Path(cfg.sft_config), overrides).practice_seeds
    for key in ("unseen_world_seed", "rl_world_seed"):
        if getattr(cfg, key) in practice:
            raise ValueError(
                f"{key}={getattr(cfg, key)} is one of the SFT practice worlds {practice}: the student is "
                "distilled on it"
            )
    if cfg.unseen_world_seed is not None and cfg.unseen_world_seed == cfg.rl_world_seed:
        raise ValueError(f"unseen_world_seed={cfg.unseen_world_seed} is the RL world: RL trains on it")
