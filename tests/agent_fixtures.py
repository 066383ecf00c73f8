"""Test doubles for the agent tests: a toy model taught one search trajectory, an in-memory retriever.

The toy model (Qwen2, hidden 64, 2 layers, the world tokenizer with the tags as single ids) is
overfit in a few seconds on one scripted episode, so greedy decoding reproduces it exactly: a
search, then (after the observation) an answer. That makes the token-stream checks deterministic
without waiting for the tiny base model, which has never seen the search protocol.
"""

from __future__ import annotations

import asyncio
import random

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from search_r1.agent.protocol import ProtocolConfig, parse_action, render_results
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
# (question, policy turns): each search turn is followed by the observation MemoryRetriever gives it.
EPISODES = [(QUESTION, [TURN1, TURN2])]
# Episodes of different shapes, for the rollout benchmark (no search, one search, two searches).
MIXED_EPISODES = [
    (QUESTION, [TURN1, TURN2]),
    ("Where was Quintar founded?", ["<think>Known.</think><answer> Velmora </answer>"]),
    (
        "Which company was founded in the capital of Zorland?",
        [
            "<think>First the capital.</think><search> Zorland capital river city </search>",
            "<think>Now the company.</think><search> company founded in Velmora </search>",
            "<think>Found it.</think><answer> Quintar </answer>",
        ],
    ),
]


class MemoryRetriever:
    """Word-overlap search over a few docs; counts calls; can be told to fail."""

    def __init__(
        self,
        docs: list[Doc] = DOCS,
        fail_with: Exception | None = None,
        delay_s: float = 0.0,
        jitter: float = 0.0,
    ):
        self.docs, self.fail_with, self.delay_s, self.jitter, self.calls = docs, fail_with, delay_s, jitter, 0
        self._rng = random.Random(0)

    async def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[Passage]]:
        self.calls += 1
        if self.delay_s:  # latency uniform in delay * [1 - jitter, 1 + jitter]
            await asyncio.sleep(self.delay_s * (1 + self.jitter * (2 * self._rng.random() - 1)))
        if self.fail_with is not None:
            raise self.fail_with
        return [self.ranked(q, topk or 3) for q in queries]

    def ranked(self, query: str, topk: int) -> list[Passage]:
        words = set(query.lower().split())
        ranked = sorted(self.docs, key=lambda d: -len(words & set(d.contents.lower().split())))
        return [Passage(d.id, d.contents, 1.0) for d in ranked[:topk]]


def toy_tokenizer(episodes: list[tuple[str, list[str]]] = MIXED_EPISODES) -> PreTrainedTokenizerFast:
    texts = [d.contents for d in DOCS] + [t for q, turns in episodes for t in [q, *turns]] * 3
    return train_tokenizer(texts, vocab_size=400)


def prompt_ids(tok: PreTrainedTokenizerFast, question: str = QUESTION) -> list[int]:
    text = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tok.encode(text, add_special_tokens=False)


def episode_ids(tok: PreTrainedTokenizerFast, question: str, turns: list[str]) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids): the scripted turns, each search answered by MemoryRetriever."""
    text = ""
    for turn in turns:
        text += turn
        action = parse_action(turn)
        if action.kind == "search":
            text += render_results(MemoryRetriever().ranked(action.content, TOY_CFG.topk), tok, TOY_CFG)
    return prompt_ids(tok, question), tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]


def tiny_qwen2(
    tok: PreTrainedTokenizerFast, hidden: int = 64, layers: int = 2, heads: int = 4, max_position: int = 1024
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 (the architecture of every preset) small enough for a test."""
    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads // 2,
            max_position_embeddings=max_position,
            tie_word_embeddings=True,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )


def toy_model(
    tok: PreTrainedTokenizerFast,
    episodes: list[tuple[str, list[str]]] = EPISODES,
    max_steps: int = 300,
    seed: int = 0,
) -> PreTrainedModel:
    """Adam on the scripted episodes until every response token is the argmax (greedy replays them)."""
    torch.manual_seed(seed)
    model = tiny_qwen2(tok, max_position=512)
    pairs = [episode_ids(tok, q, turns) for q, turns in episodes]
    width = max(len(p) + len(r) for p, r in pairs)
    pad = [tok.pad_token_id]
    x = torch.tensor([p + r + pad * (width - len(p) - len(r)) for p, r in pairs])
    labels = torch.tensor([[-100] * len(p) + r + [-100] * (width - len(p) - len(r)) for p, r in pairs])
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(max_steps):
        out = model(input_ids=x, labels=labels)
        target, pred = labels[:, 1:], out.logits[:, :-1].argmax(-1)
        if bool(((pred == target) | (target == -100)).all()):
            break  # every response token is the argmax: greedy decoding replays the episodes
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()
