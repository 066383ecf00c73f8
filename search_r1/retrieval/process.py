"""The retrieval server as a child process for the length of a ``with`` block.

SFT practice worlds (and tests) serve an index of their own for a while; the process lifecycle
(free port, health wait, stop on exit, on an exception, on Ctrl-C and on SIGTERM) is the generic
one of :mod:`search_r1.services`. With a URL given, it only checks that a server answers there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from search_r1.services import Service, ServiceProcess, wait_until_healthy


class RetrieverProcess:
    """``with RetrieverProcess("", index_dir, args, log) as url:`` serves ``index_dir`` on a free
    loopback port."""

    def __init__(
        self, url: str, index_dir: str, server_args: list[str], log: Path, start_timeout_s: float = 300
    ):
        self.url = url
        cmd = [sys.executable, "-m", "search_r1.retrieval.server", f"index_dir={index_dir}", "port={port}"]
        self.service = ServiceProcess(
            Service(
                "retriever",
                [*cmd, *server_args],
                health="http://127.0.0.1:{port}/health",
                url="http://127.0.0.1:{port}",
                log=log,
                start_timeout_s=start_timeout_s,
            )
        )

    def __enter__(self) -> str:
        if self.url:
            wait_until_healthy(self.url.rstrip("/") + "/health", 10)
            return self.url
        return self.service.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.service.__exit__(*exc)
