"""Run the retrieval server as a child process for the length of a ``with`` block.

Used by the experiment runner: one server for every stage, stopped on exit, on an exception, on
Ctrl-C and on SIGTERM. With a URL given, it only checks that the server there answers.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from search_r1.paths import REPO_ROOT
from search_r1.retrieval.client import RetrieverClient, RetrieverError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout_s
    with RetrieverClient(url, timeout=2.0, max_retries=0) as client:
        while True:
            try:
                client.health()
                return
            except RetrieverError:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"the retriever exited with code {proc.returncode}") from None
                if time.time() > deadline:
                    raise RuntimeError(f"no retriever answered at {url} within {timeout_s:.0f}s") from None
                time.sleep(0.5)


class RetrieverProcess:
    """``with RetrieverProcess("", index_dir) as url:`` serves ``index_dir`` on a free loopback port."""

    def __init__(
        self, url: str, index_dir: str, server_args: list[str], log: Path, start_timeout_s: float = 300
    ):
        self.url, self.index_dir, self.server_args = url, index_dir, server_args
        self.log, self.start_timeout_s = log, start_timeout_s
        self.proc: subprocess.Popen | None = None
        self._old_sigterm = None

    def __enter__(self) -> str:
        if self.url:
            wait_healthy(self.url, 10)
            return self.url
        port = _free_port()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "search_r1.retrieval.server",
            f"index_dir={self.index_dir}",
            f"port={port}",
            *self.server_args,
        ]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, self.start_timeout_s, self.proc)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        print(
            f"[retriever] serving {self.index_dir} at {url} (pid {self.proc.pid}, log {self.log})", flush=True
        )
        return url

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through __exit__, which stops the server

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            print("[retriever] stopped", flush=True)
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
