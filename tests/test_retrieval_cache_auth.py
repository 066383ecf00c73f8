"""The server's query cache and bearer-token auth end to end: real server, real client, real rollout.

Cache: a repeated query is answered from the cache with the same bytes as an uncached server, ``k`` is
part of the key, the LRU evicts, ``cache_size=0`` turns it off, identical concurrent queries share one
search. Auth: every client sends the token (argument or ``SEARCH_R1_RETRIEVER_TOKEN``), a refused
token is a :class:`RetrieverAuthError` that stops a rollout and makes an entry point exit with one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from test_retrieval_helpers import build_world_index

from search_r1.agent.engines.base import GenerationResult, SamplingParams
from search_r1.agent.protocol import ProtocolConfig
from search_r1.agent.rollout import run_episode
from search_r1.paths import REPO_ROOT
from search_r1.retrieval.cache import HitCache
from search_r1.retrieval.client import (
    TOKEN_ENV,
    AsyncRetrieverClient,
    Passage,
    RetrieverAuthError,
    RetrieverBadRequest,
    RetrieverClient,
    RetrieverUnavailable,
)
from search_r1.retrieval.config import ServerConfig
from search_r1.retrieval.hits import Hit
from search_r1.retrieval.local import serve_in_thread
from search_r1.retrieval.searchers import load_retriever
from search_r1.retrieval.server import create_app

HTTP = httpx.Client(timeout=60, verify=False)
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def world_index(world) -> Path:
    return build_world_index(world.corpus)


def serve(index: Path, **kw):
    cfg = ServerConfig(index_dir=str(index), port=0, encoder_device="cpu", **kw)
    return serve_in_thread(cfg, load_retriever(cfg))


def post(url: str, queries: list[str], topk: int = 3) -> bytes:
    r = HTTP.post(f"{url}/retrieve", json={"queries": queries, "topk": topk, "return_scores": True})
    assert r.status_code == 200, r.text
    return r.content


def same_hits(a: bytes, b: bytes) -> bool:
    """Two servers' answers agree: the same documents in the same order, scores equal to float32
    precision. Two encoder instances need not agree bit for bit (BLAS kernels depend on memory
    alignment), so only answers of the same server are compared byte for byte."""
    ra, rb = json.loads(a)["result"], json.loads(b)["result"]
    docs = [[h["document"] for h in q] for q in ra] == [[h["document"] for h in q] for q in rb]
    scores = [h["score"] for q in ra for h in q], [h["score"] for q in rb for h in q]
    return docs and scores[0] == pytest.approx(scores[1], rel=1e-5)


def cache_stats(url: str) -> dict:
    return HTTP.get(f"{url}/health").json()["cache"]


# --- cache --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uncached_dense(world_index):
    with serve(world_index, backend="dense", cache_size=0) as url:
        yield url


def test_repeated_query_is_answered_from_the_cache(world_index, uncached_dense):
    q = ["What is the capital of Thilfend?"]
    with serve(world_index, backend="dense") as url:
        assert cache_stats(url) == {
            "enabled": True,
            "size": 0,
            "max_size": 65536,
            "hits": 0,
            "joined": 0,
            "misses": 0,
        }
        first = post(url, q)
        assert (cache_stats(url)["misses"], cache_stats(url)["hits"]) == (1, 0)
        batches = HTTP.get(f"{url}/health").json()["batching"]["queries"]
        second = post(url, q)
        stats = cache_stats(url)
        assert (stats["misses"], stats["hits"], stats["size"]) == (1, 1, 1)
        assert HTTP.get(f"{url}/health").json()["batching"]["queries"] == batches, "a hit was searched"
        assert first == second  # the hit is the first answer, byte for byte
        assert same_hits(first, post(uncached_dense, q))
        # Another k is another entry, with the uncached answer for that k.
        assert same_hits(post(url, q, topk=5), post(uncached_dense, q, topk=5))
        stats = cache_stats(url)
        assert (stats["misses"], stats["hits"], stats["size"]) == (2, 1, 2)
        # A request mixing a cached and a new query searches only the new one.
        mixed = q + ["Abraham Lincoln emancipation"]
        assert same_hits(post(url, mixed), post(uncached_dense, mixed))
        stats = cache_stats(url)
        assert (stats["misses"], stats["hits"], stats["size"]) == (3, 2, 3)


def test_lru_eviction_at_a_small_size(world_index):
    with serve(world_index, backend="bm25", cache_size=2) as url:
        a, b = post(url, ["Lincoln"]), post(url, ["river"])
        assert post(url, ["Lincoln"]) == a  # hit: "Lincoln" is now the most recently used
        c = post(url, ["castle"])  # evicts "river", the least recently used
        stats = cache_stats(url)
        assert (stats["size"], stats["max_size"], stats["hits"], stats["misses"]) == (2, 2, 1, 3)
        assert post(url, ["Lincoln"]) == a and cache_stats(url)["hits"] == 2
        assert post(url, ["river"]) == b and cache_stats(url)["misses"] == 4  # evicted: searched again
        # "river" came back in place of "castle", which had not been used since "Lincoln" was
        assert post(url, ["castle"]) == c and cache_stats(url)["misses"] == 5


def test_cache_size_zero_turns_it_off(uncached_dense):
    q = ["river flowing through a city"]
    assert post(uncached_dense, q) == post(uncached_dense, q)
    assert cache_stats(uncached_dense) == {"enabled": False}
    with pytest.raises(ValueError, match="cache_size"):
        create_app(ServerConfig(cache_size=-1), retriever=None)


def test_identical_concurrent_queries_share_one_search(world_index):
    """Like the n samples of one GRPO question: 16 requests for one query cost one search."""
    q = ["Who founded the company in Velmora?"]
    with serve(world_index, backend="dense") as url:
        before = HTTP.get(f"{url}/health").json()["batching"]["queries"]

        async def run() -> list:
            async with AsyncRetrieverClient(url, timeout=60, max_retries=0) as client:
                return await asyncio.gather(*(client.retrieve(q) for _ in range(16)))

        results = asyncio.run(run())
        health = HTTP.get(f"{url}/health").json()
    assert all(r == results[0] for r in results)
    assert health["cache"]["misses"] == 1
    assert health["cache"]["hits"] + health["cache"]["joined"] == 15
    assert health["batching"]["queries"] - before == 1


def test_failed_search_is_reported_to_every_waiter_and_not_stored():
    calls: list[list[str]] = []

    async def search(queries: list[str], k: int) -> list[list[Hit]]:
        calls.append(queries)
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise RuntimeError("index went away")
        return [[Hit(q, q, 1.0)] for q in queries]

    async def run() -> None:
        cache = HitCache(8)
        results = await asyncio.gather(
            cache.retrieve(["a", "a"], 3, search), cache.retrieve(["a"], 3, search), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results) and calls == [["a"]]
        assert len(cache) == 0
        assert await cache.retrieve(["a", "b"], 3, search) == [[Hit("a", "a", 1.0)], [Hit("b", "b", 1.0)]]
        assert calls[1] == ["a", "b"] and len(cache) == 2

    asyncio.run(run())


# --- auth ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def protected(world_index):
    with serve(world_index, backend="bm25", token=TOKEN) as url:
        yield url


def test_client_sends_the_token_from_its_argument_or_the_environment(protected, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with RetrieverClient(protected, token=TOKEN) as client:
        assert client.retrieve(["Lincoln"])[0]
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with RetrieverClient(protected) as client:
        assert client.retrieve(["Lincoln"])[0]

    async def run() -> list:
        async with AsyncRetrieverClient(protected) as client:
            return await client.retrieve(["Lincoln"])

    assert asyncio.run(run())[0]


@pytest.mark.parametrize("token", [None, "wrong"], ids=["missing", "wrong"])
def test_refused_token_raises_auth_error(protected, monkeypatch, token):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with RetrieverClient(protected, token=token) as client, pytest.raises(RetrieverAuthError) as err:
        client.retrieve(["Lincoln"])
    assert isinstance(err.value, RetrieverBadRequest) and err.value.status == 401
    assert protected in str(err.value) and TOKEN_ENV in str(err.value) and "retriever_token" in str(err.value)


def test_403_is_an_auth_error_too():
    async def run() -> None:
        client = AsyncRetrieverClient("http://retriever.invalid", max_retries=3)
        await client._http.aclose()
        client._http = httpx.AsyncClient(
            base_url=client.url,
            transport=httpx.MockTransport(lambda _: httpx.Response(403, json={"error": "forbidden"})),
        )
        async with client:
            with pytest.raises(RetrieverAuthError, match="HTTP 403: forbidden"):
                await client.retrieve(["q"])

    asyncio.run(run())


@dataclass
class ScriptedEngine:
    """Always answers with one search action, as an engine honouring the stop strings would."""

    tok: object

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationResult:
        return GenerationResult(self.tok.encode("<search> q </search>"), "stop", None, "</search>")


class FailingRetriever:
    def __init__(self, error: Exception):
        self.error = error

    async def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[Passage]]:
        raise self.error


class WordTokenizer:
    """Characters as ids: enough for the rollout's encode/decode round trip."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(map(chr, ids))


def _episode(error: Exception):
    tok = WordTokenizer()
    cfg = ProtocolConfig(max_turns=1)
    return asyncio.run(
        run_episode(ScriptedEngine(tok), tok, FailingRetriever(error), [1, 2], cfg, SamplingParams(), "q")
    )


def test_rollout_stops_on_auth_error_but_observes_an_outage():
    with pytest.raises(RetrieverAuthError):
        _episode(RetrieverAuthError(401, "missing or invalid bearer token", "http://x"))
    traj = _episode(RetrieverUnavailable("down"))
    assert traj.turns[0].retrieval_failed and traj.turns[0].error == "RetrieverUnavailable"
    assert "search failed" in traj.turns[0].observation


def test_eval_exits_with_one_line_against_a_protected_server(protected, tiny_model, world):
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | {"OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "search_r1.eval",
        "run",
        "mode=rag",
        f"retriever_url={protected}",
        f"data=[{world.root / 'test.parquet'}]",
        "max_examples=2",
        f"engine.model={tiny_model}",
        "engine.device=cpu",
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: retriever at ") and TOKEN_ENV in last
    assert "Traceback" not in proc.stderr
