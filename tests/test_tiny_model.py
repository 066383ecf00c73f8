"""The tiny base model knows the famous entities' facts by heart, not the others, and answers in format.

This is what makes the four experiment groups meaningful at toy scale: closed-book it can only
answer what it memorised; searching is the only way to the rest.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.engines.hf import HFEngine
from search_r1.agent.protocol import ANSWER_CLOSE, SEARCH_CLOSE, final_answer
from search_r1.data.schema import read_parquet
from search_r1.rewards.metrics import exact_match


@pytest.fixture(scope="module")
def closed_book(tiny_model, world):
    """Greedy closed-book answers on the dev split: (row, response text) pairs."""
    engine = HFEngine.from_config(tiny_model, device="cpu", dtype="float32", max_batch_size=64)
    tok = engine.tokenizer
    rows = read_parquet(world.dev)
    sampling = SamplingParams(max_new_tokens=32, temperature=0.0, stop=[ANSWER_CLOSE, SEARCH_CLOSE])

    async def answer_all() -> list[str]:
        prompts = [
            tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
            for r in rows
        ]
        outs = await asyncio.gather(*(engine.generate(list(p), sampling) for p in prompts))
        return [tok.decode(o.token_ids, skip_special_tokens=True) for o in outs]

    return list(zip(rows, asyncio.run(answer_all()), strict=True))


def _em_rate(pairs, known: bool) -> float:
    scores = [
        exact_match(final_answer(text), row["reward_model"]["ground_truth"]["target"])
        for row, text in pairs
        if bool(row["extra_info"]["known"]) is known
    ]
    assert scores, f"no dev questions with known={known}"
    return sum(scores) / len(scores)


def test_knows_famous_facts_and_not_the_others(closed_book):
    known, unknown = _em_rate(closed_book, True), _em_rate(closed_book, False)
    print(f"closed-book EM on dev: known {known:.3f}, unknown {unknown:.3f}")
    # measured at the committed config: known 0.42, unknown 0.03 (dev, 26 known / 89 unknown)
    assert known >= 0.3, known
    assert unknown <= 0.1, unknown
    assert known - unknown >= 0.25


def test_answers_in_the_answer_format_and_never_searches(closed_book):
    formatted = sum(final_answer(text) is not None for _, text in closed_book) / len(closed_book)
    assert formatted >= 0.9, formatted
    assert not any("<search>" in text or "<information>" in text for _, text in closed_book)


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
