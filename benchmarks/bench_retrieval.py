#!/usr/bin/env python
"""Retrieval benchmarks on the embedded world; writes the ``## Retrieval`` section of docs/benchmarks.md.

Measures (each part can be switched off):
- HTTP throughput and p50/p99 latency at several concurrencies, per backend, micro-batching on/off.
  The server runs in its own process (as in production); the load generator is async httpx, one
  query per request, like an RL rollout turn.
- In-process batched search throughput at the same batch sizes (the ceiling for the HTTP path).
- Index build speed and peak memory (each build in a fresh process, so peak RSS is its own).
- recall@1/3/10 of the gold passage (``support[0]`` of each world question) per backend.

Example: ``python benchmarks/bench_retrieval.py duration_s=6 concurrency=[1,8,32,64]``
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search_r1.paths import INDEX_DIR, REPO_ROOT, RUNS_DIR, WORLD_DIR  # noqa: E402

BEGIN, END = "<!-- retrieval:begin -->", "<!-- retrieval:end -->"


@dataclass
class BenchConfig:
    index_dir: str = field(
        default=str(INDEX_DIR / "world"), metadata={"help": "built index (scripts/build_index.py)"}
    )
    questions: str = field(
        default=str(WORLD_DIR / "questions.jsonl"), metadata={"help": "world questions JSONL"}
    )
    backends: list[str] = field(default_factory=lambda: ["dense", "bm25"], metadata={"help": "HTTP backends"})
    concurrency: list[int] = field(
        default_factory=lambda: [1, 8, 32, 64], metadata={"help": "client concurrency"}
    )
    duration_s: float = field(
        default=6.0, metadata={"help": "seconds of load per level (in-flight requests finish)"}
    )
    topk: int = field(default=3, metadata={"help": "passages per query"})
    request_batch: int = field(
        default=32,
        metadata={"help": "queries per request for the HTTP-vs-in-process comparison at one batch size"},
    )
    http: bool = field(default=True, metadata={"help": "run the HTTP load test"})
    inprocess: bool = field(default=True, metadata={"help": "run the in-process batched search test"})
    build: bool = field(default=True, metadata={"help": "run the index build test"})
    build_dense_docs: int = field(
        default=256, metadata={"help": "passages for the dense build test (CPU is slow)"}
    )
    gpu: bool = field(
        default=False, metadata={"help": "exact fp16 search over 1M×768 random vectors on cuda:0"}
    )
    recall: bool = field(default=True, metadata={"help": "run the recall test"})
    recall_backends: list[str] = field(
        default_factory=lambda: ["dense", "bm25", "hybrid"], metadata={"help": "backends for the recall test"}
    )
    out_json: str = field(
        default=str(RUNS_DIR / "bench" / "retrieval.json"), metadata={"help": "raw results"}
    )
    docs: str = field(
        default=str(REPO_ROOT / "docs" / "benchmarks.md"), metadata={"help": "markdown to update"}
    )


def load_questions(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# --- HTTP load ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m search_r1.retrieval.server`` in its own process group (stopped by pid)."""

    def __init__(self, overrides: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "search_r1.retrieval.server",
            f"port={self.port}",
            "log_level=warning",
            *overrides,
        ]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {shlex.join(cmd)}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


async def _load(
    url: str, queries: list[str], concurrency: int, duration: float, topk: int, per_request: int = 1
) -> dict:
    lat: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, verify=False) as client:
        await client.post("/retrieve", json={"queries": queries[:1], "topk": topk})  # warm the connection
        t0 = time.perf_counter()
        deadline = t0 + duration

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < deadline:
                s = time.perf_counter()
                qs = [queries[(i * per_request + j) % len(queries)] for j in range(per_request)]
                r = await client.post("/retrieve", json={"queries": qs, "topk": topk})
                if r.status_code != 200:
                    errors += 1
                lat.append(time.perf_counter() - s)
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {
        "requests": len(lat),
        "errors": errors,
        "qps": len(lat) * per_request / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def bench_http(cfg: BenchConfig, queries: list[str]) -> list[dict]:
    rows = []
    for backend in cfg.backends:
        for batching in (True, False):
            server = ServerProcess(
                [
                    f"index_dir={cfg.index_dir}",
                    f"backend={backend}",
                    f"batching.enabled={str(batching).lower()}",
                    "cache_size=0",  # measure the search path: the load cycles over the questions
                ]
            )
            try:
                for c in cfg.concurrency:
                    res = asyncio.run(_load(server.url, queries, c, cfg.duration_s, cfg.topk))
                    rows.append({"backend": backend, "batching": batching, "concurrency": c, **res})
                    print(
                        f"http {backend:5s} batching={batching!s:5s} c={c:3d}  {res['qps']:8.1f} q/s  "
                        f"p50 {res['p50_ms']:8.1f} ms  p99 {res['p99_ms']:8.1f} ms  errors {res['errors']}",
                        flush=True,
                    )
                if batching:  # one client sending request_batch queries per request: pure HTTP overhead
                    b = cfg.request_batch
                    res = asyncio.run(_load(server.url, queries, 1, cfg.duration_s, cfg.topk, per_request=b))
                    rows.append(
                        {"backend": backend, "batching": batching, "concurrency": 1, "per_request": b, **res}
                    )
                    print(f"http {backend:5s} {b}-query requests c=1  {res['qps']:8.1f} q/s", flush=True)
            finally:
                server.stop()
    return rows


# --- in-process ---------------------------------------------------------------------------------------


def bench_inprocess(cfg: BenchConfig, queries: list[str]) -> list[dict]:
    from search_r1.retrieval.config import ServerConfig
    from search_r1.retrieval.searchers import load_retriever

    rows = []
    for backend in cfg.backends:
        retriever = load_retriever(ServerConfig(index_dir=cfg.index_dir, backend=backend))
        retriever.retrieve(queries[:8], cfg.topk)
        for b in cfg.concurrency:
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < cfg.duration_s / 2 or n == 0:
                batch = [queries[(n + j) % len(queries)] for j in range(b)]
                retriever.retrieve(batch, cfg.topk)
                n += b
            qps = n / (time.perf_counter() - t0)
            rows.append({"backend": backend, "batch": b, "qps": qps})
            print(f"in-process {backend:5s} batch={b:3d}  {qps:8.1f} q/s", flush=True)
    return rows


# --- build --------------------------------------------------------------------------------------------


def bench_build(cfg: BenchConfig) -> list[dict]:
    from search_r1.retrieval.build import read_manifest

    corpus = Path(read_manifest(Path(cfg.index_dir))["corpus"])
    lines = corpus.read_text().splitlines()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend, n in (("bm25", len(lines)), ("dense", min(cfg.build_dense_docs, len(lines)))):
            sub = Path(tmp) / f"corpus-{backend}.jsonl"
            sub.write_text("\n".join(lines[:n]) + "\n")
            out = Path(tmp) / f"index-{backend}"
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "scripts/build_index.py",
                    f"corpus={sub}",
                    f"out_dir={out}",
                    f"backends=[{backend}]",
                    "torch_threads=1",  # as the server: the shared dev box thrashes with more
                ],
                cwd=REPO_ROOT,
                check=True,
                capture_output=True,
            )
            wall = time.perf_counter() - t0
            m = read_manifest(out)[backend]
            rows.append(
                {
                    "backend": backend,
                    "passages": n,
                    "passages_per_s": m["passages_per_s"],
                    "peak_rss_mib": m["peak_rss_mib"],
                    "process_wall_s": round(wall, 1),
                }
            )
            print(
                f"build {backend:5s} {n} passages: {m['passages_per_s']} passages/s, peak RSS "
                f"{m['peak_rss_mib']} MiB (process incl. imports {wall:.1f} s)",
                flush=True,
            )
    return rows


# --- GPU exact search ---------------------------------------------------------------------------------


def bench_gpu(n: int = 1_000_000, dim: int = 768, batch: int = 512, iters: int = 20) -> dict:
    """TorchExactEngine over random fp16 vectors vs the bandwidth and fp16-FLOP bounds of one pass."""
    import torch

    from search_r1.retrieval.dense import TorchExactEngine

    props = torch.cuda.get_device_properties(0)
    engine = TorchExactEngine(np.zeros((1, dim), np.float32), "cuda:0")
    engine.matrix = torch.randn(n, dim, device="cuda:0", dtype=torch.float16)  # skip the host upload
    engine.block_rows = n
    q = np.random.default_rng(0).standard_normal((batch, dim)).astype(np.float32)
    engine.search(q, 10)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        engine.search(q, 10)
    torch.cuda.synchronize()
    secs = (time.perf_counter() - t0) / iters
    # Memory bound: one read of the fp16 matrix per batch; measure achievable bandwidth with a copy.
    buf = torch.empty_like(engine.matrix)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    for _ in range(5):
        buf.copy_(engine.matrix)
    torch.cuda.synchronize()
    bw = 2 * engine.matrix.numel() * 2 * 5 / (time.perf_counter() - t1)  # read + write bytes/s
    bytes_per_batch = n * dim * 2
    row = {
        "device": props.name,
        "n": n,
        "dim": dim,
        "batch": batch,
        "qps": batch / secs,
        "ms_per_batch": secs * 1000,
        "measured_copy_bandwidth_gbs": bw / 1e9,
        "bandwidth_bound_qps": batch / (bytes_per_batch / bw),
    }
    print(
        f"gpu exact search: {row['qps']:.0f} q/s at batch {batch} ({row['ms_per_batch']:.2f} ms/batch); "
        f"bandwidth bound {row['bandwidth_bound_qps']:.0f} q/s",
        flush=True,
    )
    return row


# --- recall -------------------------------------------------------------------------------------------


def bench_recall(cfg: BenchConfig, questions: list[dict]) -> list[dict]:
    from search_r1.retrieval.config import ServerConfig
    from search_r1.retrieval.searchers import load_retriever

    rows = []
    qs = [q["question"] for q in questions]
    gold = [q["support"][0] for q in questions]
    for backend in cfg.recall_backends:
        retriever = load_retriever(ServerConfig(index_dir=cfg.index_dir, backend=backend))
        hits = []
        for s in range(0, len(qs), 128):
            hits.extend(retriever.retrieve(qs[s : s + 128], 10))
        row = {"backend": backend, "questions": len(qs)}
        for k in (1, 3, 10):
            row[f"recall@{k}"] = float(
                np.mean([g in {h.id for h in per[:k]} for g, per in zip(gold, hits, strict=True)])
            )
        rows.append(row)
        print(
            f"recall {backend:6s} @1 {row['recall@1']:.3f}  @3 {row['recall@3']:.3f}  @10 {row['recall@10']:.3f}",
            flush=True,
        )
    return rows


# --- report -------------------------------------------------------------------------------------------


def render(cfg: BenchConfig, res: dict) -> str:
    commands = sorted(set(res["commands"].values()), key=lambda c: -len(c))
    out = [
        BEGIN,
        "## Retrieval",
        "",
        "Command"
        + ("s" if len(commands) > 1 else "")
        + ": "
        + "; ".join(f"`{c}`" for c in commands)
        + (" (later runs replaced only the parts they measured)" if len(commands) > 1 else ""),
        "",
        f"Machine: {res['machine']} (1-min load average when each part started: "
        + ", ".join(f"{k} {v}" for k, v in res.get("load_average", {}).items())
        + f"). Index: embedded world ({res.get('n_docs', '?')} passages), "
        "dense = all-MiniLM-L6-v2 (384-d, FAISS Flat, CPU), BM25 = bm25s. One query per request, "
        f"topk={cfg.topk}, {res.get('http_duration_s', cfg.duration_s):g} s per level (in-flight requests finish).",
        "",
    ]
    if res.get("http"):
        out += [
            "### HTTP throughput and latency",
            "",
            "| backend | batching | concurrency | q/s | p50 ms | p99 ms | requests | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['backend']} | {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['qps']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['requests']} | {r['errors']} |"
            for r in res["http"]
            if "per_request" not in r
        ]
        out.append("")
    if res.get("inprocess"):
        out += ["### In-process batched search (no HTTP)", "", "| backend | batch | q/s |", "|---|---:|---:|"]
        out += [f"| {r['backend']} | {r['batch']} | {r['qps']:.1f} |" for r in res["inprocess"]]
        out.append("")
    if res.get("targets"):
        b = cfg.request_batch
        out += [
            "### Targets",
            "",
            f"| backend | q/s batching on / off at c=32 (target ≥ 5×) | HTTP c=32 one-query requests / "
            f"in-process batch 32 | HTTP {b}-query requests / in-process batch {b} (target ≥ 70%) |",
            "|---|---:|---:|---:|",
        ]
        out += [
            f"| {t['backend']} | {t['speedup_c32']:.1f}× | {100 * t['http_vs_inprocess_32']:.0f}% | "
            f"{100 * t['http_batched_request_vs_inprocess']:.0f}% |"
            for t in res["targets"]
        ]
        out.append("")
    if res.get("gpu"):
        g = res["gpu"]
        out += [
            "### GPU exact search (torch engine)",
            "",
            f"{g['device']}: {g['n']:,} × {g['dim']} fp16 random vectors, batch {g['batch']}: "
            f"**{g['qps']:.0f} q/s** ({g['ms_per_batch']:.2f} ms per batch); memory-bandwidth bound "
            f"{g['bandwidth_bound_qps']:.0f} q/s (one pass over the matrix at the measured copy bandwidth "
            f"{g['measured_copy_bandwidth_gbs']:.0f} GB/s).",
            "",
        ]
    if res.get("build"):
        out += [
            "### Index build",
            "",
            "| backend | passages | passages/s | peak RSS MiB |",
            "|---|---:|---:|---:|",
        ]
        out += [
            f"| {r['backend']} | {r['passages']} | {r['passages_per_s']} | {r['peak_rss_mib']} |"
            for r in res["build"]
        ]
        out.append("")
    if res.get("recall"):
        out += [
            "### Recall of the gold passage (world questions, `support[0]`)",
            "",
            "| backend | questions | recall@1 | recall@3 | recall@10 |",
            "|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['backend']} | {r['questions']} | {r['recall@1']:.3f} | {r['recall@3']:.3f} | "
            f"{r['recall@10']:.3f} |"
            for r in res["recall"]
        ]
        out.append("")
    out.append(END)
    return "\n".join(out)


def write_section(docs: Path, section: str) -> None:
    """Replace the generated part between our markers; notes written after the end marker and other
    parts' sections stay as they are."""
    text = (
        docs.read_text()
        if docs.exists()
        else "# Benchmarks\n\nEach section is owned by one part of the toolkit.\n"
    )
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(text)


def main(argv: list[str] | None = None) -> None:
    from search_r1.config import parse_config

    cfg = parse_config(BenchConfig, __doc__.split("\n")[0], None, argv)
    from search_r1.retrieval.build import read_manifest

    manifest = read_manifest(Path(cfg.index_dir))
    if not manifest.get("dense", {}).get("done") or not manifest.get("bm25", {}).get("done"):
        raise SystemExit(f"no finished index in {cfg.index_dir}: run scripts/build_index.py first")
    import torch

    from search_r1.retrieval.config import ServerConfig

    torch.set_num_threads(ServerConfig().torch_threads)  # in-process parts run like the server process
    questions = load_questions(cfg.questions)
    queries = [q["question"] for q in questions]
    load = os.getloadavg()[0]
    out_json = Path(cfg.out_json)
    res: dict = json.loads(out_json.read_text()) if out_json.exists() else {}  # parts not rerun are kept
    res.setdefault("commands", {})
    command = "python benchmarks/bench_retrieval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = [p for p in ("http", "inprocess", "gpu", "build", "recall") if getattr(cfg, p)]
    res["commands"].update({p: command.strip() for p in parts})
    res.setdefault("load_average", {}).update({p: round(load, 1) for p in parts})
    res |= {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, no GPU",
        "n_docs": manifest["n_docs"],
    }
    if cfg.http:
        res["http"] = bench_http(cfg, queries)
        res["http_duration_s"] = cfg.duration_s
    if cfg.inprocess:
        res["inprocess"] = bench_inprocess(cfg, queries)
    if res.get("http") and res.get("inprocess") and 32 in cfg.concurrency:
        res["targets"] = []
        for b in cfg.backends:
            single = [
                r
                for r in res["http"]
                if r["backend"] == b and "per_request" not in r and r["concurrency"] == 32
            ]
            on = next(r["qps"] for r in single if r["batching"])
            off = next(r["qps"] for r in single if not r["batching"])
            inproc = {r["batch"]: r["qps"] for r in res["inprocess"] if r["backend"] == b}
            big = next(
                r["qps"]
                for r in res["http"]
                if r["backend"] == b and r.get("per_request") == cfg.request_batch
            )
            res["targets"].append(
                {
                    "backend": b,
                    "speedup_c32": on / off,
                    "http_vs_inprocess_32": on / inproc[32],
                    "http_batched_request_vs_inprocess": big / inproc.get(cfg.request_batch, inproc[32]),
                }
            )
    if cfg.gpu:
        res["gpu"] = bench_gpu()
    if cfg.build:
        res["build"] = bench_build(cfg)
    if cfg.recall:
        res["recall"] = bench_recall(cfg, questions)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1))
    write_section(Path(cfg.docs), render(cfg, res))
    print(f"results: {cfg.out_json}; section updated in {cfg.docs}")


if __name__ == "__main__":
    main()
