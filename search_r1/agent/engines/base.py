"""The one interface every generation engine implements (DESIGN §3).

Engines are token-in/token-out: the rollout hands over prompt token ids and gets back exactly the
ids the model produced, cut at the first stop string (the stop string itself is kept, nothing after
it is generated). Text-only engines (an OpenAI-compatible endpoint) tokenise their output once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class SamplingParams:
    """How to sample one continuation. ``temperature == 0`` means greedy: argmax, no sampling."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class GenerationResult:
    token_ids: list[int]
    finish_reason: str  # "stop" (a stop string), "eos", or "length"
    logprobs: list[float] | None = None
    stop_string: str | None = None  # which stop string ended generation, if any


@runtime_checkable
class Engine(Protocol):
    """Async generation for one sequence; implementations batch concurrent calls internally."""

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationResult: ...
