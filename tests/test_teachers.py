"""API teachers against real OpenAI-compatible server processes on CPU.

``python -m search_r1.agent.serve`` serves the shipped tiny SFT model (it searches and answers in
our protocol) for both teacher APIs; ``transformers serve`` is an independent implementation of the
chat API; a small flaky app checks retries and failures. Everything runs on a real retriever.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from transformers import AutoTokenizer

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.engines.openai import MAX_RETRY_AFTER_S, EngineHTTPError, retry_after
from search_r1.agent.engines.openai_chat import chat_history
from search_r1.agent.protocol import INFO_OPEN, STOP_STRINGS, ProtocolConfig, parse_action
from search_r1.agent.trajectory import Trajectory
from search_r1.paths import CONFIG_DIR, REPO_ROOT
from search_r1.rewards.metrics import exact_match
from sft.config import FilterConfig, SFTConfig, TeacherConfig
from sft.export import runs
from sft.filters import checks, select
from sft.generate import generate_world, load_questions, main, make_teacher, read_records
from sft.ship import SHIPPED_SFT_MODEL

TEACHER = str(SHIPPED_SFT_MODEL)
KEY_ENV, KEY = "SEARCH_R1_TEST_TEACHER_KEY", "test-secret"
PROTOCOL = CONFIG_DIR / "agent" / "tiny.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(cmd: list[str], health: str, log: Path, env: dict[str, str]) -> Iterator[None]:
    """Run ``cmd`` until the block ends; ready once ``health`` answers 200."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 180
        while True:
            try:
                if (
                    httpx.get(health, headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"{cmd[:3]} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def teacher_url(tmp_path_factory) -> Iterator[str]:
    """``search_r1.agent.serve`` over the tiny SFT model, with a bearer key."""
    port = _free_port()
    cmd = [sys.executable, "-m", "search_r1.agent.serve", f"model={TEACHER}", f"port={port}"]
    env = os.environ | {KEY_ENV: KEY, "OMP_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with server_process([*cmd, f"api_key_env={KEY_ENV}"], f"http://127.0.0.1:{port}/v1/models", log, env):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def retriever_url(world, tmp_path_factory) -> Iterator[str]:
    from search_r1.retrieval.build import build_index
    from search_r1.retrieval.config import BuildConfig, ServerConfig
    from search_r1.retrieval.local import serve_in_thread
    from search_r1.retrieval.searchers import load_retriever

    root = tmp_path_factory.mktemp("bm25")
    index = build_index(BuildConfig(corpus=str(world.corpus), out_dir=str(root / "index"), backends=["bm25"]))
    cfg = ServerConfig(index_dir=str(index), port=0, backend="bm25")
    with serve_in_thread(cfg, load_retriever(cfg)) as url:
        yield url


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TEACHER)


def teacher_args(world, run_dir: Path, base_url: str, retriever: str, api: str) -> list[str]:
    """``sft.generate`` arguments: the tiny SFT model teaches in its own tokens (its folder path is
    also the served model name, on both servers)."""
    return [
        f"model={TEACHER}",
        f"world_dir={world.root}",
        f"run_dir={run_dir}",
        "teacher.kind=openai",
        f"teacher.api={api}",
        f"teacher.model={TEACHER}",
        f"teacher.base_url={base_url}",
        f"teacher.api_key_env={KEY_ENV}",
        f"generate.retriever_url={retriever}",
        f"generate.protocol={PROTOCOL}",
        "generate.batch_size=2",
        "practice.worlds=0",
    ]


def check_protocol(t: Trajectory, tok) -> None:
    """Policy runs (mask 1) are the turns' text, observation runs (mask 0) exactly their observation."""
    assert t.prompt_ids == tok.apply_chat_template(
        t.extra["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert (
        len(t.response_ids) == len(t.response_mask) <= ProtocolConfig.from_yaml(PROTOCOL).max_response_tokens
    )
    spans = runs(t.response_ids, t.response_mask)
    expected = [
        x
        for turn in t.turns
        for x in [(1, turn.text)] + ([(0, turn.observation)] if turn.observation else [])
    ]
    assert [(m, tok.decode(ids, skip_special_tokens=False)) for m, ids in spans] == expected
    for m, ids in spans:
        if m == 0:
            text = tok.decode(ids, skip_special_tokens=False)
            assert text.startswith(f"\n\n{INFO_OPEN}") and tok.encode(text, add_special_tokens=False) == ids
    for turn in t.turns[:-1]:  # every turn but the last ended at a stop string and got an observation
        assert turn.text.endswith(STOP_STRINGS) and parse_action(turn.text).kind == turn.action
    if t.finish_reason == "answer":
        assert (
            t.turns[-1].text.endswith("</answer>")
            and t.final_answer == parse_action(t.turns[-1].text).content
        )


def check_rejection_sampling(trajs: list[Trajectory], tok) -> None:
    """The filters keep one correct trajectory per question that has one, and nothing else."""
    cfg = FilterConfig()
    kept, report = select(trajs, cfg, tok)
    passing = {t.uid for t in trajs if all(keep(t) for _, keep in checks(cfg, tok))}
    assert kept and {t.uid for t in kept} == passing and len(kept) == len(passing)
    assert all(exact_match(t.final_answer, t.extra["golds"]) == 1.0 for t in kept)
    assert report.input == len(trajs)


def test_completions_teacher_writes_protocol_trajectories_and_resumes(
    world, teacher_url, retriever_url, tok, tmp_path, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, KEY)  # the server rejects requests without it
    args = teacher_args(world, tmp_path, teacher_url, retriever_url, "completions")
    main([*args, "generate.max_questions=2", "generate.n_samples=2"])
    out = SFTConfig(run_dir=str(tmp_path)).trajectories
    first = out.read_bytes()
    assert first.count(b"\n") == 4

    main([*args, "generate.max_questions=4", "generate.n_samples=2"])  # resumes: only the new questions
    assert out.read_bytes().startswith(first)
    trajs = [Trajectory.from_dict(r) for r in read_records(out)]
    assert sorted((t.uid, t.sample_index) for t in trajs) == sorted({(t.uid, t.sample_index) for t in trajs})
    assert len(trajs) == 8 and all(t.extra["teacher"] == "openai" for t in trajs)
    assert sum(t.num_searches for t in trajs) > 0  # the tiny SFT model searches
    for t in trajs:
        check_protocol(t, tok)
    check_rejection_sampling(trajs, tok)


def chat_run(world, base_url: str, retriever: str, tok, run_dir: Path, n: int) -> list[Trajectory]:
    from search_r1.config import load_config

    cfg = load_config(SFTConfig, None, teacher_args(world, run_dir, base_url, retriever, "chat"))
    cfg.generate.n_samples = 2
    protocol = ProtocolConfig.from_yaml(PROTOCOL)
    path = generate_world(cfg, world.root, retriever, tok, protocol, load_questions(world.train, n))
    return [Trajectory.from_dict(r) for r in read_records(path)]


def test_chat_teacher_rebuilds_the_student_token_protocol(
    world, teacher_url, retriever_url, tok, tmp_path, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, KEY)
    trajs = chat_run(world, teacher_url, retriever_url, tok, tmp_path, 4)
    assert len(trajs) == 8 and sum(t.num_searches for t in trajs) > 0
    for t in trajs:
        check_protocol(t, tok)
        # what the chat API was sent for the last turn: the turns as assistant messages, the
        # observations (the rollout's own text) as user messages
        obs_end = max((i for i, m in enumerate(t.response_mask) if m == 0), default=-1) + 1
        history = chat_history(tok.decode(t.response_ids[:obs_end], skip_special_tokens=False))
        observed = [turn for turn in t.turns if turn.observation]
        assert history == [
            m
            for turn in observed
            for m in (
                {"role": "assistant", "content": turn.text},
                {"role": "user", "content": turn.observation.strip()},
            )
        ]
    check_rejection_sampling(trajs, tok)


def test_chat_teacher_on_transformers_serve(world, retriever_url, tok, tmp_path):
    """``transformers serve`` is a chat-only server written by others: it keeps the stop string in the
    content and names no ``stop_reason``; the trajectories must come out the same."""
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", TEACHER]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with server_process(cmd, f"http://127.0.0.1:{port}/health", tmp_path / "serve.log", env):
        trajs = chat_run(world, f"http://127.0.0.1:{port}/v1", retriever_url, tok, tmp_path, 2)
    assert len(trajs) == 4 and sum(t.num_searches for t in trajs) > 0
    for t in trajs:
        check_protocol(t, tok)


@contextmanager
def app_in_thread(app: FastAPI) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def flaky_app(calls: list[tuple[str, str]]) -> FastAPI:
    """``/<mode>/v1/...``: ``busy`` answers 429 once, ``down`` 503 once, ``denied`` always 401."""
    app = FastAPI()
    answer = {"text": "<answer> x", "message": {"content": "<answer> x"}, "finish_reason": "stop"}

    @app.post("/{mode}/v1/{endpoint:path}")
    async def endpoint(mode: str, request: Request) -> JSONResponse:
        calls.append((mode, request.headers.get("authorization", "")))
        if mode == "denied":
            return JSONResponse({"error": {"message": "Incorrect API key provided"}}, status_code=401)
        if sum(m == mode for m, _ in calls) == 1:
            status, headers = (429, {"Retry-After": "0"}) if mode == "busy" else (503, {})
            return JSONResponse({"error": {"message": "try later"}}, status_code=status, headers=headers)
        return JSONResponse({"choices": [answer]})

    return app


@pytest.mark.parametrize(("mode", "api"), [("busy", "completions"), ("down", "chat")])
def test_rate_limits_and_outages_are_retried(world, tok, monkeypatch, mode, api):
    monkeypatch.setenv(KEY_ENV, KEY)
    calls: list[tuple[str, str]] = []
    prompt = [1, 2, 3]
    with app_in_thread(flaky_app(calls)) as url:
        cfg = TeacherConfig(
            kind="openai", api=api, model="m", base_url=f"{url}/{mode}/v1", api_key_env=KEY_ENV
        )
        engine = make_teacher(cfg, tok, world.root)
        sampling = SamplingParams(temperature=0, stop=list(STOP_STRINGS))

        async def ask():
            if api == "chat":
                with engine.conversation(prompt, [{"role": "user", "content": "q"}]):
                    return await engine.generate(prompt, sampling)
            return await engine.generate(prompt, sampling)

        res = asyncio.run(ask())
    assert tok.decode(res.token_ids) == "<answer> x</answer>" and res.stop_string == "</answer>"
    assert calls == [(mode, f"Bearer {KEY}")] * 2  # the key from the configured env var, on every try


def test_client_errors_fail_at_once_with_the_message(world, teacher_url, tok, monkeypatch):
    calls: list[tuple[str, str]] = []
    sampling = SamplingParams(temperature=0, stop=list(STOP_STRINGS))
    with app_in_thread(flaky_app(calls)) as url:
        cfg = TeacherConfig(kind="openai", model="m", base_url=f"{url}/denied/v1", api_key_env=KEY_ENV)
        with pytest.raises(EngineHTTPError, match="HTTP 401.*Incorrect API key provided"):
            asyncio.run(make_teacher(cfg, tok, world.root).generate([1, 2], sampling))
    assert len(calls) == 1

    monkeypatch.setenv(KEY_ENV, "wrong")  # our server, with the wrong key: 401 with its message
    cfg = TeacherConfig(kind="openai", model=TEACHER, base_url=teacher_url, api_key_env=KEY_ENV)
    with pytest.raises(EngineHTTPError, match="HTTP 401.*invalid or missing API key"):
        asyncio.run(make_teacher(cfg, tok, world.root).generate([1, 2], sampling))
    monkeypatch.setenv(KEY_ENV, KEY)  # the right key, an unknown model: 404 with the server's message
    cfg.model = "nope"
    with pytest.raises(EngineHTTPError, match="HTTP 404.*`nope` does not exist"):
        asyncio.run(make_teacher(cfg, tok, world.root).generate([1, 2], sampling))


def test_retry_after_is_honoured_and_capped():
    def wait(value: str | None) -> float:
        headers = {"Retry-After": value} if value is not None else {}
        return retry_after(httpx.Response(429, headers=headers), default=0.5)

    assert (wait(None), wait("2"), wait("86400"), wait("soon")) == (0.5, 2.0, MAX_RETRY_AFTER_S, 0.5)
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < wait(future) <= 30


def test_serve_answers_like_vllm_and_rejects_bad_requests(world, teacher_url, tok):
    headers = {"Authorization": f"Bearer {KEY}"}
    messages = load_questions(world.train, 1)[0].messages
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    sampling = {"model": TEACHER, "max_tokens": 64, "temperature": 0, "stop": list(STOP_STRINGS)}
    with httpx.Client(base_url=teacher_url, headers=headers, timeout=30) as http:
        assert http.get("/models", headers={"Authorization": ""}).status_code == 401
        assert httpx.get(teacher_url.removesuffix("/v1") + "/health").status_code == 200  # no key needed
        assert http.get("/models").json()["data"][0]["id"] == TEACHER
        # the stop string is cut from the text and named, as vLLM does; chat renders the same prompt
        text = http.post("/completions", json=sampling | {"prompt": prompt}).json()["choices"][0]
        chat = http.post("/chat/completions", json=sampling | {"messages": messages}).json()["choices"][0]
        assert text["finish_reason"] == chat["finish_reason"] == "stop"
        assert text["stop_reason"] == chat["stop_reason"] == "</search>"  # the tiny SFT model searches first
        assert text["text"] == chat["message"]["content"] and text["text"].startswith("<think>")
        assert "<search>" in text["text"] and "</search>" not in text["text"]

        r = http.post("/chat/completions", json={"model": TEACHER, "messages": []})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
        r = http.post("/completions", json={"model": TEACHER, "prompt": "a", "max_tokens": 10**6})
        assert r.status_code == 400 and "exceed the context" in r.json()["error"]["message"]
        assert http.post("/completions", json={"model": TEACHER, "prompt": "a", "n": 2}).status_code == 400
