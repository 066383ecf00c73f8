"""The retriever the single-machine trainer talks to: a URL, or the index served in-process.

Either way the rollout goes through the real HTTP client (timeouts, retries, typed errors), so a
retriever outage during a step becomes failure observations, never a crashed step (a refused token
is the exception: it stops the run, see ``search_r1.agent.rollout._search``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from search_r1.agent.rollout import Retriever
from search_r1.retrieval.client import AsyncRetrieverClient
from search_r1.rl.config import RetrieverConfig


@contextlib.contextmanager
def open_retriever(
    cfg: RetrieverConfig, runner: asyncio.Runner, given: Retriever | None = None
) -> Iterator[Retriever]:
    """Yield a retriever usable on ``runner``'s event loop (``given`` wins when passed)."""
    if given is not None:
        yield given
        return
    with contextlib.ExitStack() as stack:
        url = cfg.url
        if url is None:
            from search_r1.retrieval.config import ServerConfig
            from search_r1.retrieval.local import serve_in_thread
            from search_r1.retrieval.searchers import load_retriever

            server_cfg = ServerConfig(index_dir=cfg.index_dir, backend=cfg.backend, port=0, token=cfg.token)
            url = stack.enter_context(serve_in_thread(server_cfg, load_retriever(server_cfg)))
        client = runner.run(_make_client(url, cfg.timeout_s, cfg.token))
        try:
            yield client
        finally:
            runner.run(client.aclose())


async def _make_client(url: str, timeout: float, token: str | None) -> AsyncRetrieverClient:
    return AsyncRetrieverClient(url, timeout=timeout, token=token)
