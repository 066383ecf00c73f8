"""Dynamic micro-batching: concurrent requests share one encoder pass and one index search.

A single worker task drains a queue of pending requests. The first request of a batch waits at most
``max_wait_ms`` for company (or until ``max_batch`` queries are queued), but only when the previous
batch held more than one request: a lone client (concurrency 1) never waits. All taken requests are
searched together in the worker thread with the largest ``topk`` among them, and each gets its own
slice back. While a batch is being searched, new requests pile up and form the next batch, so the
batch size grows with load by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from search_r1.retrieval.hits import Hit

SearchFn = Callable[[list[str], int], list[list[Hit]]]


@dataclass
class _Pending:
    queries: list[str]
    k: int
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, search: SearchFn, executor: Executor, *, max_batch: int, max_wait_ms: float):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._search, self._executor = search, executor
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self._pending: deque[_Pending] = deque()
        self._queued = 0
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_batch_requests = 0
        self.batches = 0  # counters for /health
        self.batched_queries = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._pending:
            p = self._pending.popleft()
            if not p.future.done():
                p.future.set_exception(RuntimeError("server is shutting down"))

    async def submit(self, queries: list[str], k: int) -> list[list[Hit]]:
        if self._task is None or self._task.done():  # never queue work nobody will pick up
            raise RuntimeError("micro-batcher is not running")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(queries, k, fut))
        self._queued += len(queries)
        self._has_work.set()
        if self._queued >= self.max_batch:
            self._full.set()
        return await fut

    def _take(self) -> list[_Pending]:
        batch, n = [], 0
        while self._pending and (not batch or n + len(self._pending[0].queries) <= self.max_batch):
            p = self._pending.popleft()
            self._queued -= len(p.queries)
            if p.future.done():  # the client went away while queued
                continue
            batch.append(p)
            n += len(p.queries)
        if self._queued < self.max_batch:
            self._full.clear()
        if not self._pending:
            self._has_work.clear()
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_work.wait()
            if self.max_wait > 0 and self._queued < self.max_batch and self._last_batch_requests > 1:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
            batch = self._take()
            if not batch:
                continue
            self._last_batch_requests = len(batch)
            queries = [q for p in batch for q in p.queries]
            k = max(p.k for p in batch)
            try:
                hits = await loop.run_in_executor(self._executor, self._search, queries, k)
            except Exception as exc:  # reported to every request of the batch; the worker lives on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.batches += 1
            self.batched_queries += len(queries)
            pos = 0
            for p in batch:
                part = hits[pos : pos + len(p.queries)]
                pos += len(p.queries)
                if not p.future.done():
                    p.future.set_result([per[: p.k] for per in part])
