"""Practice worlds: counterfactual copies of a world for the SFT teacher to search in.

A practice world recasts the world's non-famous names with freshly drawn facts (``kb.recast_kb``,
the same draw as the tiny model's reading practice) and is built like the world itself: corpus,
questions and parquet splits. Nothing in it is a famous entity, so no practice fact competes with
what the base model knows by heart, and nothing in it is true of the world, so a student trained on
its trajectories can only answer by reading the observation.

Why SFT needs them: on the world's 820 training trajectories alone the student memorises its
training answers (train EM 0.83, test 0.07); with the trajectories of two practice worlds added it
reads, and test EM rises from 0.12 to 0.35 (``docs/benchmarks.md``, SFT, session 5).

    python -m search_r1.world.practice seed=1          # outputs/world/practice/seed1
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.config import entry_point, parse_config, to_dict
from search_r1.paths import WORLD_DIR
from search_r1.world.build import World, WorldConfig, build_world
from search_r1.world.kb import name_pools, recast_kb

STAMP = "practice.json"  # the world it recasts (kb.json sha256) and the config it was built from


@dataclass
class PracticeWorldConfig:
    world_dir: str = field(default=str(WORLD_DIR), metadata={"help": "the world whose names are recast"})
    seed: int = field(default=1, metadata={"help": "seed of the fresh facts; one practice world per seed"})
    out_dir: str = field(default="", metadata={"help": "'' = <world_dir>/practice/seed<seed>"})
    split_fractions: list[float] = field(
        default_factory=lambda: [0.9, 0.05, 0.05],
        metadata={"help": "train/dev/test share of subjects (SFT uses train; dev/test stay held out)"},
    )

    @property
    def root(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path(self.world_dir) / "practice" / f"seed{self.seed}"


def ensure_practice_world(cfg: PracticeWorldConfig, verbose: bool = True) -> World:
    """The practice world of ``cfg``, rebuilt only when missing or stale (another source world or
    config). The same source and seed give the same files byte for byte."""
    source = World(Path(cfg.world_dir))
    if not source.exists():
        raise FileNotFoundError(f"no world at {source.root} to recast (python -m search_r1.world.build)")
    raw_kb = source.kb.read_bytes()
    kb = json.loads(raw_kb)
    base = json.loads(source.manifest.read_text())["config"]
    stamp = {
        "source_kb_sha256": hashlib.sha256(raw_kb).hexdigest(),
        "config": to_dict(cfg) | {"world_dir": None, "out_dir": None},
    }
    world = World(cfg.root)
    stamp_path = world.root / STAMP
    if world.exists() and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return world
    pools = name_pools(kb)
    world_cfg = WorldConfig(
        seed=cfg.seed,
        out_dir=str(world.root),
        n_countries=len(pools["country"]),
        n_cities=len(pools["city"]),
        n_people=min(len(pools["first"]), len(pools["last"])),
        n_companies=len(pools["company"]),
        known_fraction=0.0,  # the base model knows none of it
        split_fractions=cfg.split_fractions,
        max_wiki_passages=base["max_wiki_passages"],
        prompt_template=base["prompt_template"],
    )
    build_world(world_cfg, verbose, kb_factory=lambda rng: recast_kb(pools, rng))
    stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True))
    return world


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PracticeWorldConfig, __doc__.splitlines()[0], None, argv)
    world = ensure_practice_world(cfg)
    print(f"[practice] ready: {world.root}")


if __name__ == "__main__":
    main()
