"""An OpenAI-compatible ``/v1/chat/completions`` endpoint: teachers from APIs that offer chat only.

A chat endpoint cannot continue a half-written assistant turn, so the engine keeps the token-in/
token-out interface by translating: the response part of the prompt ids is decoded and split at
the observation blocks (the exact ``wrap_observation`` text the rollout appends), and the question
goes out as ``[question messages, assistant: turn 1, user: observation 1, assistant: turn 2, ...]``
with the protocol's stop strings. The reply is tokenised with the student's tokenizer, its stop
string re-attached as for ``/v1/completions``, so the trajectory is in the student's token
protocol and exports exactly like one from the completions endpoint or the oracle.

The question's messages cannot be recovered from the student's template, so the caller registers
them for the length of the episode: ``with engine.conversation(prompt_ids, messages): ...``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from search_r1.agent.engines.base import GenerationResult, SamplingParams
from search_r1.agent.engines.openai import OpenAIEngine
from search_r1.agent.engines.registry import register_engine
from search_r1.agent.protocol import wrap_observation

_BEFORE, _AFTER = wrap_observation("\0").split("\0")
_OBSERVATION = re.compile(f"{re.escape(_BEFORE)}(.*?){re.escape(_AFTER)}", re.S)

Messages = list[dict[str, str]]


def chat_history(response: str) -> Messages:
    """The assistant turns and observations of a rollout's response text, as chat messages."""
    messages, start = [], 0
    for m in _OBSERVATION.finditer(response):
        messages.append({"role": "assistant", "content": response[start : m.start()]})
        messages.append({"role": "user", "content": m.group().strip()})
        start = m.end()
    if response[start:]:
        raise ValueError(
            f"a chat endpoint cannot continue a half-written assistant turn: {response[start:]!r}"
        )
    return messages


@register_engine("openai_chat")
class OpenAIChatEngine(OpenAIEngine):
    path = "chat/completions"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._messages: dict[tuple[int, ...], Messages] = {}
        self._users: Counter[tuple[int, ...]] = Counter()  # two episodes may share a prompt

    @contextmanager
    def conversation(self, prompt_ids: list[int], messages: Messages) -> Iterator[None]:
        """While open, a ``generate`` whose ids start with ``prompt_ids`` asks about ``messages``."""
        key = tuple(prompt_ids)
        self._messages[key], self._users[key] = list(messages), self._users[key] + 1
        try:
            yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._messages[key], self._users[key]

    def _question(self, ids: list[int]) -> tuple[int, Messages]:
        """The length of the registered prompt that ``ids`` start with, and its messages."""
        for n in sorted({len(k) for k in self._messages}, reverse=True):
            if tuple(ids[:n]) in self._messages:
                return n, self._messages[tuple(ids[:n])]
        raise KeyError("no registered prompt: wrap the episode in engine.conversation(prompt_ids, messages)")

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationResult:
        n, question = self._question(prompt_ids)
        response = self.tokenizer.decode(prompt_ids[n:], skip_special_tokens=False)
        body = {"messages": question + chat_history(response)} | self.sampling_fields(sampling)
        choice = (await self.post(body))["choices"][0]
        return self.result((choice.get("message") or {}).get("content") or "", choice, sampling)
