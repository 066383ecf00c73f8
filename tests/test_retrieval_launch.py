"""retrieval_launch.sh as a user runs it: a real process, a real port, the docs URL on stdout."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from test_retrieval_helpers import make_corpus, make_tiny_encoder, tiny_encoder_config

from search_r1.paths import INDEX_DIR, REPO_ROOT
from search_r1.retrieval.build import build_index
from search_r1.retrieval.config import BuildConfig


def _launch(args: list[str], env: dict | None = None, wait: float = 300) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        ["bash", str(REPO_ROOT / "retrieval_launch.sh"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline, seen = time.monotonic() + wait, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if "API docs:" in line:
            return proc, line
    _stop(proc)
    raise AssertionError("server did not start:\n" + "".join(seen))


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # the whole group this test started (bash → python)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_healthy(url: str) -> dict:
    for _ in range(100):
        try:
            return httpx.get(f"{url}/health", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("no /health answer")


def test_launch_with_port_and_overrides(tmp_path, free_port):
    corpus = make_corpus(tmp_path / "c.jsonl", n=40)
    index = build_index(
        BuildConfig(
            corpus=str(corpus),
            out_dir=str(tmp_path / "idx"),
            encoder=tiny_encoder_config(make_tiny_encoder(tmp_path / "enc")),
        )
    )
    proc, line = _launch(
        ["--port", str(free_port), "--host", "127.0.0.1", f"index_dir={index}", "backend=hybrid", "topk=2"],
        wait=120,
    )
    try:
        url = f"http://127.0.0.1:{free_port}"
        assert f"{url}/docs" in line
        health = _wait_healthy(url)
        assert health["backend"] == "hybrid" and health["n_docs"] == 40 and health["limits"]["topk"] == 2
        r = httpx.post(f"{url}/retrieve", json={"queries": ["token7"]}, timeout=30).json()
        assert [d["id"] for d in r["result"][0]][0] == "doc-7" and len(r["result"][0]) == 2
    finally:
        _stop(proc)


def test_launch_help_and_bad_override():
    r = subprocess.run(
        ["bash", str(REPO_ROOT / "retrieval_launch.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "max_body_bytes" in r.stdout and "batching.max_wait_ms" in r.stdout
    r = subprocess.run(
        ["bash", str(REPO_ROOT / "retrieval_launch.sh"), "index_dir=/nonexistent", "no_such_key=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "no_such_key" in r.stderr


@pytest.mark.slow
def test_launch_without_arguments_serves_the_world_on_8000(world):
    """The user's default: embedded world index (built with MiniLM first if missing) on 127.0.0.1:8000."""
    with httpx.Client() as c:
        try:
            c.get("http://127.0.0.1:8000/health", timeout=1)
            pytest.skip("port 8000 is busy")
        except httpx.TransportError:
            pass
    proc, line = _launch([], wait=1800)
    try:
        assert "http://127.0.0.1:8000/docs" in line
        health = _wait_healthy("http://127.0.0.1:8000")
        assert health["backend"] == "dense" and health["n_docs"] == len(
            Path(world.corpus).read_text().splitlines()
        )
        assert (INDEX_DIR / "world" / "manifest.json").exists()
    finally:
        _stop(proc)
