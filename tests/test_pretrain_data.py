"""The tiny model's pretraining data: drills train only answers, tool-use demos search as the rollout does."""

from __future__ import annotations

import json

import pytest
from sft_helpers import build_tokenizer
from transformers import AutoTokenizer

from search_r1.world.pretrain_data import build_examples
from search_r1.world.tiny_model import IGNORE, encode


def test_reading_drills_train_only_answers_that_the_passages_contain(world, tmp_path):
    tok = AutoTokenizer.from_pretrained(build_tokenizer(world, tmp_path / "tok"))
    examples = build_examples(world, seed=0, reading_examples=200, reading_drills=40, copy_drills=0)
    drills = [e for e in examples if e.kind == "reading_drill"]
    assert len(drills) == 40
    for drill in drills:
        ids, labels = encode(drill, tok)
        assert len(ids) == len(labels) and tok.decode(ids[:-1]) == drill.target
        answers = [piece for piece, trained in drill.spans if trained]
        assert answers, "a drill asks at least one question about its passages"
        trained = tok.decode([t for t in labels if t != IGNORE])
        assert trained == "".join(answers) + tok.pad_token  # no passage or question token is a target
        passages = drill.target.split("\nQuestion: ")[0]
        for answer in answers:
            assert answer.strip() in passages  # reading, not recall: the answer is in the context


def test_closed_book_drills_state_known_facts_in_the_thought_form(world, tmp_path):
    """Recall inside a thought: known facts as ``Question: q Answer: a`` lines, answers trained only."""
    from sft.oracle import load_oracle_questions

    tok = AutoTokenizer.from_pretrained(build_tokenizer(world, tmp_path / "tok"))
    examples = build_examples(world, seed=0, reading_examples=0, copy_drills=0, closed_book_drills=30)
    drills = [e for e in examples if e.kind == "closed_book_drill"]
    assert len(drills) == 30
    facts = load_oracle_questions(world.questions)
    known = {q.question: q.answer for q in facts.values() if q.known}
    for drill in drills:
        _, labels = encode(drill, tok)
        lines = drill.target.strip().split("\n")
        assert len(lines) == 8
        for line in lines:
            question, answer = line.removeprefix("Question: ").split(" Answer: ")
            assert known[question] == answer  # a famous entity's true fact (KeyError: not a known one)
        trained = tok.decode([t for t in labels if t != IGNORE])
        assert trained == "".join(f" {line.split(' Answer: ')[1]}\n" for line in lines) + tok.pad_token


RELATIONS = ("founded", "founder", "headquarters")


def test_tool_demos_use_the_eval_prompt_and_search_with_the_rollouts_tokens(world, tmp_path):
    """A demo is the experiment's prompt over an unknown subject, one search whose observation is
    exactly what the rollout appends (untrained), then the answer read from it; only the configured
    relations are asked, and adding demos leaves every other example as it was."""
    from search_r1.agent.prompt import render_prompt
    from search_r1.agent.protocol import INFO_CLOSE, INFO_OPEN, final_answer, parse_action
    from search_r1.rewards.format import is_valid_format
    from search_r1.world.questions import SINGLE_HOP

    tok = AutoTokenizer.from_pretrained(build_tokenizer(world, tmp_path / "tok"))
    plain = build_examples(world, seed=0, reading_examples=50, copy_drills=5)
    examples = build_examples(
        world, seed=0, reading_examples=50, copy_drills=5, tool_demos=300, tool_demo_relations=RELATIONS
    )
    assert [(e.prompt, e.target, e.spans) for e in examples[: len(plain)]] == [
        (e.prompt, e.target, e.spans) for e in plain
    ]
    demos = examples[len(plain) :]
    assert len(demos) == 300 and {e.kind for e in demos} == {"tool_demo"}
    famous = set(json.loads(world.kb.read_text(encoding="utf-8"))["famous"])
    wordings = [SINGLE_HOP[r].split("{}") for r in RELATIONS]
    for demo in demos:
        question = demo.prompt[0]["content"].split("Question: ")[1]
        assert demo.prompt == render_prompt(question, "compact")
        assert any(question.startswith(a) and question.endswith(b) for a, b in wordings), question
        assert not any(name in question for name in famous)
        ids, labels = encode(demo, tok)
        assert tok.decode(ids).endswith(demo.target + tok.eos_token)
        first = parse_action(demo.spans[0][0])
        assert first.kind == "search" and first.content in question
        observation = demo.spans[1][0]
        assert observation.strip().startswith(INFO_OPEN) and observation.strip().endswith(INFO_CLOSE)
        assert f"(Title: {first.content})" in observation  # the subject's passage was retrieved
        trained = tok.decode([t for t in labels if t != IGNORE])
        assert trained == demo.spans[0][0] + demo.spans[2][0] + tok.eos_token  # not the observation
        answer = final_answer(demo.target)
        assert answer and answer in observation and is_valid_format(demo.target)


def test_tool_demos_name_real_relations(world):
    with pytest.raises(ValueError, match="single-hop relations"):
        build_examples(
            world, seed=0, reading_examples=0, copy_drills=0, tool_demos=5, tool_demo_relations=["age"]
        )


def test_tool_demos_search_for_a_share_of_subjects_and_decline_for_the_rest(world):
    """Whether a demo searches depends on its subject alone (a hash of the name), so the same
    subject always gets the same choice, about ``share`` of subjects search, and the others answer
    `unknown` on the same prompt: no wording tells the two apart."""
    from collections import defaultdict

    from search_r1.agent.protocol import final_answer, parse_action
    from search_r1.world.pretrain_data import DECLINED

    examples = build_examples(
        world,
        seed=0,
        reading_examples=0,
        copy_drills=0,
        tool_demos=600,
        tool_demo_relations=RELATIONS,
        tool_demo_subject_share=0.5,
    )
    demos = [e for e in examples if e.kind in ("tool_demo", "decline")]
    assert len(demos) == 600
    kinds_by_subject: dict[str, set[str]] = defaultdict(set)
    by_kind: dict[str, set[str]] = defaultdict(set)
    for demo in demos:
        question = demo.prompt[0]["content"].split("Question: ")[1]
        if demo.kind == "decline":
            assert demo.target == f"<answer> {DECLINED} </answer>" and final_answer(demo.target) == DECLINED
            assert not demo.spans  # trained as a whole reply
        else:
            subject = parse_action(demo.spans[0][0]).content
            assert subject in question
            kinds_by_subject[subject].add(demo.kind)
        by_kind[demo.kind].add(question.split(" ", 2)[-1])
    assert all(len(kinds) == 1 for kinds in kinds_by_subject.values())
    searched = sum(e.kind == "tool_demo" for e in demos) / len(demos)
    assert 0.3 <= searched <= 0.7, searched
    wordings = {k: {q.split(" ")[0] for q in qs} for k, qs in by_kind.items()}
    assert wordings["tool_demo"] & wordings["decline"]  # the same relations' wording on both sides
