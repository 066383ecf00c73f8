"""Fault injection across the pipeline: real processes on 127.0.0.1, bounded in time.

Each case runs a stage as the user does (``python -m ...`` in a subprocess) against a real retrieval
server process (BM25 over the embedded world), and kills (SIGKILL) or stalls (SIGSTOP/SIGCONT) the
server mid-way, or SIGKILLs the stage itself mid-way and reruns it. "Mid-way" is read off the stage's
own progress (its progress bar, its output file, its metrics), never a fixed sleep. Each case
asserts what the docs promise: training keeps going and counts the failures per step; evaluation
reports them and refuses to publish a score above ``max_failed_share`` (exit 3), or retries once the
retriever is back; a killed stage resumes with nothing lost or duplicated. docs/benchmarks.md
(Reliability) has the table of these cases and their outcomes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from search_r1.data.schema import read_parquet, uid_of
from search_r1.eval.faults import REFUSED_EXIT
from search_r1.paths import CONFIG_DIR, REPO_ROOT

SFT_MODEL = REPO_ROOT / "data" / "models" / "tiny-sft"  # the shipped SFT model: it searches and answers
PPO_PRESET = CONFIG_DIR / "rl" / "tiny_ppo.yaml"
EVAL_N = 100  # questions per evaluation (about 10 s on one core)
ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Server:
    """A retrieval server child process on a fixed loopback port: start, SIGKILL, SIGSTOP, SIGCONT."""

    def __init__(self, index: Path, port: int, log: Path):
        self.index, self.port, self.log = index, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        cmd = [
            sys.executable,
            "-m",
            "search_r1.retrieval.server",
            f"index_dir={self.index}",
            "backend=bm25",
            "host=127.0.0.1",
            f"port={self.port}",
        ]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "retriever did not start"
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # a stalled server must be able to die
        self.proc.kill()
        self.proc.wait()

    def stall(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def bm25_index(world, tmp_path_factory) -> Path:
    from search_r1.retrieval.build import build_index
    from search_r1.retrieval.config import BuildConfig

    out = tmp_path_factory.mktemp("faults_index") / "world"
    return build_index(BuildConfig(corpus=str(world.corpus), out_dir=str(out), backends=["bm25"]))


@pytest.fixture
def server(bm25_index, free_port, tmp_path):
    srv = Server(bm25_index, free_port, tmp_path / "retriever.log").start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.kill()


def stage(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m <args>`` with stdout and stderr in ``log`` (progress bars included)."""
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO_ROOT, env=ENV, stdout=fh, stderr=subprocess.STDOUT
        )


def wait_for(proc: subprocess.Popen, cond: Callable[[], bool], what: str, timeout: float = 240) -> None:
    """Poll ``cond`` while ``proc`` runs: the fault must land mid-way, not after the stage ended."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the stage ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def progress(log: Path, desc: str) -> int:
    """The last count of tqdm bar ``desc`` in ``log``."""
    counts = re.findall(rf"{re.escape(desc)}:\s+\d+%\|[^|]*\|\s*(\d+)/", log.read_text(errors="replace"))
    return int(counts[-1]) if counts else 0


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> tuple[int, str]:
    rc = proc.wait(timeout=timeout)
    return rc, log.read_text(errors="replace")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---- evaluation ------------------------------------------------------------------------------------


def eval_args(world, out: Path, url: str, *extra: str) -> list[str]:
    return [
        "search_r1.eval",
        "run",
        f"data=[{world.test}]",
        f"engine.model={SFT_MODEL}",
        "engine.device=cpu",
        f"max_examples={EVAL_N}",
        f"retriever_url={url}",
        "retriever_timeout=0.5",
        f"out_dir={out}",
        *extra,
    ]


def predictions(out: Path) -> dict[str, tuple]:
    preds = [json.loads(line) for line in lines(out / "predictions.jsonl")]
    assert len(preds) == len({p["uid"] for p in preds}) == EVAL_N
    return {p["uid"]: (p["prediction"], p["response"], p["metrics"]["em"]) for p in preds}


@pytest.fixture(scope="module")
def reference_eval(world, bm25_index, tmp_path_factory) -> tuple[dict[str, tuple], dict]:
    """An uninterrupted evaluation's predictions and metrics: what every recovered run must reproduce."""
    tmp = tmp_path_factory.mktemp("eval_ref")
    srv = Server(bm25_index, _port(), tmp / "retriever.log").start()
    try:
        rc, text = finish(stage(eval_args(world, tmp / "out", srv.url), tmp / "eval.log"), tmp / "eval.log")
    finally:
        srv.kill()
    assert rc == 0, text[-3000:]
    overall = json.loads((tmp / "out" / "results.json").read_text())["metrics"]["overall"]
    assert overall["searches"] > 0 and overall["searches_failed"] == 0
    assert overall["searches_failed_share"] == 0.0 and "FAILED" not in text
    return predictions(tmp / "out"), eval_metrics(tmp / "out")


def eval_metrics(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())["metrics"]


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_eval_refuses_to_publish_when_the_retriever_dies(world, server, tmp_path) -> None:
    out, log = tmp_path / "out", tmp_path / "eval.log"
    proc = stage(eval_args(world, out, server.url, "retry_failed_s=0"), log)
    wait_for(proc, lambda: progress(log, "eval search") >= 10, "10 questions were done")
    server.kill()
    rc, text = finish(proc, log)
    assert rc == REFUSED_EXIT, text[-3000:]
    refused = [line for line in text.splitlines() if line.startswith("[eval] refused:")]
    assert len(refused) == 1 and server.url in refused[0] and "max_failed_share=0.02" in refused[0]
    assert not (out / "results.json").exists()
    rep = json.loads((out / "refused.json").read_text())
    overall = rep["metrics"]["overall"]
    assert overall["searches_failed"] > 0 and overall["searches_failed_share"] > 0.02
    assert rep["reason"] in refused[0]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill_and_restart", "stall"])
def test_eval_retries_once_the_retriever_is_back(world, server, reference_eval, tmp_path, fault) -> None:
    out, log = tmp_path / "out", tmp_path / "eval.log"
    proc = stage(eval_args(world, out, server.url, "retry_failed_s=60"), log)
    wait_for(proc, lambda: progress(log, "eval search") >= 10, "10 questions were done")
    if fault == "stall":
        server.stall()
    else:
        server.kill()
    wait_for(proc, lambda: "had a failed search" in log.read_text(), "searches failed")
    if fault == "stall":
        server.resume()
    else:
        server.start()
    rc, text = finish(proc, log)
    assert rc == 0, text[-3000:]
    assert progress(log, "retry 1") > 0
    overall = json.loads((out / "results.json").read_text())["metrics"]["overall"]
    assert overall["searches_failed"] == 0 and not (out / "refused.json").exists()
    assert (predictions(out), eval_metrics(out)) == reference_eval


@pytest.mark.slow
def test_eval_killed_midway_reruns_to_the_uninterrupted_result(
    world, server, reference_eval, tmp_path
) -> None:
    out, log = tmp_path / "out", tmp_path / "eval.log"
    proc = stage(eval_args(world, out, server.url), log)
    wait_for(proc, lambda: progress(log, "eval search") >= 10, "10 questions were done")
    proc.kill()
    proc.wait()
    assert not (out / "results.json").exists()  # nothing half-written to mistake for a result
    rerun_log = tmp_path / "rerun.log"
    rc, text = finish(stage(eval_args(world, out, server.url), rerun_log), rerun_log)
    assert rc == 0, text[-3000:]
    resumed = json.loads((out / "results.json").read_text())["resumed_questions"]
    assert resumed >= 10 and f"{resumed} of {EVAL_N} questions already evaluated" in text
    assert progress(rerun_log, "eval search") == EVAL_N - resumed  # only the missing ones ran
    assert (predictions(out), eval_metrics(out)) == reference_eval


# ---- post-SFT check (train_sft.sh) ----------------------------------------------------------------


@pytest.mark.slow
def test_sft_check_refuses_when_the_retriever_dies(world, server, tmp_path) -> None:
    out, log = tmp_path / "eval_test.json", tmp_path / "check.log"
    args = [
        "sft.evaluate",
        f"models=[{SFT_MODEL},{SFT_MODEL}]",
        f"world_dir={world.root}",
        f"retriever_url={server.url}",
        "max_questions=12",
        "device=cpu",
        "retriever_timeout=0.5",
        f"out={out}",
    ]
    proc = stage(args, log)
    wait_for(proc, lambda: log.read_text().count("[sft.evaluate] ") >= 1, "the first model was checked")
    server.kill()  # the second model's searches fail
    rc, text = finish(proc, log)
    assert rc == REFUSED_EXIT, text[-3000:]
    checked = [line for line in text.splitlines() if line.startswith("[sft.evaluate] ")]
    assert "FAILED" not in checked[0] and "searches FAILED" in checked[1]
    assert checked[-1].startswith("[sft.evaluate] refused:") and server.url in checked[-1]
    assert not out.exists()


@pytest.mark.slow
def test_sft_check_killed_midway_reruns_to_the_uninterrupted_result(world, server, tmp_path) -> None:
    def check(out: Path, log: Path) -> subprocess.Popen:
        args = [
            "sft.evaluate",
            f"models=[{SFT_MODEL},{SFT_MODEL}]",
            f"world_dir={world.root}",
            f"retriever_url={server.url}",
            "max_questions=12",
            "device=cpu",
            f"out={out}",
        ]
        return stage(args, log)

    reference, log = tmp_path / "reference.json", tmp_path / "check.log"
    rc, text = finish(check(reference, log), log)
    assert rc == 0, text[-3000:]
    out = tmp_path / "eval_test.json"
    proc = check(out, log)
    wait_for(
        proc, lambda: log.read_text(errors="replace").count("[sft.evaluate] ") >= 1, "one model was checked"
    )
    proc.kill()
    proc.wait()
    assert not out.exists()  # killed before its end: nothing half-written
    rc, text = finish(check(out, log), log)
    assert rc == 0, text[-3000:]
    assert json.loads(out.read_text())["results"] == json.loads(reference.read_text())["results"]


# ---- teacher generation ---------------------------------------------------------------------------


def generate_args(world, run_dir: Path, url: str) -> list[str]:
    return [
        "sft.generate",
        "--config",
        str(CONFIG_DIR / "sft" / "tiny.yaml"),
        f"model={SFT_MODEL}",
        f"world_dir={world.root}",
        f"run_dir={run_dir}",
        "practice.worlds=0",
        "generate.max_questions=64",
        "generate.n_samples=2",
        "generate.batch_size=8",
        f"generate.retriever_url={url}",
    ]


@pytest.fixture(scope="module")
def reference_trajectories(world, bm25_index, tmp_path_factory) -> list[str]:
    tmp = tmp_path_factory.mktemp("gen_ref")
    srv = Server(bm25_index, _port(), tmp / "retriever.log").start()
    try:
        rc, text = finish(stage(generate_args(world, tmp / "run", srv.url), tmp / "g.log"), tmp / "g.log")
    finally:
        srv.kill()
    assert rc == 0, text[-3000:]
    ref = lines(tmp / "run" / "trajectories.jsonl")
    assert len(ref) == 128 and len(set(_keys(ref))) == 128
    return ref


def _keys(ls: list[str]) -> list[tuple[str, int]]:
    return [(json.loads(x)["uid"], json.loads(x)["sample_index"]) for x in ls]


@pytest.mark.slow
def test_teacher_leaves_failed_questions_for_a_rerun(world, server, reference_trajectories, tmp_path) -> None:
    traj, log = tmp_path / "run" / "trajectories.jsonl", tmp_path / "g.log"
    proc = stage(generate_args(world, tmp_path / "run", server.url), log)
    wait_for(proc, lambda: len(lines(traj)) >= 20, "10 questions were written")
    server.kill()
    rc, text = finish(proc, log)
    assert rc == REFUSED_EXIT, text[-3000:]
    left = int(re.search(r"\[sft.generate\] (\d+) questions had a failed search", text).group(1))
    first = lines(traj)
    assert left > 0 and len(first) + 2 * left == len(reference_trajectories)
    assert set(first) <= set(reference_trajectories)  # written ones are whole and as a clean run's
    assert not any(t["retrieval_failed"] for x in first for t in json.loads(x)["turns"])

    server.start()
    rc, text = finish(stage(generate_args(world, tmp_path / "run", server.url), log), log)
    assert rc == 0, text[-3000:]
    final = lines(traj)
    assert final[: len(first)] == first and sorted(final) == sorted(reference_trajectories)
    assert len(set(_keys(final))) == len(final)


@pytest.mark.slow
def test_teacher_killed_midway_resumes_byte_identical(
    world, server, reference_trajectories, tmp_path
) -> None:
    traj, log = tmp_path / "run" / "trajectories.jsonl", tmp_path / "g.log"
    proc = stage(generate_args(world, tmp_path / "run", server.url), log)
    wait_for(proc, lambda: len(lines(traj)) >= 20, "10 questions were written")
    proc.kill()
    proc.wait()
    assert 0 < len(lines(traj)) < len(reference_trajectories)
    rc, text = finish(stage(generate_args(world, tmp_path / "run", server.url), log), log)
    assert rc == 0, text[-3000:]
    assert lines(traj) == reference_trajectories


# ---- single-machine RL ----------------------------------------------------------------------------


def trainer_overrides(run_root: Path, url: str) -> list[str]:
    return [
        f"actor_rollout_ref.model.path={SFT_MODEL}",
        f"trainer.default_local_dir={run_root}",
        f"retriever.url={url}",
        "retriever.timeout_s=0.5",
        "data.train_batch_size=2",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "trainer.total_training_steps=3",
        "trainer.save_freq=1",
        "trainer.save_merged=false",
        "trainer.logger=[console]",
    ]


def trainer_args(run_root: Path, url: str) -> list[str]:
    return ["search_r1.rl.trainer", "--config", str(PPO_PRESET), *trainer_overrides(run_root, url)]


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in lines(run / "metrics.jsonl")]


@pytest.mark.slow
def test_rl_keeps_training_through_an_outage_and_counts_it(server, tmp_path) -> None:
    run, log = tmp_path / "tiny_ppo", tmp_path / "rl.log"
    proc = stage(trainer_args(tmp_path, server.url), log)
    wait_for(proc, lambda: len(metrics(run)) >= 1, "step 1 was logged")
    server.kill()
    rc, text = finish(proc, log)
    assert rc == 0, text[-3000:]
    m = metrics(run)
    assert [x["step"] for x in m] == [1, 2, 3]
    assert m[0]["rollout/retrieval_failures"] == 0
    assert sum(x["rollout/retrieval_failures"] for x in m[1:]) > 0  # each failed search counted
    assert (run / "global_step_3").exists()


@pytest.mark.slow
def test_rl_killed_midway_resumes_with_every_step_once(server, world, tmp_path) -> None:
    from search_r1.config import load_config
    from search_r1.rl.config import PPOConfig
    from search_r1.rl.trainer import batch_indices, train_rows

    run, log = tmp_path / "tiny_ppo", tmp_path / "rl.log"
    proc = stage(trainer_args(tmp_path, server.url), log)
    wait_for(proc, lambda: len(metrics(run)) >= 1, "step 1 was logged")
    proc.kill()
    proc.wait()
    assert len(metrics(run)) < 3
    rc, text = finish(stage([*trainer_args(tmp_path, server.url), "--resume"], log), log)
    assert rc == 0 and "resumed from" in text, text[-3000:]
    m = metrics(run)
    assert [x["step"] for x in m] == [1, 2, 3]
    d = load_config(PPOConfig, PPO_PRESET, trainer_overrides(tmp_path, server.url)).data
    rows = train_rows(d)  # the step's batch is a function of the step: what an uninterrupted run trains on
    expected = [
        [uid_of(rows[i]) for i in batch_indices(s, len(rows), d.train_batch_size, d.seed, d.shuffle)]
        for s in (1, 2, 3)
    ]
    assert [x["data/uids"] for x in m] == expected
    assert all(x["rollout/retrieval_failures"] == 0 for x in m)


# ---- pass-rate pre-pass ---------------------------------------------------------------------------


def select_args(world, out: Path, url: str) -> list[str]:
    return [
        "search_r1.rl.select",
        f"model={SFT_MODEL}",
        f"train_files={world.train}",
        f"out={out}",
        "max_questions=48",
        "n=2",
        f"retriever.url={url}",
        "retriever.timeout_s=0.5",
    ]


@pytest.mark.slow
def test_select_leaves_questions_with_failed_searches_unclassified(world, server, tmp_path) -> None:
    out, log = tmp_path / "kept.parquet", tmp_path / "select.log"
    proc = stage(select_args(world, out, server.url), log)
    wait_for(proc, lambda: progress(log, "pass rates") >= 8, "8 samples were done")
    server.kill()
    rc, text = finish(proc, log)
    assert rc == REFUSED_EXIT, text[-3000:]
    rep = json.loads(out.with_suffix(".pass_rates.json").read_text())
    assert rep["unclassified"] == len(rep["unclassified_uids"]) > 0
    assert len(rep["pass_rates"]) + rep["unclassified"] == 48
    assert not set(rep["unclassified_uids"]) & set(rep["pass_rates"])
    kept = {uid_of(r) for r in read_parquet(out)}
    assert kept <= set(rep["pass_rates"])  # nothing unclassified is kept
    assert "not classified" in text


@pytest.mark.slow
def test_select_killed_midway_reruns_complete(world, server, tmp_path) -> None:
    out, log = tmp_path / "kept.parquet", tmp_path / "select.log"
    proc = stage(select_args(world, out, server.url), log)
    wait_for(proc, lambda: progress(log, "pass rates") >= 8, "8 samples were done")
    proc.kill()
    proc.wait()
    assert not out.exists()
    rc, text = finish(stage(select_args(world, out, server.url), log), log)
    assert rc == 0, text[-3000:]
    rep = json.loads(out.with_suffix(".pass_rates.json").read_text())
    assert rep["unclassified"] == 0 and len(rep["pass_rates"]) == 48
    kept = [uid_of(r) for r in read_parquet(out)]
    assert len(kept) == len(set(kept)) == rep["selected"]
    assert set(kept) == {u for u, p in rep["pass_rates"].items() if 0 < p < 1}


# ---- what the results files say -------------------------------------------------------------------


def test_refusal_line_and_the_experiment_table_show_failed_searches(tmp_path) -> None:
    from search_r1.eval.faults import refusal
    from search_r1.experiment_report import GROUPS, markdown, summarize

    assert refusal(0, 0, 0.02, "u") is None and refusal(2, 100, 0.02, "u") is None
    assert refusal(37, 120, 0.02, "http://x") == (
        "refused: 37 of 120 searches failed (31%) > max_failed_share=0.02; "
        "the retriever at http://x was down — rerun when it is up"
    )
    results = {}
    for group in GROUPS:
        paths = []
        for seed, failed in enumerate((1, 2) if group == "sft" else (0, 0)):
            overall = {"n": 10, "em": 0.3, "f1": 0.4, "rouge_l": 0.4, "searches": 1.0, "format_valid": 1.0}
            path = tmp_path / f"{group}{seed}.json"
            path.write_text(json.dumps({"metrics": {"overall": overall | {"searches_failed": failed}}}))
            paths.append(path)
        results[group] = paths
    summary = summarize(results, pairs=[])  # no predictions here: the paired CIs are tested elsewhere
    assert (
        summary["groups"]["sft"]["searches_failed"] == 3 and summary["groups"]["rl"]["searches_failed"] == 0
    )
    table = markdown(summary)
    assert (
        "failed searches (sum over seeds)" in table and "Failed searches" in table and "SFT only: 3" in table
    )
