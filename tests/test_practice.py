"""Practice worlds: counterfactual copies of the world, and the SFT teacher searching them for real
(their own bm25 index and retriever process), merged with the world's trajectories by the filters."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from search_r1.agent.protocol import ProtocolConfig
from search_r1.agent.trajectory import Trajectory
from search_r1.data.corpus import iter_corpus
from search_r1.paths import CONFIG_DIR
from search_r1.retrieval.process import RetrieverProcess
from search_r1.rewards.metrics import exact_match
from search_r1.world.build import World
from search_r1.world.practice import PracticeWorldConfig, ensure_practice_world
from sft.config import SFTConfig
from sft.filters import main as filters_main
from sft.generate import generate_world, load_questions, read_records
from sft.practice import generate_practice

N_QUESTIONS = 12


def _kb(world: World) -> dict:
    return json.loads(world.kb.read_text(encoding="utf-8"))


@pytest.fixture
def world_copy(world, tmp_path) -> World:
    """The world's files in a scratch folder, so practice worlds are built beside it there."""
    shutil.copytree(world.root, tmp_path / "world", ignore=shutil.ignore_patterns("practice"))
    return World(tmp_path / "world")


def test_practice_world_recasts_unknown_names_with_new_facts(world_copy):
    cfg = PracticeWorldConfig(world_dir=str(world_copy.root), seed=1)
    practice = ensure_practice_world(cfg, verbose=False)
    real, fake = _kb(world_copy), _kb(practice)
    famous = set(real["famous"])

    assert fake["famous"] == []
    assert all(not q["known"] for q in map(json.loads, practice.questions.open()))
    # no famous entity appears anywhere in the practice passages: nothing competes with memorised facts
    passages = [d.text for d in iter_corpus(practice.corpus) if d.id.startswith("kb-")]
    assert len(passages) == len(fake["entities"])
    assert not [n for n in famous if any(n in p for p in passages)]
    # the names are the world's own (so the student copies familiar tokens) ...
    real_cities = {e["name"]: e["attrs"] for e in real["entities"] if e["kind"] == "city"}
    fake_cities = {e["name"]: e["attrs"] for e in fake["entities"] if e["kind"] == "city"}
    assert set(fake_cities) == set(real_cities) - famous
    # ... with facts drawn afresh: most cities lie in another country or were founded in another year
    same = [n for n, a in fake_cities.items() if a == real_cities[n]]
    assert len(same) <= len(fake_cities) // 10

    # cached: the same call reuses the files; another seed draws other facts
    mtime = practice.manifest.stat().st_mtime_ns
    assert ensure_practice_world(cfg, verbose=False).manifest.stat().st_mtime_ns == mtime
    other = ensure_practice_world(PracticeWorldConfig(world_dir=str(world_copy.root), seed=2), verbose=False)
    assert other.kb.read_bytes() != practice.kb.read_bytes()


def test_teacher_searches_practice_worlds_and_filters_merge_them(world_copy, tiny_model, tmp_path):
    from search_r1.retrieval.build import build_index
    from search_r1.retrieval.config import BuildConfig

    index = build_index(
        BuildConfig(corpus=str(world_copy.corpus), out_dir=str(tmp_path / "index"), backends=["bm25"])
    )
    tok = AutoTokenizer.from_pretrained(tiny_model)
    protocol = ProtocolConfig.from_yaml(CONFIG_DIR / "agent" / "tiny.yaml")
    with RetrieverProcess("", str(index), ["backend=bm25"], tmp_path / "retriever.log") as url:
        cfg = SFTConfig(model=str(tiny_model), world_dir=str(world_copy.root), run_dir=str(tmp_path / "run"))
        cfg.generate.retriever_url, cfg.generate.max_questions, cfg.generate.n_samples = url, N_QUESTIONS, 1
        cfg.practice.worlds, cfg.practice.seed = 1, 3
        questions = load_questions(world_copy.train, N_QUESTIONS)
        generate_world(cfg, world_copy.root, url, tok, protocol, questions)
        (path,) = generate_practice(cfg, tok, protocol)

    assert path == cfg.practice_trajectories(3)
    practice = World(world_copy.root / "practice" / "seed3")
    docs = {d.id: d.text for d in iter_corpus(practice.corpus)}
    trajs = [Trajectory.from_dict(r) for r in read_records(path)]
    assert len(trajs) == N_QUESTIONS
    for t in trajs:
        assert t.uid.startswith("p3-world-train-") and t.extra["source"] == "p3"
        assert t.finish_reason == "answer" and exact_match(t.final_answer, t.extra["golds"]) == 1.0
        # every hop was searched in the practice world's own index: its passages were observed
        support = t.extra["meta"]["support"]
        assert t.num_searches == len(support)
        observed = "".join(turn.observation for turn in t.turns)
        assert all(docs[d] in observed for d in support), t.uid

    # complete: a rerun starts no retriever (the world's retriever is gone) and changes nothing
    before = path.read_bytes()
    assert generate_practice(cfg, tok, protocol) == [path]
    assert path.read_bytes() == before

    overrides = [f"model={tiny_model}", f"world_dir={world_copy.root}", f"run_dir={cfg.root}"]
    filters_main([*overrides, "practice.worlds=1", "practice.seed=3"])
    report = json.loads(cfg.filter_report.read_text())
    assert report["input"] == 2 * N_QUESTIONS
    assert set(report["sources"]) == {"world", "p3"} and report["sources"]["p3"] > N_QUESTIONS // 2
    kept = [json.loads(line)["uid"] for line in cfg.filtered.open()]
    assert len(kept) == len(set(kept)) == report["kept"]
