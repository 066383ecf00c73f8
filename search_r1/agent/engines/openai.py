"""An OpenAI-compatible ``/v1/completions`` endpoint (vLLM, SGLang, TGI, llama.cpp server): for teachers.

Text in, text out: the prompt ids are decoded once to text, the completion is tokenised once. The
prompt ids already carry the student's chat template, so the teacher continues the half-written
assistant turn: the exact protocol. Endpoints that offer only chat completions (most hosted APIs)
use ``openai_chat.OpenAIChatEngine``, which rebuilds the same token stream from chat messages.

Stop strings: the API removes the matched stop string from the text. vLLM's server says which one
matched (``stop_reason``); a server that keeps it in the text (``transformers serve``) is taken at
its word; otherwise the stop is inferred from the protocol — the action tag left open at the end of
the text — and a ``stop`` with neither is an EOS. The re-attached stop string is part of the
tokenised completion, so the rollout sees the same text an ``include_stop_str_in_output`` engine
would produce.

Failures: 429 and 5xx (rate limits, overload) and transport errors are retried with exponential
backoff, honouring the server's ``Retry-After`` up to :data:`MAX_RETRY_AFTER_S`; any other 4xx (bad
key, bad request) cannot succeed on retry and fails at once with the server's message.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from typing import Any

import httpx

from search_r1.agent.engines.base import GenerationResult, SamplingParams
from search_r1.agent.engines.registry import register_engine
from search_r1.agent.protocol import ANSWER_CLOSE, ANSWER_OPEN, SEARCH_CLOSE, SEARCH_OPEN

_CLOSE_OF = {SEARCH_OPEN: SEARCH_CLOSE, ANSWER_OPEN: ANSWER_CLOSE}
MAX_RETRY_AFTER_S = 60.0  # a server asking for longer is retried after this anyway


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


def stop_of(choice: dict[str, Any], text: str, stop: list[str]) -> str | None:
    """Which stop string ended a ``finish_reason == "stop"`` choice (None: an EOS)."""
    given = choice.get("stop_reason")
    if isinstance(given, str):
        return given
    kept = next((s for s in stop if text.endswith(s)), None)
    if kept is not None:  # the server left it in the text; generation ends at the first one
        return kept
    if "stop_reason" in choice:  # vLLM: None is an EOS, an int a stop token id
        return None
    return infer_stop(text, stop)


def retry_after(response: httpx.Response, default: float) -> float:
    """The wait a 429/503 asks for (seconds or an HTTP date), capped; ``default`` without one."""
    value = response.headers.get("retry-after")
    if value is None:
        return default
    try:
        wait = float(value)
    except ValueError:
        try:
            wait = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)


@register_engine("openai")
class OpenAIEngine:
    path = "completions"

    def __init__(
        self,
        base_url: str,
        served_model: str,
        tokenizer: Any,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        client: httpx.AsyncClient | None = None,
        backoff_s: float = 0.5,
    ):
        self.base_url = base_url.rstrip("/")
        self.served_model = served_model
        self.tokenizer = tokenizer
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(timeout=timeout, headers=headers)

    @classmethod
    def from_config(
        cls,
        base_url: str,
        served_model: str = "",
        tokenizer: Any = "",
        model: str = "",
        api_key_env: str = "",
        **kw: Any,
    ) -> OpenAIEngine:
        """``tokenizer``: a loaded tokenizer (the student's) or a folder ('' = ``model``); the key is
        read from the env var ``api_key_env``."""
        if not base_url:
            raise ValueError(
                "engine.base_url is required for the openai engine (e.g. http://127.0.0.1:8001/v1)"
            )
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        api_key = os.environ.get(api_key_env) if api_key_env else None
        return cls(base_url, served_model or model, tokenizer, api_key, **kw)

    def sampling_fields(self, s: SamplingParams) -> dict[str, Any]:
        """The request fields shared by both endpoints."""
        body: dict[str, Any] = {
            "model": self.served_model,
            "max_tokens": s.max_new_tokens,
            "temperature": 0.0 if s.greedy else s.temperature,
            "top_p": 1.0 if s.greedy else s.top_p,
            "stop": list(s.stop),
        }
        if s.top_k > 0 and not s.greedy:
            body["top_k"] = s.top_k  # a vLLM/SGLang extension
        if s.seed is not None:
            body["seed"] = s.seed
        return body

    def request_body(self, prompt_ids: list[int], s: SamplingParams) -> dict[str, Any]:
        body = {"prompt": self.tokenizer.decode(prompt_ids, skip_special_tokens=False)}
        body |= self.sampling_fields(s)
        if s.logprobs:
            body["logprobs"] = 1
        return body

    async def post(self, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/{self.path}"
        for attempt in range(self.max_retries + 1):
            wait = self.backoff_s * 2**attempt
            try:
                r = await self._client.post(url, json=body)
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code < 400:
                    return r.json()
                error = f"HTTP {r.status_code} from {url}: {r.text[:500]}"
                if r.status_code < 500 and r.status_code != 429:
                    raise EngineHTTPError(error)
                wait = retry_after(r, wait)
            if attempt < self.max_retries:
                await asyncio.sleep(wait)
        raise EngineHTTPError(f"{url} failed after {self.max_retries + 1} attempts ({error})")

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationResult:
        choice = (await self.post(self.request_body(prompt_ids, sampling)))["choices"][0]
        return self.result(choice["text"], choice, sampling)

    def result(self, text: str, choice: dict[str, Any], sampling: SamplingParams) -> GenerationResult:
        """The completion ``text`` of ``choice`` in student tokens, its stop string re-attached."""
        reason = choice.get("finish_reason") or "stop"
        stop_string = stop_of(choice, text, list(sampling.stop)) if reason == "stop" else None
        if stop_string is not None and not text.endswith(stop_string):
            text += stop_string
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if reason != "length":
            reason = "stop" if stop_string is not None else "eos"
        if reason == "eos" and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        logprobs = None  # the server's per-token logprobs: aligned only if its tokenisation matches ours
        if sampling.logprobs:
            logprobs = list((choice.get("logprobs") or {}).get("token_logprobs") or [])
        return GenerationResult(ids, reason, logprobs, stop_string)

    async def aclose(self) -> None:
        await self._client.aclose()
