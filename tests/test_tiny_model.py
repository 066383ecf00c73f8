"""The tiny base model knows the famous entities' facts by heart, not the others, answers in format
and, like an instruct model that has seen tool use, sometimes searches what it does not know.

This is what makes the four experiment groups meaningful at toy scale: closed-book it can only
answer what it memorised; searching is the only way to the rest, and RL alone has a search to
reinforce.
"""

from __future__ import annotations

import json

import pytest

from search_r1.world.probe import ProbeConfig, probe


@pytest.fixture(scope="module")
def skills(tiny_model, world):
    """Greedy closed-book and reading EM on the train+dev questions (the test split stays unseen)."""
    return probe(ProbeConfig(model=str(tiny_model), world_dir=str(world.root), splits=["train", "dev"]))


def test_knows_famous_facts_and_not_the_others(skills):
    known, unknown = skills.closed_book_known, skills.closed_book_unknown
    print(f"closed-book EM: known {known:.3f}, unknown {unknown:.3f} ({skills.counts})")
    # measured at the committed config (train+dev): known 0.807, unknown 0.001 (build_info.json's "probe")
    assert known >= 0.8, known
    assert unknown <= 0.1, unknown
    assert known - unknown >= 0.7


# Measured at the committed config (train+dev, greedy): reading 0.298, closed-book unknown 0.001.
# The floor sits a little under it: it was 0.3 for the build without tool-use demos (which read
# 0.386); the demos and the extra closed-book repeats take a share of the mix from reading
# (docs/benchmarks.md). The session-2 model without the drill phase read 0.03.
READING_FLOOR = 0.27


def test_reads_the_answer_out_of_retrieved_passages(skills):
    """The copy skill SFT builds on: unknown subjects, gold passage among retriever-like distractors."""
    print(f"reading EM {skills.reading:.3f} over {skills.counts['reading']} questions")
    assert skills.reading >= READING_FLOOR, skills.reading
    assert skills.reading - skills.closed_book_unknown >= 0.25


def test_answers_what_it_knows_and_searches_the_rest_only_sometimes(skills):
    """Famous subjects: an answer from memory. Others: a search with a probability between the
    extremes (measured 0.535; famous 0.002), so sampled rollouts both search and do not."""
    print(
        f"P(search first) known {skills.p_search_known:.3f}, unknown {skills.p_search_unknown:.3f}; "
        f"greedy search share known {skills.search_known:.3f}, unknown {skills.search_unknown:.3f}"
    )
    assert skills.well_formed >= 0.9, skills.well_formed
    assert skills.search_known <= 0.05 and skills.p_search_known <= 0.05
    assert 0.2 <= skills.p_search_unknown <= 0.8, skills.p_search_unknown
    assert skills.search_unknown > skills.search_known


def test_tokenizer_has_tags_as_single_tokens_and_chatml(tiny_model):
    from transformers import AutoTokenizer

    from search_r1.agent.protocol import TAGS

    tok = AutoTokenizer.from_pretrained(tiny_model)
    for tag in TAGS:
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.decode(ids, skip_special_tokens=True) == tag, tag
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"
    info = json.loads((tiny_model / "build_info.json").read_text())
    assert info["loss_last_20"] < info["loss_first_20"]
