"""LRU cache of search results in front of the search worker.

A GRPO step samples each question n times, and the n episodes usually open with the same query, so
most of what the server is asked during RL it has just answered. The cache maps ``(query, k)`` to
the hits the index returned and is consulted per query before the micro-batcher: only misses are
searched, and their results are stored. Identical queries that arrive while their search is still
running (the n samples of one question reach their first search at about the same time) join that
search instead of starting another, so a repeated query costs one search even under concurrency.

Results are stored per ``k`` (a top-3 and a top-5 answer are separate entries), exactly as the index
returned them, so a cached answer is the same as an uncached one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cachetools import LRUCache

from search_r1.retrieval.hits import Hit

AsyncSearch = Callable[[list[str], int], Awaitable[list[list[Hit]]]]
Key = tuple[str, int]


class HitCache:
    """``(query, k) -> hits`` with LRU eviction, plus joining of identical in-flight searches.

    Counters (for ``GET /health``): ``hits`` answered from the cache, ``joined`` answered by a search
    another request had already started, ``misses`` searched.
    """

    def __init__(self, max_size: int):
        if max_size < 1:
            raise ValueError(f"cache size must be >= 1, got {max_size}")
        self._lru: LRUCache[Key, list[Hit]] = LRUCache(maxsize=max_size)
        self._inflight: dict[Key, tuple[asyncio.Task[list[list[Hit]]], int]] = {}
        self.hits = self.joined = self.misses = 0

    @property
    def max_size(self) -> int:
        return int(self._lru.maxsize)

    def __len__(self) -> int:
        return len(self._lru)

    def stats(self) -> dict[str, int]:
        return {
            "size": len(self),
            "max_size": self.max_size,
            "hits": self.hits,
            "joined": self.joined,
            "misses": self.misses,
        }

    async def retrieve(self, queries: list[str], k: int, search: AsyncSearch) -> list[list[Hit]]:
        """Hits for each query at ``k``; ``search`` is called once with the queries nobody has answered."""
        waits: list[tuple[int, asyncio.Task[list[list[Hit]]], int]] = []  # (position, search task, row)
        out: list[list[Hit]] = [[] for _ in queries]
        new: dict[Key, int] = {}  # keys this request searches -> row in its search
        new_positions: list[tuple[int, int]] = []  # (position, row)
        for i, q in enumerate(queries):
            key = (q, k)
            cached = self._lru.get(key)
            if cached is not None:
                self.hits += 1
                out[i] = cached
            elif key in self._inflight:
                self.joined += 1
                task, row = self._inflight[key]
                waits.append((i, task, row))
            elif key in new:  # the same query twice in one request: searched once
                self.joined += 1
                new_positions.append((i, new[key]))
            else:
                self.misses += 1
                new[key] = len(new)
                new_positions.append((i, new[key]))
        if new:
            keys = list(new)
            # A task of its own: when this request is cancelled (client gone), the search still
            # finishes for the requests that joined it, and its result is still stored.
            task = asyncio.get_running_loop().create_task(search([q for q, _ in keys], k))
            for row, key in enumerate(keys):
                self._inflight[key] = (task, row)
            task.add_done_callback(lambda t: self._finish(keys, t))
            found = await asyncio.shield(task)
            for i, row in new_positions:
                out[i] = found[row]
        for i, task, row in waits:
            out[i] = (await asyncio.shield(task))[row]
        return out

    def _finish(self, keys: list[Key], task: asyncio.Task[list[list[Hit]]]) -> None:
        for key in keys:
            if self._inflight.get(key, (None,))[0] is task:
                del self._inflight[key]
        if task.cancelled() or task.exception() is not None:  # the waiting requests report it; store nothing
            return
        for key, hits in zip(keys, task.result(), strict=True):
            self._lru[key] = hits
