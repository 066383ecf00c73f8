"""Run the real server in a background thread on a free loopback port (tests, benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from search_r1.retrieval.config import ServerConfig
from search_r1.retrieval.searchers import Retriever
from search_r1.retrieval.server import create_app


@contextmanager
def serve_in_thread(cfg: ServerConfig, retriever: Retriever, start_timeout: float = 60.0) -> Iterator[str]:
    """Yield the base URL of a uvicorn server serving ``retriever``; the socket is bound before start,
    so there is no race for the port. The server is shut down on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((cfg.host, cfg.port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(cfg, retriever), log_level="warning", access_log=False, timeout_keep_alive=30
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="retriever-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("retriever server failed to start")
        time.sleep(0.02)
    try:
        yield f"http://{cfg.host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
