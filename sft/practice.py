"""Teacher trajectories on practice worlds (``search_r1.world.practice``) for the SFT set.

Each practice world gets its own index and retriever: worlds share their names with different
facts, so one index over all of them would answer a query about a name from the wrong world. The
retriever is served with the backend of the world's own retriever (``generate.retriever_url``), so
practice observations look like the ones the student sees in RL and evaluation. Each world's
trajectories go to ``<run_dir>/practice/seed<seed>.jsonl`` with uids prefixed ``p<seed>-``;
generation resumes there as it does for the world.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from search_r1.agent.protocol import ProtocolConfig
from search_r1.config import load_config
from search_r1.paths import CONFIG_DIR
from search_r1.retrieval.build import build_index
from search_r1.retrieval.client import RetrieverClient
from search_r1.retrieval.config import BuildConfig
from search_r1.retrieval.process import RetrieverProcess
from search_r1.world.build import World
from search_r1.world.practice import PracticeWorldConfig, ensure_practice_world
from sft.config import SFTConfig
from sft.generate import generate_world, load_questions, missing

INDEX_PARTS = {"dense": ["dense"], "bm25": ["bm25"], "hybrid": ["dense", "bm25"]}


def index_practice_world(world: World, backend: str) -> Path:
    """Build (or reuse) ``<practice world>/index`` with what ``backend`` serves, settings as the world's."""
    if backend not in INDEX_PARTS:
        raise ValueError(f"practice worlds need a dense, bm25 or hybrid retriever, not {backend!r}")
    parts = ",".join(INDEX_PARTS[backend])
    overrides = [f"corpus={world.corpus}", f"out_dir={world.root / 'index'}", f"backends=[{parts}]"]
    return build_index(load_config(BuildConfig, CONFIG_DIR / "retriever" / "build_world.yaml", overrides))


def generate_practice(
    cfg: SFTConfig, tokenizer: PreTrainedTokenizerBase, protocol: ProtocolConfig
) -> list[Path]:
    """Build, index, serve and generate each of ``cfg.practice.worlds`` practice worlds in turn;
    returns their trajectory files. A world whose file is complete is skipped without a server."""
    paths, backend = [], ""
    for seed in cfg.practice_seeds:
        world = ensure_practice_world(PracticeWorldConfig(world_dir=cfg.world_dir, seed=seed))
        parquet = world.root / f"{cfg.generate.split}.parquet"
        questions = load_questions(parquet, cfg.generate.max_questions, source=f"p{seed}")
        out = cfg.practice_trajectories(seed)
        paths.append(out)
        if not missing(out, questions, cfg.generate.n_samples):
            print(f"[sft.practice] seed {seed}: {out} is complete")
            continue
        if not backend:  # asked only when there is work, so a finished run needs no retriever
            with RetrieverClient(cfg.generate.retriever_url, max_retries=1) as client:
                backend = client.health()["backend"]
        index = index_practice_world(world, backend)
        log = out.with_suffix(".retriever.log")
        with RetrieverProcess("", str(index), [f"backend={backend}"], log) as url:
            print(f"[sft.practice] seed {seed}: {len(questions)} questions, {backend} retriever at {url}")
            generate_world(cfg, world.root, url, tokenizer, protocol, questions, out)
    return paths
