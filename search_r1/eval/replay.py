"""Retrieval logs: every query an evaluation sent, with what came back, and a retriever that replays them.

An evaluation writes ``retrieval_log.jsonl`` in its output folder: one line per query, ``{"query",
"topk", "docs": [{"id", "contents", "score"}]}`` — the passages' text too, so a replay needs neither
the server nor the corpus. ``replay=<that log>`` evaluates against :class:`ReplayRetriever`, which
answers each ``(query, topk)`` from the log; with greedy decoding the predictions and metrics are those
of the recorded run. A query the log lacks is either an error that stops the run
(``replay_miss=error``, the default: the replay would no longer be the recorded run) or a counted miss
(``replay_miss=count``): the search fails as an outage would, and ``results.json`` counts it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from search_r1.retrieval.client import Passage, RetrieverError

LOG_NAME = "retrieval_log.jsonl"
MISS_MODES = ("error", "count")


class ReplayMiss(RetrieverError):
    """A query the replayed log does not hold (``replay_miss=count``: a failed search, counted)."""


class ReplayMissError(Exception):
    """A query the replayed log does not hold (``replay_miss=error``: the evaluation stops)."""


class RecordingRetriever:
    """Wraps a retriever client and appends every answered query to a log."""

    def __init__(self, inner: Any, path: Path):
        self.inner = inner
        self._fh: IO[str] = path.open("a", encoding="utf-8")

    async def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[Passage]]:
        k = self.inner.topk if topk is None else topk
        results = await self.inner.retrieve(queries, topk=k)
        for query, docs in zip(queries, results, strict=True):
            docs_json = [{"id": d.id, "contents": d.contents, "score": d.score} for d in docs]
            self._fh.write(
                json.dumps({"query": query, "topk": k, "docs": docs_json}, ensure_ascii=False) + "\n"
            )
        self._fh.flush()
        return results

    async def health(self) -> dict:
        return await self.inner.health()

    async def aclose(self) -> None:
        self._fh.close()
        await self.inner.aclose()


def read_log(path: str | Path) -> dict[tuple[str, int], list[Passage]]:
    """``(query, topk) -> passages`` from a retrieval log; a bad line names the file and line."""
    table: dict[tuple[str, int], list[Passage]] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            try:
                row = json.loads(line)
                docs = [Passage(str(d["id"]), str(d["contents"]), d.get("score")) for d in row["docs"]]
                table[(str(row["query"]), int(row["topk"]))] = docs
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not a retrieval-log line ({exc!r})") from None
    return table


class ReplayRetriever:
    """Answers queries from a retrieval log instead of a server."""

    def __init__(self, path: str | Path, topk: int, on_miss: str = "error"):
        if on_miss not in MISS_MODES:
            raise ValueError(f"replay_miss must be one of {MISS_MODES}, got {on_miss!r}")
        self.path, self.topk, self.on_miss = str(path), topk, on_miss
        self.table = read_log(path)
        self.misses = 0

    async def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[Passage]]:
        k = self.topk if topk is None else topk
        out = []
        for query in queries:
            docs = self.table.get((query, k))
            if docs is None:
                self.misses += 1
                where = f"query {query!r} (topk {k}) is not in the retrieval log {self.path}"
                if self.on_miss == "error":
                    raise ReplayMissError(f"{where}; replay_miss=count scores it as a failed search")
                raise ReplayMiss(where)
            out.append(docs)
        return out

    async def health(self) -> dict:
        return {"status": "ok", "replay": self.path, "queries": len(self.table)}

    async def aclose(self) -> None:
        return None
