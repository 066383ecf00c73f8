"""An OpenAI-compatible ``/v1/completions`` endpoint (vLLM, SGLang, TGI, llama.cpp server): for teachers.

Text in, text out: the prompt ids are decoded once to text, the completion is tokenised once. The
chat endpoint cannot continue a half-written assistant turn, so the multi-turn protocol needs the
completions endpoint and the model's chat template applied on our side (the prompt ids already
carry it).

Stop strings: the API removes the matched stop string from the text. vLLM's server says which one
matched (``stop_reason``); without that field the stop is inferred from the protocol — the action
tag left open at the end of the text — and a ``stop`` with neither is an EOS. The re-attached
stop string is part of the tokenised completion, so the rollout sees the same text an
``include_stop_str_in_output`` engine would produce.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx

from search_r1.agent.engines.base import GenerationResult, SamplingParams
from search_r1.agent.engines.registry import register_engine
from search_r1.agent.protocol import ANSWER_CLOSE, ANSWER_OPEN, SEARCH_CLOSE, SEARCH_OPEN

_CLOSE_OF = {SEARCH_OPEN: SEARCH_CLOSE, ANSWER_OPEN: ANSWER_CLOSE}


class EngineHTTPError(RuntimeError):
    """The endpoint failed after retries, or rejected the request."""


def infer_stop(text: str, stop: list[str]) -> str | None:
    """The stop string the server cut, when it does not say: the close of the last open action tag."""
    opener = max(_CLOSE_OF, key=text.rfind)
    if text.rfind(opener) < 0:
        return None
    close = _CLOSE_OF[opener]
    after = text[text.rfind(opener) :]
    return close if close in stop and close not in after else None


@register_engine("openai")
class OpenAIEngine:
    def __init__(
        self,
        base_url: str,
        served_model: str,
        tokenizer: Any,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        client: httpx.AsyncClient | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.served_model = served_model
        self.tokenizer = tokenizer
        self.max_retries = max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(timeout=timeout, headers=headers)

    @classmethod
    def from_config(
        cls,
        base_url: str,
        served_model: str = "",
        tokenizer: str = "",
        model: str = "",
        api_key_env: str = "",
        **kw: Any,
    ) -> OpenAIEngine:
        from transformers import AutoTokenizer

        if not base_url:
            raise ValueError(
                "engine.base_url is required for the openai engine (e.g. http://127.0.0.1:8001/v1)"
            )
        tok = AutoTokenizer.from_pretrained(tokenizer or model)
        return cls(
            base_url, served_model or model, tok, os.environ.get(api_key_env) if api_key_env else None, **kw
        )

    def request_body(self, prompt_ids: list[int], s: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.served_model,
            "prompt": self.tokenizer.decode(prompt_ids, skip_special_tokens=False),
            "max_tokens": s.max_new_tokens,
            "temperature": 0.0 if s.greedy else s.temperature,
            "top_p": 1.0 if s.greedy else s.top_p,
            "stop": list(s.stop),
        }
        if s.top_k > 0 and not s.greedy:
            body["top_k"] = s.top_k  # a vLLM/SGLang extension
        if s.seed is not None:
            body["seed"] = s.seed
        if s.logprobs:
            body["logprobs"] = 1
        return body

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            try:
                r = await self._client.post(f"{self.base_url}/completions", json=body)
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code < 400:
                    return r.json()
                if r.status_code < 500 and r.status_code != 429:
                    raise EngineHTTPError(f"HTTP {r.status_code} from {self.base_url}: {r.text[:500]}")
                error = f"HTTP {r.status_code}"
            if attempt < self.max_retries:
                await asyncio.sleep(0.5 * 2**attempt)
        raise EngineHTTPError(f"{self.base_url} failed after {self.max_retries + 1} attempts ({error})")

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationResult:
        choice = (await self._post(self.request_body(prompt_ids, sampling)))["choices"][0]
        text, reason = choice["text"], choice.get("finish_reason") or "stop"
        stop_string = None
        if reason == "stop":
            given = choice.get("stop_reason")
            stop_string = given if isinstance(given, str) else None
            if stop_string is None and "stop_reason" not in choice:
                stop_string = infer_stop(text, list(sampling.stop))
            if stop_string is not None and not text.endswith(stop_string):
                text += stop_string
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if reason != "length":
            reason = "stop" if stop_string is not None else "eos"
        if reason == "eos" and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        logprobs = None
        if (
            sampling.logprobs
        ):  # the server's per-token logprobs: aligned only if its tokenisation matches ours
            logprobs = list((choice.get("logprobs") or {}).get("token_logprobs") or [])
        return GenerationResult(ids, reason, logprobs, stop_string)

    async def aclose(self) -> None:
        await self._client.aclose()
