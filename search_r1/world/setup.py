"""Build-if-missing for the embedded default: the world, then the tiny base model.

Used by the entry scripts and the test fixtures, so everything agrees on one cached copy. The tiny
model's pretraining takes about 25 minutes on two cores, so the repository ships the result of the
committed config (``data/models/tiny-base``, 9 MB); it is used only when its cache key matches this
world and ``configs/world/tiny_model.yaml``, otherwise the model is rebuilt from scratch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from search_r1.config import load_config, to_dict
from search_r1.paths import CONFIG_DIR, FIXTURE_DIR, MODELS_DIR, WORLD_DIR
from search_r1.world.build import World, WorldConfig, build_world
from search_r1.world.tiny_model import TinyModelConfig, build_tiny_model, is_cached


def ensure_world(root: Path = WORLD_DIR) -> World:
    """The default world at ``root``, rebuilt only when missing or built from another config."""
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


def main() -> None:
    world = ensure_world()
    model = ensure_tiny_model(world)
    print(f"[world] ready: world {world.root}, tiny base model {model}")


if __name__ == "__main__":
    main()
