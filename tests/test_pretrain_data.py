"""The tiny model's reading drills: only the answers are trained, and each is copyable from a passage."""

from __future__ import annotations

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
