"""Build the embedded world: corpus, questions and verl parquet splits, deterministically from a seed.

    python -m search_r1.world.build                 # outputs/world/
    python -m search_r1.world.build seed=1 out_dir=/tmp/w

The same seed and config give the same files byte for byte (``manifest.json`` lists their sha256).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from search_r1.config import entry_point, parse_config, to_dict
from search_r1.data.corpus import Doc, make_contents, write_corpus
from search_r1.data.schema import QAExample, write_parquet
from search_r1.paths import CONFIG_DIR, WORLD_DIR
from search_r1.world.kb import KnowledgeBase, generate_kb
from search_r1.world.questions import WorldQuestion, generate_questions
from search_r1.world.wiki import iter_wiki_passages

DATA_SOURCE = "world"
SPLITS = ("train", "dev", "test")


@dataclass
class WorldConfig:
    seed: int = field(default=0, metadata={"help": "seed for every random choice; same seed, same files"})
    out_dir: str = field(default=str(WORLD_DIR), metadata={"help": "where to write the world"})
    n_countries: int = field(default=12, metadata={"help": "fictional countries"})
    n_cities: int = field(default=48, metadata={"help": "fictional cities (each country gets at least one)"})
    n_people: int = field(default=200, metadata={"help": "fictional people"})
    n_companies: int = field(default=48, metadata={"help": "fictional companies"})
    known_fraction: float = field(
        default=0.3, metadata={"help": "share of entities the tiny base model memorises (its 'known facts')"}
    )
    split_fractions: list[float] = field(
        default_factory=lambda: [0.7, 0.1, 0.2], metadata={"help": "train/dev/test share of subject entities"}
    )
    max_wiki_passages: int = field(
        default=2000, metadata={"help": "real Wikipedia distractor passages (-1 = all ~4.9k)"}
    )
    prompt_template: str = field(default="compact", metadata={"help": "prompt template for the parquet rows"})

    def __post_init__(self) -> None:
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be three shares summing to 1, got {self.split_fractions}")
        if not 0 <= self.known_fraction <= 1:
            raise ValueError(f"known_fraction must be in [0, 1], got {self.known_fraction}")


@dataclass
class World:
    """Paths of a built world (what the other stages and the tests consume)."""

    root: Path

    corpus = property(lambda self: self.root / "corpus.jsonl")
    questions = property(lambda self: self.root / "questions.jsonl")
    kb = property(lambda self: self.root / "kb.json")
    manifest = property(lambda self: self.root / "manifest.json")
    train = property(lambda self: self.root / "train.parquet")
    dev = property(lambda self: self.root / "dev.parquet")
    test = property(lambda self: self.root / "test.parquet")

    def exists(self) -> bool:
        return self.manifest.exists()


def _assign_splits(kb: KnowledgeBase, rng: random.Random, fractions: list[float]) -> dict[str, str]:
    names = [e.name for e in kb.entities]
    rng.shuffle(names)
    n_train = round(fractions[0] * len(names))
    n_dev = round(fractions[1] * len(names))
    return {
        n: ("train" if i < n_train else "dev" if i < n_train + n_dev else "test") for i, n in enumerate(names)
    }


def _corpus(kb: KnowledgeBase, rng: random.Random, max_wiki: int) -> list[Doc]:
    docs = [Doc(e.doc_id, make_contents(e.name, e.passage)) for e in kb.entities]
    wiki = list(iter_wiki_passages())
    if max_wiki >= 0:
        wiki = rng.sample(wiki, min(max_wiki, len(wiki)))
    docs += [Doc(f"wiki-{i}", make_contents(title, text)) for i, (title, text) in enumerate(wiki)]
    rng.shuffle(docs)
    return docs


def build_world(
    cfg: WorldConfig,
    verbose: bool = True,
    kb_factory: Callable[[random.Random], KnowledgeBase] | None = None,
) -> World:
    """Generate every file of the world into ``cfg.out_dir``.

    ``kb_factory`` replaces the freshly named knowledge base (``generate_kb`` with ``cfg``'s sizes);
    practice worlds (``search_r1.world.practice``) pass one that recasts another world's names."""
    start = time.time()
    log = print if verbose else (lambda *a, **k: None)
    world = World(Path(cfg.out_dir))
    world.root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(cfg.seed)

    if kb_factory is not None:
        kb = kb_factory(rng)
    else:
        kb = generate_kb(rng, cfg.n_countries, cfg.n_cities, cfg.n_people, cfg.n_companies)
    log(f"[world] {len(kb.entities)} fictional entities")
    famous = {e.name for e in kb.entities if rng.random() < cfg.known_fraction}
    split_of = _assign_splits(kb, rng, cfg.split_fractions)
    docs = _corpus(kb, rng, cfg.max_wiki_passages)
    write_corpus(docs, world.corpus)
    log(f"[world] corpus: {len(docs)} passages ({len(kb.entities)} fictional) -> {world.corpus}")

    questions = generate_questions(kb)
    records = []
    for q in questions:
        rec = asdict(q) | {"split": split_of[q.subject], "known": all(n in famous for n in q.entities)}
        records.append(rec)
    with world.questions.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    world.kb.write_text(
        json.dumps(
            {"famous": sorted(famous), "entities": [asdict(e) | {"doc_id": e.doc_id} for e in kb.entities]},
            ensure_ascii=False,
            indent=1,
        ),
        encoding="utf-8",
    )
    for split in SPLITS:
        rows = [r for r in records if r["split"] == split]
        examples = [
            QAExample(
                id=f"{split}-{i}",
                question=r["question"],
                golden_answers=[r["answer"]],
                data_source=DATA_SOURCE,
                split=split,
                extra={k: r[k] for k in ("hops", "known", "relation", "support")},
            )
            for i, r in enumerate(rows)
        ]
        write_parquet(examples, getattr(world, split), template=cfg.prompt_template)
        known = sum(r["known"] for r in rows)
        two_hop = sum(r["hops"] == 2 for r in rows)
        log(f"[world] {split}: {len(rows)} questions ({two_hop} two-hop, {known} known to the base model)")

    files = [world.corpus, world.questions, world.kb, world.train, world.dev, world.test]
    manifest = {
        "config": to_dict(cfg) | {"out_dir": None},
        "files": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files},
    }
    world.manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    log(f"[world] done in {time.time() - start:.1f}s -> {world.root}")
    return world


def load_questions(world: World) -> list[WorldQuestion | dict]:
    """The question records (dicts with split/known added) in file order."""
    with world.questions.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(WorldConfig, __doc__.splitlines()[0], CONFIG_DIR / "world" / "default.yaml", argv)
    build_world(cfg)


if __name__ == "__main__":
    main()
