"""Teacher generation: the oracle through the shared rollout, crash-resume, and the filters."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sft_helpers import TitleRetriever
from transformers import AutoTokenizer

from search_r1.agent.protocol import ProtocolConfig
from search_r1.agent.trajectory import Trajectory
from search_r1.paths import CONFIG_DIR, REPO_ROOT
from search_r1.rewards.metrics import exact_match
from sft.config import FilterConfig, SFTConfig
from sft.filters import balance, select
from sft.generate import generate, load_questions, read_records, recover
from sft.oracle import OracleTeacher, load_oracle_questions

N_QUESTIONS = 24

# Generation in a child process with a slow retriever, so the parent can SIGKILL it mid-run.
CHILD = """
import asyncio
from pathlib import Path
from search_r1.world.build import World
from test_sft_generate import SlowRetriever, run_generation
world = World(Path({world!r}))
asyncio.run(run_generation(world, Path({tok!r}), Path({run_dir!r}), SlowRetriever(world.corpus, 0.3)))
"""


@pytest.fixture(scope="module")
def tok_dir(tiny_model) -> Path:
    """The tiny preset's own tokenizer: its turn budget (64 tokens) is sized for it."""
    return tiny_model


def make_cfg(world, tok_dir: Path, run_dir: Path) -> SFTConfig:
    cfg = SFTConfig(model=str(tok_dir), world_dir=str(world.root), run_dir=str(run_dir))
    cfg.generate.n_samples, cfg.generate.batch_size, cfg.generate.max_questions = 2, 4, N_QUESTIONS
    return cfg


async def run_generation(world, tok_dir: Path, run_dir: Path, retriever=None) -> Path:
    cfg = make_cfg(world, tok_dir, run_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    oracle = OracleTeacher(tok, load_oracle_questions(world.questions))
    protocol = ProtocolConfig.from_yaml(CONFIG_DIR / "agent" / "tiny.yaml")
    questions = load_questions(world.train, N_QUESTIONS)
    return await generate(cfg, oracle, tok, retriever or TitleRetriever(world.corpus), questions, protocol)


class SlowRetriever(TitleRetriever):
    def __init__(self, corpus: Path, delay: float):
        super().__init__(corpus)
        self.delay = delay

    async def retrieve(self, queries, topk=None):
        await asyncio.sleep(self.delay)
        return await super().retrieve(queries, topk)


def test_oracle_trajectories_are_correct_and_varied(world, tok_dir, tmp_path):
    path = asyncio.run(run_generation(world, tok_dir, tmp_path))
    recs = [Trajectory.from_dict(r) for r in read_records(path)]
    assert len(recs) == 2 * N_QUESTIONS
    assert all(t.finish_reason == "answer" for t in recs)
    assert all(exact_match(t.final_answer, t.extra["golds"]) == 1.0 for t in recs)
    for t in recs:
        hops, known = t.extra["meta"]["hops"], t.extra["meta"]["known"]
        assert t.num_searches in ((0, hops) if known else (hops,))  # known facts: sometimes no search
        if t.num_searches == 0:  # recalled in the same `Question: q Answer: a.` form as after a search
            question = t.extra["meta"]["question"]
            assert t.turns[0].text.startswith(f"<think> Question: {question} Answer: {t.final_answer}.")
        assert all("<information>" not in turn.text for turn in t.turns)
    assert len({turn.text.split("</think>")[0] for t in recs for turn in t.turns}) > 10  # varied wording


def test_killed_generation_resumes_to_the_same_file(world, tok_dir, tmp_path):
    reference = asyncio.run(run_generation(world, tok_dir, tmp_path / "ref")).read_bytes()

    run_dir = tmp_path / "killed"
    code = CHILD.format(world=str(world.root), tok=str(tok_dir), run_dir=str(run_dir))
    env = os.environ | {"PYTHONPATH": f"{Path(__file__).parent}:{REPO_ROOT}"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    out = run_dir / "trajectories.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 8):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out.read_bytes()
    assert 0 < partial.count(b"\n") < 2 * N_QUESTIONS, "the child must be killed midway"
    with out.open("ab") as f:  # and a torn line, as if it died mid-write
        f.write(b'{"uid": "world-train-9", "prompt_ids": [1, 2')

    asyncio.run(run_generation(world, tok_dir, run_dir))
    final = out.read_bytes()
    assert final == reference
    keys = [(r["uid"], r["sample_index"]) for r in read_records(out)]
    assert len(keys) == len(set(keys)) == 2 * N_QUESTIONS
    assert recover(out) == set(keys)  # a finished file resumes to nothing


def traj(uid: str, searches: int, k: int = 0, answer: str = "x") -> Trajectory:
    from search_r1.agent.trajectory import Turn

    turns = [
        Turn(
            "search",
            f"<think> a </think>\n<search> q{i} </search>",
            query=f"q{i}",
            observation="\n\n<information>Doc 1(Title: t) p</information>\n\n",
        )
        for i in range(searches)
    ]
    turns.append(Turn("answer", f"<think> b </think>\n<answer> {answer} </answer>"))
    return Trajectory(
        uid=uid,
        prompt_ids=[],
        turns=turns,
        final_answer=answer,
        finish_reason="answer",
        sample_index=k,
        extra={"golds": ["x"], "meta": {}},
    )


def test_filters_report_and_fewest_searches(world, tok_dir, monkeypatch):
    import sft.filters as filters

    monkeypatch.setattr(filters, "reproducible", lambda t, tok: True)
    trajs = [traj("a", 2, 0), traj("a", 1, 1), traj("b", 0, 0, answer="wrong"), traj("c", 3, 0)]
    trajs[3].turns[1].query = trajs[3].turns[0].query  # a repeated query
    bad = traj("d", 1)
    bad.turns[0].text += "<information>made up</information>"
    kept, report = select(trajs + [bad], FilterConfig(require_support=False), None)
    assert [(t.uid, t.num_searches) for t in kept] == [("a", 1)]
    assert report.removed == {
        "wrong_answer": 1,
        "duplicate_query": 1,
        "wrote_information": 1,
        "not_fewest_searches": 1,
    }
    assert (
        report.input == 5
        and report.kept == 1
        and report.mix == {"no_search": 0, "one_search": 1, "multi_search": 0}
    )


def test_balance_reaches_the_target_mix():
    import random

    trajs = [traj(f"n{i}", 0) for i in range(50)] + [traj(f"o{i}", 1) for i in range(30)]
    trajs += [traj(f"m{i}", 2) for i in range(20)]
    kept = balance(trajs, {"no_search": 0.2, "one_search": 0.4, "multi_search": 0.4}, random.Random(0))
    counts = [sum(t.num_searches == s for t in kept) for s in (0, 1, 2)]
    assert counts == [10, 20, 20]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"uid": "b", "prompt_ids": [1, 2\n', "not JSON"),  # a torn line that is not the last
        ('["b", [1, 2]]\n', "expected a JSON object, got list"),
        ('{"prompt_ids": [1, 2]}\n', "not a trajectory record"),  # no uid
        ('{"uid": "b", "prompt_ids": [], "turns": [{"text": "t"}]}\n', "not a trajectory record"),
        ('{"uid": "b", "prompt_ids": [], "no_such_field": 1}\n', "not a trajectory record"),
    ],
)
def test_a_corrupt_trajectory_record_names_file_and_line(tok_dir, tmp_path, capsys, bad_line, message):
    """Line 2 of the teacher's file is bad: reading it, resuming generation on it, and the filters'
    entry point all name ``<file>:2``; the entry point exits 2 with that one line."""
    import json

    from search_r1.data.schema import DatasetError
    from sft.filters import main as filters_main
    from sft.generate import read_trajectories

    cfg = SFTConfig(model=str(tok_dir), run_dir=str(tmp_path))
    good = json.dumps(traj("a", 1).to_dict()) + "\n"
    cfg.trajectories.parent.mkdir(parents=True, exist_ok=True)
    cfg.trajectories.write_text(good + bad_line + good)
    where = f"{cfg.trajectories}:2: "
    with pytest.raises(DatasetError, match=re.escape(where + message)):
        list(read_trajectories(cfg.trajectories))
    with pytest.raises(DatasetError, match=re.escape(where + message)):
        recover(cfg.trajectories)  # a resumed teacher run
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        filters_main([f"model={tok_dir}", f"run_dir={tmp_path}", "practice.worlds=0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {where}{message}")


def _split_one_token(t: Trajectory, tok) -> Trajectory:
    """``t`` with one policy token replaced by the tokens of its characters: the same text, a
    tokenisation the tokenizer would never produce (what a sampled model can emit)."""
    import copy

    original, t = t, copy.deepcopy(t)
    for i, (tid, m) in enumerate(zip(t.response_ids, t.response_mask, strict=True)):
        piece = tok.decode([tid])
        if not m or len(piece) < 2 or not piece.isalpha():
            continue
        chars = [tok.encode(c, add_special_tokens=False) for c in piece]
        if all(len(c) == 1 for c in chars):
            ids = [c[0] for c in chars]
            t.response_ids[i : i + 1] = ids
            t.response_mask[i : i + 1] = [1] * len(ids)
            assert tok.decode(t.response_ids) == tok.decode(original.response_ids)
            return t
    raise AssertionError("no policy token made of single-token characters")


def test_a_trajectory_that_does_not_reproduce_is_filtered_and_reported(world, tok_dir, tmp_path):
    """The real ``reproducible`` check (not patched): oracle trajectories all pass it; one with a
    non-canonical tokenisation of the same text, and one whose prompt ids are not the chat template's,
    are removed and charged to ``not_reproducible``."""
    tok = AutoTokenizer.from_pretrained(tok_dir)
    path = asyncio.run(run_generation(world, tok_dir, tmp_path))
    trajs = [Trajectory.from_dict(r) for r in read_records(path)]
    cfg = FilterConfig(fewest_searches=False, max_all_solved_fraction=1.0, mix={})
    kept, report = select(trajs, cfg, tok)
    assert "not_reproducible" not in report.removed and len(kept) > 10

    split = _split_one_token(kept[0], tok)
    wrong_prompt = Trajectory.from_dict(kept[1].to_dict() | {"prompt_ids": kept[1].prompt_ids[1:]})
    kept2, report2 = select([*kept, split, wrong_prompt], cfg, tok)
    assert report2.removed == {"not_reproducible": 2}
    assert [t.to_dict() for t in kept2] == [t.to_dict() for t in kept]
