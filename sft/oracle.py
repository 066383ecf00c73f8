"""The oracle teacher: an :class:`~search_r1.agent.engines.base.Engine` that knows the world's answers.

It plugs into the shared rollout like any model. Each ``generate`` call decodes the conversation so
far, finds the question in the prompt, counts the searches already made, and writes the next ideal
step — ``<think>…</think>\\n<search> q </search>`` for the next hop's query, or
``<think>…</think>\\n<answer> a </answer>`` once every hop has been searched. It never writes
``<information>``: observations come from the real retriever, exactly as in RL.

Each thought states the hop's question before its search and restates it after, with the answer
read off the observation, in the form the tiny base model's reading drills use (``Question: …
Answer: …``, ``search_r1.world.pretrain_data``), so distillation builds on a skill the student
already has. Measured on the oracle's own test-split trajectories, the base model completes the
answer from the observation 44-58 % of the time after that cue and 0 % after "The results say it
is"; stating the question before the search lets the student copy it from close by instead of from
the prompt (``docs/benchmarks.md``, SFT).

Variety, so the student learns the process and not one sentence: the thoughts are drawn from a few
wordings, and for facts the base model already knows (``known`` questions) the oracle answers
without searching with probability ``1 - p_search_known``, recalling the answer in the same
``Question: … Answer: …`` form. The randomness is a pure function of
the question, the sampling seed and the turn, so a rerun (after a crash) writes the same
trajectory, and samples with different seeds differ.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from search_r1.agent.engines.base import GenerationResult, SamplingParams
from search_r1.agent.protocol import ANSWER_CLOSE, INFO_CLOSE, SEARCH_CLOSE, TextTokenizer
from search_r1.world.pretrain_data import recall
from search_r1.world.questions import SINGLE_HOP

# Short on purpose: the tiny preset allows 64 tokens a turn and fictional names cost many tokens.
# Before a search: the hop's question (so the reading step after it can copy it from close by).
_ASK = (
    "Question: {sub} Let me search.",
    "Question: {sub} I do not know it.",
    "Question: {sub} I look it up.",
)
# After a search: the hop's question again with its answer (``recall``), then one of these.
_THEN_ANSWER = ("", " That answers it.", " The passage says so.")
# A known fact, answered from memory: the whole question in the same form (``recall``), as the reading
# step after a search does (the base model recalls 0 of its facts after a bare "I know this one.").
_THEN_KNOWN = ("", " I know this one.", " No search needed.")


@dataclass(frozen=True)
class OracleQuestion:
    question: str
    answer: str
    queries: tuple[str, ...]  # the ideal query for each hop
    relations: tuple[str, ...]  # what each hop asks for
    known: bool  # the base model knows the fact by heart


def load_oracle_questions(questions_jsonl: Path) -> dict[str, OracleQuestion]:
    """The world's questions keyed by their text (what the oracle finds in the prompt)."""
    out = {}
    for line in Path(questions_jsonl).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        out[r["question"].strip()] = OracleQuestion(
            r["question"].strip(),
            r["answer"],
            tuple(r["queries"]),
            tuple(r["relation"].split(".")),
            r["known"],
        )
    return out


def _rng(*parts: object) -> random.Random:
    return random.Random(hashlib.sha256(repr(parts).encode()).digest())


class OracleTeacher:
    """Writes ideal steps for the embedded world's questions (see the module docstring)."""

    def __init__(
        self, tokenizer: TextTokenizer, questions: dict[str, OracleQuestion], p_search_known: float = 0.5
    ):
        self.tokenizer = tokenizer
        self.questions = questions
        self.p_search_known = p_search_known

    def find_question(self, conversation: str) -> OracleQuestion:
        """The question the prompt asks: the text after the first ``Question:`` up to the line's end."""
        start = conversation.find("Question:")
        if start < 0:
            raise ValueError("no 'Question:' in the prompt")
        line = conversation[start + len("Question:") :].split("\n", 1)[0]
        for candidate in sorted(self.questions, key=len, reverse=True):  # longest match wins
            if line.lstrip().startswith(candidate):
                return self.questions[candidate]
        raise KeyError(f"question not in the world: {line.strip()[:120]!r}")

    def next_step(self, q: OracleQuestion, searches_done: int, seed: int | None) -> str:
        """The text of the next turn, ending with its action's closing tag."""
        plan = _rng(q.question, seed, "plan")
        answer_directly = q.known and plan.random() >= self.p_search_known
        rng = _rng(q.question, seed, searches_done)
        if answer_directly:
            thought = recall(q.question, q.answer) + rng.choice(_THEN_KNOWN)
            return f"<think> {thought} </think>\n<answer> {q.answer} </answer>"
        hop = min(searches_done, len(q.queries))  # the hop to search next (== len: all done)
        subs = [SINGLE_HOP[r].format(e) for r, e in zip(q.relations, q.queries, strict=True)]
        read = "" if hop == 0 else recall(subs[hop - 1], (q.queries + (q.answer,))[hop]) + " "
        if hop < len(q.queries):
            thought = read + rng.choice(_ASK).format(sub=subs[hop])
            return f"<think> {thought} </think>\n<search> {q.queries[hop]} </search>"
        thought = read.rstrip() + rng.choice(_THEN_ANSWER)
        return f"<think> {thought} </think>\n<answer> {q.answer} </answer>"

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationResult:
        conversation = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        q = self.find_question(conversation)
        # Observations so far = searches made (the oracle never writes an invalid action); count
        # only after the question, since the instruction itself mentions the tags.
        searches_done = conversation[conversation.find("Question:") :].count(INFO_CLOSE)
        text = self.next_step(q, searches_done, None if sampling.greedy else sampling.seed)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        stop = SEARCH_CLOSE if text.endswith(SEARCH_CLOSE) else ANSWER_CLOSE
        if len(ids) > sampling.max_new_tokens:
            return GenerationResult(ids[: sampling.max_new_tokens], "length")
        return GenerationResult(ids, "stop", stop_string=stop)
