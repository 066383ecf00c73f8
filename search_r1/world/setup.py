"""Build-if-missing for the embedded default: the world, then the tiny base model.

Used by the entry scripts and the test fixtures, so everything agrees on one cached copy. The tiny
model's pretraining takes about 25 minutes on two cores, so the repository ships the result of the
committed config (``data/models/tiny-base``, 9 MB); it is used only when its cache key matches this
world and ``configs/world/tiny_model.yaml``, otherwise the model is rebuilt from scratch.

``python -m search_r1.world fixtures`` also builds what the tests share beyond these (the world's
index, the practice world the RL tests learn on and its index, the tiny SFT model): ``scripts/test.sh``
runs it before pytest, so no test's timeout is spent on a build. Every step is a cache lookup when the
files are there. The heavy modules (torch, the index builders) are imported inside the functions, so a
mistyped argument is answered before any of them loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from search_r1.config import OneLineParser, load_config, to_dict
from search_r1.paths import CONFIG_DIR, FIXTURE_DIR, INDEX_DIR, MODELS_DIR, REPO_ROOT, RUNS_DIR, WORLD_DIR

if TYPE_CHECKING:
    from search_r1.world.build import World

SFT_CONFIG = CONFIG_DIR / "sft" / "tiny.yaml"  # the preset the RL tests start from


def ensure_world(root: Path = WORLD_DIR) -> World:
    """The default world at ``root``, rebuilt only when missing or built from another config."""
    from search_r1.world.build import World, WorldConfig, build_world

    cfg = load_config(WorldConfig, CONFIG_DIR / "world" / "default.yaml", [f"out_dir={root}"])
    world = World(Path(root))
    expected = to_dict(cfg) | {"out_dir": None}
    if world.exists() and json.loads(world.manifest.read_text())["config"] == expected:
        return world
    return build_world(cfg)


SHIPPED_TINY_MODEL = FIXTURE_DIR / "models" / "tiny-base"


def ensure_tiny_model(
    world: World, out_dir: Path = MODELS_DIR / "tiny-base", shipped: Path | None = SHIPPED_TINY_MODEL
) -> Path:
    """The tiny base model for ``world`` at ``out_dir``: the cached build, else a copy of the
    ``shipped`` one when it was built from the same world and config, else a fresh build."""
    from search_r1.world.tiny_model import TinyModelConfig, build_tiny_model, is_cached

    cfg = load_config(
        TinyModelConfig,
        CONFIG_DIR / "world" / "tiny_model.yaml",
        [f"world_dir={world.root}", f"out_dir={out_dir}"],
    )
    if is_cached(cfg):
        return Path(cfg.out_dir)
    if shipped is not None and is_cached(replace(cfg, out_dir=str(shipped))):
        print(f"[tiny-model] using the shipped build {shipped} -> {cfg.out_dir}")
        shutil.copytree(shipped, cfg.out_dir, dirs_exist_ok=True)
        return Path(cfg.out_dir)
    return build_tiny_model(cfg)


def ensure_world_index(world: World) -> Path:
    """The world's MiniLM + BM25 index at ``$SEARCH_R1_HOME/indexes/world``: what ``retrieval_launch.sh``
    and ``train_sft.sh`` serve by default (``build_index`` skips every part already built)."""
    from search_r1.retrieval.build import build_index
    from search_r1.retrieval.config import BuildConfig

    overrides = [f"corpus={world.corpus}", f"out_dir={INDEX_DIR / 'world'}"]
    return build_index(load_config(BuildConfig, CONFIG_DIR / "retriever" / "build_world.yaml", overrides))


def ensure_unseen_practice_world(world: World) -> tuple[Path, Path]:
    """(train parquet, dense index) of the first practice world the tiny SFT preset does not distil
    (its seeds are ``practice_seeds``): the RL tests learn on questions SFT has not seen."""
    from search_r1.world.practice import PracticeWorldConfig, ensure_practice_world
    from sft.config import SFTConfig
    from sft.practice import index_practice_world

    seed = max(load_config(SFTConfig, SFT_CONFIG).practice_seeds) + 1
    practice = ensure_practice_world(PracticeWorldConfig(world_dir=str(world.root), seed=seed))
    return practice.train, index_practice_world(practice, "dense")


def ensure_sft_model(tiny_model: Path) -> Path:
    """The tiny preset's SFT model: the shipped one (``sft.ship``) while its key matches the committed
    configs; otherwise ``train_sft.sh`` runs, keyed by the recipe (about 16 minutes on 2 cores)."""
    from sft.config import SFTConfig
    from sft.ship import sft_key, shipped_sft_model

    cfg = load_config(SFTConfig, SFT_CONFIG, [f"model={tiny_model}"])
    if (shipped := shipped_sft_model(cfg)) is not None:
        return shipped
    run_dir = RUNS_DIR / "rl_tests" / f"sft-{sft_key(cfg)}"
    if not (run_dir / "merged" / "config.json").exists():
        env = os.environ | {"SFT_SKIP_EVAL": "1"}
        subprocess.run(["bash", "train_sft.sh", f"run_dir={run_dir}"], cwd=REPO_ROOT, env=env, check=True)
    return run_dir / "merged"


def ensure_fixtures() -> None:
    """Every cached file the tests share (``scripts/test.sh`` builds them before pytest)."""
    world = ensure_world()
    model = ensure_tiny_model(world)
    index = ensure_world_index(world)
    practice, practice_index = ensure_unseen_practice_world(world)
    sft = ensure_sft_model(model)
    print(
        f"[world] fixtures ready: {world.root}, {model}, {index}, {practice.parent} ({practice_index}), {sft}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(
        prog="python -m search_r1.world",
        description="Build (or find cached) the embedded world and its tiny base model; with `fixtures`, "
        "every cached file the tests share as well.",
    )
    parser.add_argument("what", nargs="?", choices=["fixtures"], help="also build the test fixtures")
    args = parser.parse_args(argv)
    if args.what == "fixtures":
        ensure_fixtures()
        return
    world = ensure_world()
    model = ensure_tiny_model(world)
    print(f"[world] ready: world {world.root}, tiny base model {model}")


if __name__ == "__main__":
    main()
