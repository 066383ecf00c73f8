"""The retrieval HTTP server (DESIGN §3): ``POST /retrieve``, ``GET /health``, OpenAPI docs at /docs.

The request body is parsed by hand rather than by FastAPI's model binding so that every kind of bad
input (oversized body, non-UTF-8 bytes, invalid JSON, wrong types, limits) gets a precise 4xx JSON
error ``{"error": message, "status": code}`` and never reaches the search worker. Each query is
first looked up in an LRU cache of ``(query, k) -> hits`` (``cache_size``; :mod:`.cache`), and only the
misses are searched, on a single worker thread, either micro-batched (default) or one request at a time.

Run: ``python -m search_r1.retrieval.server [--config FILE] key=value ...`` (or retrieval_launch.sh).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from search_r1.config import die, entry_point, parse_config
from search_r1.retrieval.batching import MicroBatcher
from search_r1.retrieval.cache import HitCache
from search_r1.retrieval.client import TOKEN_ENV
from search_r1.retrieval.config import ServerConfig
from search_r1.retrieval.hits import Hit

if TYPE_CHECKING:
    from search_r1.retrieval.searchers import Retriever

log = logging.getLogger(__name__)


class BadRequest(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


# Pydantic models only document the API in OpenAPI; validation is done by ``parse_request``.
class RetrieveRequest(BaseModel):
    queries: list[str] = Field(description="query strings; an empty list gives an empty result")
    topk: int | None = Field(None, description="passages per query (server default when null)")
    return_scores: bool = Field(False, description="wrap each document as {document, score}")


class Document(BaseModel):
    id: str
    contents: str = Field(description='"Title"\\ntext')


class ScoredDocument(BaseModel):
    document: Document
    score: float


class RetrieveResponse(BaseModel):
    result: list[list[ScoredDocument | Document]]


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    return json_response({"error": message, "status": status}, status, headers)


def parse_request(raw: bytes, cfg: ServerConfig) -> tuple[list[str], int, bool]:
    """Validate a ``/retrieve`` body; raises :class:`BadRequest` naming the first problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(422, f"body must be a JSON object, got {type(body).__name__}")
    if "queries" not in body:
        raise BadRequest(422, "missing field 'queries' (a list of strings)")
    queries = body["queries"]
    if not isinstance(queries, list):
        raise BadRequest(422, f"'queries' must be a list of strings, got {type(queries).__name__}")
    if len(queries) > cfg.max_queries:
        raise BadRequest(413, f"too many queries: {len(queries)} > max_queries={cfg.max_queries}")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise BadRequest(422, f"queries[{i}] must be a string, got {type(q).__name__}")
        if not q.strip():
            raise BadRequest(422, f"queries[{i}] is empty")
        if len(q) > cfg.max_query_chars:
            raise BadRequest(
                413, f"queries[{i}] has {len(q)} characters > max_query_chars={cfg.max_query_chars}"
            )
    topk = body.get("topk")
    if topk is None:
        topk = cfg.topk
    elif isinstance(topk, bool) or not isinstance(topk, int):
        raise BadRequest(422, f"'topk' must be an integer or null, got {type(topk).__name__}")
    elif not 1 <= topk <= cfg.max_topk:
        raise BadRequest(422, f"'topk' must be between 1 and {cfg.max_topk}, got {topk}")
    return_scores = body.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise BadRequest(422, f"'return_scores' must be a boolean, got {type(return_scores).__name__}")
    return queries, topk, return_scores


def format_result(hits: list[list[Hit]], return_scores: bool) -> dict:
    if return_scores:
        return {
            "result": [
                [{"document": {"id": h.id, "contents": h.contents}, "score": h.score} for h in per]
                for per in hits
            ]
        }
    return {"result": [[{"id": h.id, "contents": h.contents} for h in per] for per in hits]}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes whether or not Content-Length is honest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {declared} bytes exceeds max_body_bytes={limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body exceeds max_body_bytes={limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(cfg: ServerConfig, retriever: Retriever) -> FastAPI:
    """The ASGI app over an opened retriever (tests and benchmarks build it the same way)."""
    token = cfg.token or os.environ.get(TOKEN_ENV) or None
    if cfg.cache_size < 0:
        raise ValueError(f"cache_size must be >= 0 (0 = off), got {cfg.cache_size}")
    cache = HitCache(cfg.cache_size) if cfg.cache_size else None
    state: dict[str, Any] = {}

    async def search(queries: list[str], k: int) -> list[list[Hit]]:
        batcher: MicroBatcher | None = state["batcher"]
        if batcher is not None:
            return await batcher.submit(queries, k)
        return await asyncio.get_running_loop().run_in_executor(
            state["executor"], retriever.retrieve, queries, k
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")
        # Warm-up so the first real request does not pay for lazy initialisation.
        await asyncio.get_running_loop().run_in_executor(executor, retriever.retrieve, ["warm up"], 1)
        batcher = None
        if cfg.batching.enabled:
            batcher = MicroBatcher(
                retriever.retrieve,
                executor,
                max_batch=cfg.batching.max_batch,
                max_wait_ms=cfg.batching.max_wait_ms,
            )
            batcher.start()
        state.update(executor=executor, batcher=batcher)
        try:
            yield
        finally:
            if batcher is not None:
                await batcher.stop()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="search-r1 retriever",
        description="Top-k passage retrieval for search agents (DESIGN §3). Errors: {error, status} with a 4xx code.",
        version="1.0",
        lifespan=lifespan,
    )

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(exc.status_code, msg, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> Response:
        log.exception("internal error")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    def check_auth(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise BadRequest(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})

    @app.post(
        "/retrieve",
        response_model=RetrieveResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": RetrieveRequest.model_json_schema()}},
            }
        },
        responses={
            400: {"description": "bad JSON/UTF-8"},
            401: {"description": "auth"},
            413: {"description": "size limits"},
            415: {"description": "not JSON"},
            422: {"description": "invalid fields"},
        },
    )
    async def retrieve(request: Request) -> Response:
        """Top-k passages per query; `return_scores` wraps each as `{document, score}`."""
        check_auth(request)
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise BadRequest(415, f"content type must be application/json, got {ctype or 'none'!r}")
        queries, k, return_scores = parse_request(await read_body(request, cfg.max_body_bytes), cfg)
        if not queries:
            return json_response({"result": []})
        try:
            hits = await (cache.retrieve(queries, k, search) if cache is not None else search(queries, k))
        except (
            Exception
        ) as exc:  # answered here: Starlette's last-resort handler re-raises and drops the connection
            log.exception("search failed")
            return error_response(500, f"search failed: {type(exc).__name__}: {exc}")
        return json_response(format_result(hits, return_scores))

    @app.get("/health")
    async def health() -> Response:
        """Liveness plus what is being served (no auth, no secrets)."""
        batcher: MicroBatcher | None = state.get("batcher")
        return json_response(
            {
                "status": "ok",
                "backend": retriever.backend,
                "engine": retriever.where,
                "n_docs": retriever.n_docs,
                "reranker": cfg.reranker.model,
                "batching": {
                    "enabled": batcher is not None,
                    "max_batch": cfg.batching.max_batch,
                    "max_wait_ms": cfg.batching.max_wait_ms,
                    "batches": batcher.batches if batcher else 0,
                    "queries": batcher.batched_queries if batcher else 0,
                },
                "limits": {
                    "topk": cfg.topk,
                    "max_topk": cfg.max_topk,
                    "max_queries": cfg.max_queries,
                    "max_query_chars": cfg.max_query_chars,
                    "max_body_bytes": cfg.max_body_bytes,
                },
                "cache": {"enabled": cache is not None, **(cache.stats() if cache is not None else {})},
                "auth": token is not None,
            }
        )

    return app


@entry_point
def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from search_r1.paths import CONFIG_DIR

    cfg = parse_config(
        ServerConfig, "Serve an index over HTTP (DESIGN §3).", CONFIG_DIR / "retriever" / "default.yaml", argv
    )
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not (cfg.token or os.environ.get(TOKEN_ENV)):
        log.warning("binding %s without a token: anyone who can reach this port can query", cfg.host)
    from search_r1.retrieval.searchers import load_retriever  # heavy (torch, FAISS): after --help

    if cfg.torch_threads > 0:
        import torch

        torch.set_num_threads(cfg.torch_threads)  # process-wide: this process is the server
    try:
        retriever = load_retriever(cfg)
        app = create_app(cfg, retriever)
    except (FileNotFoundError, ValueError) as exc:  # no such index, a bad setting: bad input
        die(str(exc), 2)
    except RuntimeError as exc:  # pyserini's JVM, a FAISS GPU failure: the machine, not the input
        die(str(exc))
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(
        f"serving {retriever.backend} ({retriever.where}, {retriever.n_docs} passages) on "
        f"http://{host}:{cfg.port}  —  API docs: http://{host}:{cfg.port}/docs",
        flush=True,
    )
    uvicorn.run(
        app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False, timeout_keep_alive=30
    )


if __name__ == "__main__":
    main()
