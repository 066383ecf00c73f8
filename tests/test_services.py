"""Helper processes (retriever, teacher server) live exactly as long as their ``with`` block."""

from __future__ import annotations

import sys

import httpx
import pytest

from search_r1.services import Service, ServiceProcess


def test_service_is_up_inside_the_block_and_gone_after(tmp_path) -> None:
    svc = Service(
        "files",
        [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        health="http://127.0.0.1:{port}/",
        url="http://127.0.0.1:{port}",
        log=tmp_path / "logs" / "files.log",
    )
    (tmp_path / "hello.txt").write_text("hi")
    running = ServiceProcess(svc)
    with running as url:
        assert httpx.get(f"{url}/hello.txt").text == "hi"
    assert running.proc is not None and running.proc.poll() is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/hello.txt", timeout=2)


def test_a_service_that_dies_at_start_is_a_clear_error(tmp_path) -> None:
    svc = Service(
        "broken",
        [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"],
        health="http://127.0.0.1:{port}/health",
        url="http://127.0.0.1:{port}",
        log=tmp_path / "broken.log",
        start_timeout_s=60,
    )
    with pytest.raises(RuntimeError, match="exited with code 3"), ServiceProcess(svc):
        pass
    assert "no model here" in (tmp_path / "broken.log").read_text()
