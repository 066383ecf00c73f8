"""A long-running helper process (a retriever, a teacher model server) for the length of a ``with`` block.

The experiment runner keeps the retriever up for every stage and a teacher server up only while
teacher trajectories are generated (at paper scale the teacher's GPUs are the trainers' GPUs, so it
must be gone before SFT starts). Each service is a child process with its own environment (venv,
``CUDA_VISIBLE_DEVICES``) and log; it is ready when its health URL answers 200, and it is stopped on
exit, on an exception, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from search_r1.paths import REPO_ROOT


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    """What to start and how to tell it is up; ``cmd`` may contain ``{port}``, filled at start."""

    name: str
    cmd: list[str]
    health: str  # URL that answers 200 once the service is ready; may contain {port}
    url: str  # what clients are given; may contain {port}
    env: dict[str, str] = field(default_factory=dict)
    log: Path = Path("service.log")
    start_timeout_s: float = 600.0

    def filled(self, port: int) -> Service:
        fill = {"port": port}
        return Service(
            self.name,
            [c.format(**fill) for c in self.cmd],
            self.health.format(**fill),
            self.url.format(**fill),
            self.env,
            self.log,
            self.start_timeout_s,
        )


def wait_until_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early when ``proc`` exits first."""
    deadline = time.time() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the service exited with code {proc.returncode} before it was ready")
        if time.time() > deadline:
            raise RuntimeError(f"nothing healthy answered at {url} within {timeout_s:.0f}s")
        time.sleep(0.5)


class ServiceProcess:
    """``with ServiceProcess(service) as url:`` runs ``service`` on a free port until the block ends."""

    def __init__(self, service: Service):
        self.service = service
        self.proc: subprocess.Popen | None = None
        self._old_sigterm = None

    def __enter__(self) -> str:
        s = self.service.filled(free_port())
        s.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            s.cmd,
            cwd=REPO_ROOT,
            stdout=s.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **s.env},
        )
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            wait_until_healthy(s.health, s.start_timeout_s, self.proc)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        print(f"[{s.name}] up at {s.url} (pid {self.proc.pid}, log {s.log})", flush=True)
        return s.url

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            print(f"[{self.service.name}] stopped", flush=True)
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every __exit__, which stops the services
