"""The retriever client every stage uses (teacher generation, RL rollout, evaluation).

The predecessor made one blocking request per turn with no timeout and no retry, so a slow or dead
retriever hung or crashed a training step. Here every request has a timeout, transient failures
(connection errors, timeouts, 5xx, 429) are retried a bounded number of times with exponential
backoff and jitter, and what is left surfaces as a typed :class:`RetrieverError` — never a hang.
4xx answers mean the request itself is wrong, so they are raised at once as
:class:`RetrieverBadRequest`; 401/403 as its subclass :class:`RetrieverAuthError`, which callers
let through instead of turning it into a failed-search observation (a wrong token would otherwise
quietly score every search of a run as failed).

The bearer token is the ``token`` argument, else the environment variable named by
:data:`TOKEN_ENV`, the same variable the server reads, so one exported variable configures both ends.

:class:`AsyncRetrieverClient` is the implementation (httpx, pooled connections);
:class:`RetrieverClient` is a sync wrapper that runs it on a private event-loop thread, so it also
works when the caller is itself inside a running event loop (notebooks, Ray actors).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from search_r1.data.corpus import split_contents

T = TypeVar("T")

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_AUTH_STATUS = frozenset({401, 403})

TOKEN_ENV = "SEARCH_R1_RETRIEVER_TOKEN"
"""Environment variable holding the bearer token (read by the server and by every client)."""


@dataclass(frozen=True)
class Passage:
    """One retrieved document, as the server returned it."""

    id: str
    contents: str  # '"Title"\ntext'
    score: float | None = None

    @property
    def title(self) -> str:
        return split_contents(self.contents)[0]

    @property
    def text(self) -> str:
        return split_contents(self.contents)[1]


class RetrieverError(Exception):
    """Base class of every error the client raises."""


class RetrieverUnavailable(RetrieverError):
    """The server refused connections or kept failing (5xx) after all retries."""


class RetrieverTimeout(RetrieverError):
    """Every attempt ran past the per-request timeout."""


class RetrieverBadRequest(RetrieverError):
    """The server rejected the request (4xx); retrying would not help."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class RetrieverAuthError(RetrieverBadRequest):
    """The server refused the bearer token (401/403): a configuration error, not a failed search."""

    def __init__(self, status: int, message: str, url: str):
        super().__init__(status, message)
        self.url = url
        self.args = (
            f"retriever at {url} refused the request (HTTP {status}: {message}); set the server's token "
            f"in the config (retriever_token=..., retriever.token=... in RL configs) or export {TOKEN_ENV}",
        )


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:500]


def _parse_item(item: Any) -> Passage:
    """Accepts both API forms: ``{"document": {...}, "score": s}`` and the bare document."""
    if isinstance(item, dict) and isinstance(item.get("document"), dict):
        doc, score = item["document"], item.get("score")
    else:
        doc, score = item, None
    if not isinstance(doc, dict) or "id" not in doc or "contents" not in doc:
        raise RetrieverError(f"malformed passage in response: {str(item)[:200]}")
    return Passage(str(doc["id"]), str(doc["contents"]), None if score is None else float(score))


def parse_response(body: Any, n_queries: int) -> list[list[Passage]]:
    """Decode a ``POST /retrieve`` response body; checks there is one result list per query."""
    if not isinstance(body, dict) or not isinstance(body.get("result"), list):
        raise RetrieverError("malformed response: expected {'result': [...]}")
    result = body["result"]
    if len(result) != n_queries:
        raise RetrieverError(f"server answered {len(result)} result lists for {n_queries} queries")
    return [[_parse_item(item) for item in per_query] for per_query in result]


class AsyncRetrieverClient:
    """Async client for the retriever HTTP API (DESIGN §3) with timeouts, retries and typed errors."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        topk: int = 3,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.2,
        token: str | None = None,
        max_connections: int = 64,
    ):
        """``token``: bearer token sent on every request; None (or empty) = ``$SEARCH_R1_RETRIEVER_TOKEN``,
        and no Authorization header when that is unset too."""
        if topk < 1:
            raise ValueError("topk must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.url = url.rstrip("/")
        self.topk = topk
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        token = token or os.environ.get(TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(timeout),
            headers=headers,
            # Loading the CA bundle costs ~50 ms (seconds on a busy node) per client; plain-http URLs
            # never use it (redirects are not followed), so only https clients pay for verification.
            verify=self.url.startswith("https://"),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[Passage]]:
        """Top-``topk`` passages for each query, one list per query in order (with scores)."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings, not a single string")
        queries = list(queries)
        if not queries:
            return []
        payload = {"queries": queries, "topk": self.topk if topk is None else topk, "return_scores": True}
        body = await self._request("POST", "/retrieve", json=payload)
        return parse_response(body, len(queries))

    async def health(self) -> dict:
        """The server's ``GET /health`` body (backend, corpus size, ...)."""
        return await self._request("GET", "/health")

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                # Exponential backoff with full jitter in [0.5, 1.5)×, capped so a retry loop stays bounded.
                delay = min(self.backoff * 2 ** (attempt - 1), 5.0) * (0.5 + random.random())
                await asyncio.sleep(delay)
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TimeoutException as exc:
                last = RetrieverTimeout(f"{method} {self.url}{path} timed out after {self.timeout}s")
                last.__cause__ = exc
                continue
            except httpx.TransportError as exc:
                last = RetrieverUnavailable(f"cannot reach the retriever at {self.url}: {exc!r}")
                last.__cause__ = exc
                continue
            if response.status_code in _RETRY_STATUS:
                last = RetrieverUnavailable(
                    f"retriever at {self.url} answered HTTP {response.status_code}: {_error_message(response)}"
                )
                continue
            if response.status_code in _AUTH_STATUS:
                raise RetrieverAuthError(response.status_code, _error_message(response), self.url)
            if 400 <= response.status_code < 500:
                raise RetrieverBadRequest(response.status_code, _error_message(response))
            if response.status_code >= 300:
                raise RetrieverError(f"unexpected HTTP {response.status_code}: {_error_message(response)}")
            try:
                return response.json()
            except ValueError as exc:
                raise RetrieverError(f"response is not JSON: {response.text[:200]!r}") from exc
        assert last is not None
        raise type(last)(f"{last} (after {self.max_retries + 1} attempts)") from last.__cause__

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRetrieverClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class RetrieverClient:
    """Blocking wrapper around :class:`AsyncRetrieverClient` (same arguments, same errors)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="retriever-client", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncRetrieverClient:
            return AsyncRetrieverClient(url, **kwargs)

        try:
            self._client = self._run(make())
        except BaseException:  # bad arguments: do not leak the loop thread
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RetrieverError("client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def url(self) -> str:
        return self._client.url

    def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[Passage]]:
        return self._run(self._client.retrieve(queries, topk))

    def health(self) -> dict:
        return self._run(self._client.health())

    def close(self) -> None:
        if self._closed:
            return
        self._run(self._client.aclose())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> RetrieverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
