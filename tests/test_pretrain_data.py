"""The tiny model's pretraining data: drills train only answers, tool-use demos search as the rollout does."""

from __future__ import annotations

import json

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


SHARES = {r: 0.4 for r in ("capital", "country", "river", "founded", "occupation", "founder", "headquarters")}


def test_tool_demos_use_the_eval_prompt_and_search_with_the_rollouts_tokens(world, tmp_path):
    """A demo is the experiment's prompt over an unknown subject, answered by a guess or by one search
    whose observation is exactly what the rollout appends (untrained), then the answer; about the
    configured share searches, and adding demos leaves every other example as it was."""
    from search_r1.agent.prompt import render_prompt
    from search_r1.agent.protocol import INFO_CLOSE, INFO_OPEN, final_answer, parse_action
    from search_r1.rewards.format import is_valid_format

    tok = AutoTokenizer.from_pretrained(build_tokenizer(world, tmp_path / "tok"))
    plain = build_examples(world, seed=0, reading_examples=50, copy_drills=5)
    examples = build_examples(
        world, seed=0, reading_examples=50, copy_drills=5, tool_demos=400, tool_demo_search_share=SHARES
    )
    assert [(e.prompt, e.target, e.spans) for e in examples[: len(plain)]] == [
        (e.prompt, e.target, e.spans) for e in plain
    ]
    demos = examples[len(plain) :]
    assert len(demos) == 400 and {e.kind for e in demos} == {"tool_demo"}
    famous = set(json.loads(world.kb.read_text(encoding="utf-8"))["famous"])
    searched = [e for e in demos if e.spans]
    assert 0.15 <= len(searched) / len(demos) <= 0.28, len(searched)  # 0.215 in 2,000 demos
    assert not any("born" in e.prompt[0]["content"] for e in searched)  # share 0 for a relation left out
    for demo in demos:
        question = demo.prompt[0]["content"].split("Question: ")[1]
        assert demo.prompt == render_prompt(question, "compact")
        assert not any(name in question for name in famous)
        ids, labels = encode(demo, tok)
        trained = tok.decode([t for t in labels if t != IGNORE])
        assert trained.endswith(tok.eos_token)
        if not demo.spans:
            assert trained == demo.target + tok.eos_token and final_answer(demo.target)
            continue
        first = parse_action(demo.spans[0][0])
        assert first.kind == "search" and first.content in question
        observation = demo.spans[1][0]
        assert observation.strip().startswith(INFO_OPEN) and observation.strip().endswith(INFO_CLOSE)
        assert f"(Title: {first.content})" in observation  # the subject's passage was retrieved
        assert INFO_OPEN not in trained and "Doc 1" not in trained  # the observation is not a target
        answer = final_answer(demo.target)
        assert answer and answer in observation and is_valid_format(demo.target)
