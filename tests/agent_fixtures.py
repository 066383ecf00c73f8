"""Test doubles for the agent tests: a toy model taught one search trajectory, an in-memory retriever.

The toy model (Qwen2, hidden 64, 2 layers, the world tokenizer with the tags as single ids) is
overfit in a few seconds on one scripted episode, so greedy decoding reproduces it exactly: a
search, then (after the observation) an answer. That makes the token-stream checks deterministic
without waiting for the tiny base model, which has never seen the search protocol.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from search_r1.agent.protocol import ProtocolConfig, render_results
from search_r1.data.corpus import Doc
from search_r1.retrieval.client import Passage
from search_r1.world.tokenizer import train_tokenizer

DOCS = [
    Doc("d1", '"Zorland"\nZorland is a country. Its capital is Velmora, a city on the river.'),
    Doc("d2", '"Velmora"\nVelmora is the capital of Zorland and its largest city.'),
    Doc("d3", '"Quintar"\nQuintar is a company founded in Velmora.'),
]
QUESTION = "What is the capital of Zorland?"
TURN1 = "<think>I need the capital.</think><search> capital of Zorland </search>"
TURN2 = "<think>It is Velmora.</think><answer> Velmora </answer>"
TOY_CFG = ProtocolConfig(max_turns=2, topk=2, max_obs_tokens=64, max_turn_tokens=40, max_response_tokens=400)


class MemoryRetriever:
    """Word-overlap search over a few docs; counts calls; can be told to fail."""

    def __init__(self, docs: list[Doc] = DOCS, fail_with: Exception | None = None, delay_s: float = 0.0):
        self.docs, self.fail_with, self.delay_s, self.calls = docs, fail_with, delay_s, 0

    async def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[Passage]]:
        import asyncio

        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return [self.ranked(q, topk or 3) for q in queries]

    def ranked(self, query: str, topk: int) -> list[Passage]:
        words = set(query.lower().split())
        ranked = sorted(self.docs, key=lambda d: -len(words & set(d.contents.lower().split())))
        return [Passage(d.id, d.contents, 1.0) for d in ranked[:topk]]


def toy_tokenizer() -> PreTrainedTokenizerFast:
    texts = [d.contents for d in DOCS] + [QUESTION, TURN1, TURN2] * 3
    return train_tokenizer(texts, vocab_size=400)


def prompt_ids(tok: PreTrainedTokenizerFast, question: str = QUESTION) -> list[int]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tok.encode(text, add_special_tokens=False)


def toy_model(tok: PreTrainedTokenizerFast, steps: int = 60, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    obs = render_results(MemoryRetriever().ranked("capital of Zorland", TOY_CFG.topk), tok, TOY_CFG)
    ids = prompt_ids(tok) + tok.encode(TURN1 + obs + TURN2, add_special_tokens=False) + [tok.eos_token_id]
    x = torch.tensor([ids])
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(steps):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
