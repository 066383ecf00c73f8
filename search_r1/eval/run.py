"""Evaluate a model as a search agent (or a closed-book / retrieve-once baseline) on verl parquet.

    python -m search_r1.eval run                              # configs/eval/default.yaml
    python -m search_r1.eval run engine.model=PATH data=[a.parquet,b.parquet] mode=rag

Every mode runs through the same rollout, so the three are scored identically:

* ``search`` — the agent: the dataset's prompt, up to ``agent.max_turns`` searches.
* ``direct`` — closed book: the ``direct`` prompt, no search (``max_turns=0``).
* ``rag`` — the question is retrieved once, the passages go into the ``rag`` prompt, no search.

Greedy by default (``temperature=0``), every row of every file is evaluated (no dropped tail;
``max_examples`` takes a prefix only when asked). Outputs in ``out_dir``: ``results.json``,
``predictions.jsonl``, ``report.md`` and PNG plots (see ``search_r1.eval.report``).

A retriever outage mid-run turns searches into failure observations. The questions they hit are
rerun once the retriever answers ``/health`` again (``retry_failed_s``, ``retry_rounds``); if the
share of failed searches is still above ``max_failed_share``, no score is published: ``refused.json``
instead of ``results.json``, one line, exit code 3 (``search_r1.eval.faults``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.engines.registry import make_engine
from search_r1.agent.prompt import render_prompt
from search_r1.agent.protocol import ProtocolConfig, format_docs, truncate_docs
from search_r1.agent.rollout import RolloutStats, rollout
from search_r1.agent.trajectory import Trajectory
from search_r1.config import entry_point, to_dict
from search_r1.data.schema import read_parquet, uid_of
from search_r1.eval.diagnostics import answer_seen, evidence_hits, seen_texts
from search_r1.eval.faults import REFUSED_EXIT, Refused, failed_note, refusal
from search_r1.eval.replay import LOG_NAME, RecordingRetriever, ReplayMissError, ReplayRetriever
from search_r1.eval.report import aggregate, write_outputs
from search_r1.eval.resume import PartialPredictions, ResumeConflict
from search_r1.paths import MODELS_DIR, REPO_ROOT, RUNS_DIR, WORLD_DIR
from search_r1.rewards.score import compute_score, golds_of

MODES = ("search", "direct", "rag")


@dataclass
class EngineConfig:
    name: str = field(default="hf", metadata={"help": "hf | vllm | openai"})
    model: str = field(default=str(MODELS_DIR / "tiny-base"), metadata={"help": "HF folder (or served name)"})
    adapter: str = field(
        default="", metadata={"help": "LoRA adapter folder merged into the model ('' = none)"}
    )
    device: str = field(default="auto", metadata={"help": "hf: auto | cpu | cuda"})
    dtype: str = field(default="auto", metadata={"help": "hf/vllm: auto | float32 | bfloat16 | float16"})
    max_batch_size: int = field(default=32, metadata={"help": "hf: sequences per forward pass"})
    base_url: str = field(default="", metadata={"help": "openai: e.g. http://127.0.0.1:8001/v1"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "openai: env var holding the key"})
    served_model: str = field(default="", metadata={"help": "openai: model name on the server"})
    tokenizer: str = field(default="", metadata={"help": "openai: tokenizer folder ('' = engine.model)"})
    gpu_memory_utilization: float = field(default=0.85, metadata={"help": "vllm: GPU memory share"})

    def kwargs(self) -> dict[str, Any]:
        """The constructor arguments of the chosen engine."""
        if self.name == "hf":
            keys = ("model", "adapter", "device", "dtype", "max_batch_size")
        elif self.name == "vllm":
            keys = ("model", "adapter", "dtype", "gpu_memory_utilization")
        else:
            keys = ("base_url", "api_key_env", "served_model", "tokenizer", "model")
        return {k: getattr(self, k) for k in keys}


@dataclass
class EvalConfig:
    data: list[str] = field(
        default_factory=lambda: [str(WORLD_DIR / "test.parquet")], metadata={"help": "verl parquet file(s)"}
    )
    mode: str = field(default="search", metadata={"help": "search | direct | rag"})
    retriever_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "retrieval server"})
    retriever_timeout: float = field(default=30.0, metadata={"help": "seconds per retrieval request"})
    retriever_token: str | None = field(
        default=None,
        metadata={"help": "bearer token of the retrieval server; null = env SEARCH_R1_RETRIEVER_TOKEN"},
    )
    engine: EngineConfig = field(default_factory=EngineConfig)
    agent: ProtocolConfig = field(default_factory=ProtocolConfig)
    direct_template: str = field(default="direct", metadata={"help": "prompt template of mode=direct"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (the default for evaluation)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (temperature > 0 only)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    max_examples: int = field(default=-1, metadata={"help": "first N rows per file (-1 = all rows)"})
    max_concurrency: int = field(default=256, metadata={"help": "live episodes at once"})
    out_dir: str = field(default="", metadata={"help": "output folder ('' = outputs/runs/eval/<name>)"})
    name: str = field(default="", metadata={"help": "run name ('' = <model>-<mode>-<time>)"})
    wandb: bool = field(default=False, metadata={"help": "log metrics and sample trajectories to wandb"})
    wandb_project: str = field(default="search-r1-eval", metadata={"help": "wandb project"})
    samples_in_report: int = field(default=5, metadata={"help": "example trajectories in report.md / wandb"})
    retry_failed_s: float = field(
        default=60.0,
        metadata={
            "help": "after the rollout, wait up to this long for the retriever, then rerun the "
            "questions that had a failed search"
        },
    )
    retry_rounds: int = field(default=2, metadata={"help": "at most this many reruns of failed questions"})
    max_failed_share: float = field(
        default=0.02,
        metadata={
            "help": "refuse to publish (refused.json, exit 3) when failed / all searches is above this"
        },
    )
    replay: str = field(
        default="",
        metadata={
            "help": "a retrieval_log.jsonl of an earlier eval: answer searches from it, no server ('' = "
            "use the retriever at retriever_url and record every query to <out_dir>/retrieval_log.jsonl)"
        },
    )
    replay_miss: str = field(
        default="error",
        metadata={"help": "a query not in the replayed log: error (stop) | count (a failed search, counted)"},
    )


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout
    except OSError:
        return "unknown"
    return sha.strip() + ("-dirty" if dirty.strip() else "") if sha.strip() else "unknown"


def load_rows(paths: list[str], max_examples: int) -> list[dict[str, Any]]:
    rows = []
    for p in paths:
        part = read_parquet(p)
        rows += part if max_examples < 0 else part[:max_examples]
    uids = [uid_of(r) for r in rows]
    if len(set(uids)) != len(uids):
        raise ValueError("duplicate uids across the evaluation files (each file given twice?)")
    return rows


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Prompt ids through the model's chat template (plain text when it has none)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n".join(m["content"] for m in messages)
    return tokenizer.encode(text, add_special_tokens=False)


async def build_prompts(
    cfg: EvalConfig, rows: list[dict[str, Any]], tokenizer: Any, retriever: Any
) -> tuple[list[list[int]], list[tuple[list[str], list[str]]]]:
    """Prompt ids per row, and per row the ids and text of what ``rag`` put in the prompt."""
    no_context: list[tuple[list[str], list[str]]] = [([], [])] * len(rows)
    if cfg.mode == "search":
        return [chat_ids(tokenizer, r["prompt"]) for r in rows], no_context
    questions = [r["extra_info"]["question"] for r in rows]
    if cfg.mode == "direct":
        return [chat_ids(tokenizer, render_prompt(q, cfg.direct_template)) for q in questions], no_context
    from search_r1.retrieval.client import RetrieverAuthError, RetrieverError

    results = []
    try:
        for i in range(0, len(questions), 256):  # rag: one batched retrieval per 256 questions
            results += await retriever.retrieve(questions[i : i + 256], topk=cfg.agent.topk)
    except RetrieverAuthError:
        raise  # a configuration error, said as such by main
    except RetrieverError as exc:  # a prompt without its passages would score the outage, not the model
        raise Refused(
            f"refused: the rag retrieval failed ({exc}); the retriever at {cfg.retriever_url} was down "
            "— rerun when it is up"
        ) from None
    information = [format_docs(truncate_docs(d, tokenizer, cfg.agent.max_obs_tokens)) for d in results]
    prompts = [
        chat_ids(tokenizer, render_prompt(q, "rag", information=info))
        for q, info in zip(questions, information, strict=True)
    ]
    return prompts, [
        ([str(d.id) for d in docs], [info]) for docs, info in zip(results, information, strict=True)
    ]


async def wait_for_retriever(retriever: Any, seconds: float) -> bool:
    """Poll ``/health`` for up to ``seconds`` (at least once); True as soon as the retriever answers."""
    from search_r1.retrieval.client import RetrieverError

    deadline = time.monotonic() + seconds
    while True:
        try:
            await asyncio.wait_for(retriever.health(), max(deadline - time.monotonic(), 1.0))
            return True
        except (RetrieverError, TimeoutError):
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


def default_name(cfg: EvalConfig) -> str:
    model = Path(cfg.engine.adapter or cfg.engine.model).name or "model"
    return f"{model}-{cfg.mode}-{time.strftime('%Y%m%d-%H%M%S')}"


async def open_retriever(cfg: EvalConfig, out: Path, resuming: bool) -> Any:
    """The replayed log, or the server (checked up) with every query recorded in ``out``."""
    if cfg.replay:
        return ReplayRetriever(cfg.replay, cfg.agent.topk, cfg.replay_miss)
    from search_r1.retrieval.client import AsyncRetrieverClient, RetrieverError

    client = AsyncRetrieverClient(
        cfg.retriever_url, topk=cfg.agent.topk, timeout=cfg.retriever_timeout, token=cfg.retriever_token
    )
    try:
        await client.health()
    except RetrieverError as exc:
        await client.aclose()
        raise SystemExit(
            f"error: no retriever at {cfg.retriever_url} ({exc}); start one with retrieval_launch.sh, "
            "replay a retrieval log (replay=...) or use mode=direct"
        ) from None
    if not resuming:
        (out / LOG_NAME).unlink(missing_ok=True)
    return RecordingRetriever(client, out / LOG_NAME)


def make_prediction(
    row: dict[str, Any],
    traj: Trajectory,
    response: str,
    score: dict[str, float],
    mode: str,
    rag_context: tuple[list[str], list[str]],
) -> dict[str, Any]:
    """One question's record in predictions.jsonl, with its answer-seen diagnostics."""
    golds = golds_of(row["reward_model"]["ground_truth"])
    rag_ids, rag_texts = rag_context
    retrieved = {i for t in traj.turns for i in t.doc_ids} | set(rag_ids)
    support = row["extra_info"].get("support")
    return {
        "uid": traj.uid,
        "data_source": row["data_source"],
        "question": row["extra_info"]["question"],
        "golds": golds,
        "prediction": traj.final_answer,
        "metrics": score,
        "num_searches": traj.num_searches,
        "retrieval_failures": traj.num_retrieval_failures,
        "finish_reason": traj.finish_reason,
        "answer_seen": None if mode == "direct" else answer_seen(golds, seen_texts(traj, rag_texts)),
        "evidence_hits": None if mode == "direct" or support is None else evidence_hits(support, retrieved),
        "response": response,
        "trajectory": traj.to_dict(),
    }


async def evaluate(cfg: EvalConfig) -> Path:
    """Run one evaluation (or finish a killed one in the same ``out_dir``); returns the output folder."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    name = cfg.name or default_name(cfg)
    out = Path(cfg.out_dir or RUNS_DIR / "eval" / name)
    rows = load_rows(cfg.data, cfg.max_examples)
    config = to_dict(cfg)
    partial = PartialPredictions(out, name, config)
    name = partial.name
    if partial.resuming:
        print(
            f"[eval] resuming {out}: {len(partial.done)} of {len(rows)} questions already evaluated",
            flush=True,
        )
    engine = make_engine(cfg.engine.name, **cfg.engine.kwargs())
    tokenizer = engine.tokenizer
    retriever = None if cfg.mode == "direct" else await open_retriever(cfg, out, partial.resuming)
    protocol = cfg.agent if cfg.mode == "search" else dataclasses.replace(cfg.agent, max_turns=0)
    sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    uids = [uid_of(r) for r in rows]
    todo = [i for i, uid in enumerate(uids) if uid not in partial.done]
    predictions: dict[str, dict[str, Any]] = {u: partial.done[u] for u in uids if u in partial.done}

    async def run(idx: list[int], desc: str) -> float:
        """Roll out the rows ``idx``, replacing earlier predictions; returns the wall time."""
        prompts, contexts = await build_prompts(cfg, [rows[i] for i in idx], tokenizer, retriever)
        bar = tqdm(total=len(idx), desc=desc, unit="q", dynamic_ncols=True)

        def on_done(j: int, traj: Trajectory) -> None:
            row = rows[idx[j]]
            response = tokenizer.decode(traj.response_ids, skip_special_tokens=True)
            score = compute_score(row["data_source"], response, row["reward_model"]["ground_truth"])
            predictions[traj.uid] = make_prediction(row, traj, response, score, cfg.mode, contexts[j])
            partial.add(predictions[traj.uid])
            bar.set_postfix(
                em=f"{sum(p['metrics']['em'] for p in predictions.values()) / len(predictions):.3f}"
            )
            bar.update()

        try:
            batch = await rollout(
                engine,
                tokenizer,
                retriever,
                prompts,
                protocol,
                sampling,
                [uids[i] for i in idx],
                max_concurrency=cfg.max_concurrency,
                on_done=on_done,
            )
        finally:
            bar.close()
        return batch.stats.wall_s

    try:
        wall_s = await run(todo, f"eval {cfg.mode}") if todo else 0.0
        # Greedy decoding is deterministic, so rerunning a question once the retriever is back gives
        # the trajectory an uninterrupted run would have had. A replayed log does not come back.
        for attempt in range(1, 0 if cfg.replay else cfg.retry_rounds + 1):
            failed = [i for i, u in enumerate(uids) if predictions[u]["retrieval_failures"]]
            if not failed:
                break
            print(
                f"[eval] {len(failed)} questions had a failed search; waiting up to {cfg.retry_failed_s:g} s "
                f"for the retriever at {cfg.retriever_url}",
                flush=True,
            )
            if not await wait_for_retriever(retriever, cfg.retry_failed_s):
                break
            wall_s += await run(failed, f"retry {attempt}")
    finally:
        partial.close()
        if retriever is not None:
            await retriever.aclose()
    missing = [u for u in uids if u not in predictions]
    assert not missing, f"examples were dropped: {missing[:5]}"

    ordered = [predictions[u] for u in uids]
    trajectories = [Trajectory.from_dict(p["trajectory"]) for p in ordered]
    results = {
        "name": name,
        "mode": cfg.mode,
        "config": config,
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metrics": aggregate(ordered),
        "rollout": RolloutStats.of(trajectories, wall_s).to_dict(),
        "resumed_questions": len(partial.done),
    }
    if isinstance(retriever, ReplayRetriever):
        results["replay"] = {"log": cfg.replay, "misses": retriever.misses}
    overall = results["metrics"]["overall"]
    searches = sum(p["num_searches"] for p in ordered)
    where = f"replayed log {cfg.replay}" if cfg.replay else cfg.retriever_url
    reason = refusal(overall["searches_failed"], searches, cfg.max_failed_share, where)
    if reason is not None:  # no results.json: a rerun of the stage redoes the failed questions only
        (out / "refused.json").write_text(json.dumps(results | {"reason": reason}, indent=2) + "\n")
        raise Refused(reason)
    write_outputs(out, results, ordered, cfg.samples_in_report)
    partial.finish()
    if cfg.wandb:
        _log_wandb(cfg, name, results, ordered)
    return out


def _log_wandb(cfg: EvalConfig, name: str, results: dict, predictions: list[dict]) -> None:
    import wandb

    run = wandb.init(project=cfg.wandb_project, name=name, config=results["config"], job_type="eval")
    flat = {
        f"{src}/{k}": v
        for src, m in results["metrics"]["by_source"].items()
        for k, v in m.items()
        if isinstance(v, float)
    }
    flat |= {f"overall/{k}": v for k, v in results["metrics"]["overall"].items() if isinstance(v, float)}
    run.log(flat)
    table = wandb.Table(columns=["uid", "question", "golds", "prediction", "em", "searches", "response"])
    for p in predictions[: max(cfg.samples_in_report, 50)]:
        table.add_data(
            p["uid"],
            p["question"],
            "; ".join(p["golds"]),
            p["prediction"],
            p["metrics"]["em"],
            p["num_searches"],
            p["response"],
        )
    run.log({"samples": table})
    run.finish()


@entry_point
def main(argv: list[str] | None = None) -> None:
    from search_r1.config import die, parse_config
    from search_r1.paths import CONFIG_DIR
    from search_r1.retrieval.client import RetrieverAuthError

    description = (
        "Evaluate a search agent or a baseline (merge runs: python -m search_r1.eval compare --help)."
    )
    cfg = parse_config(EvalConfig, description, CONFIG_DIR / "eval" / "default.yaml", argv)
    try:
        out = asyncio.run(evaluate(cfg))
    except RetrieverAuthError as exc:  # a configuration error: one line, not a traceback
        die(str(exc))
    except (ResumeConflict, ReplayMissError) as exc:
        die(str(exc), 2)
    except Refused as exc:
        print(f"[eval] {exc}", flush=True)
        raise SystemExit(REFUSED_EXIT) from None
    overall = json.loads((out / "results.json").read_text())["metrics"]["overall"]
    searches = round(overall["searches"] * overall["n"])
    print(
        f"[eval] {overall['n']} examples  EM {overall['em']:.4f}  F1 {overall['f1']:.4f}  "
        f"ROUGE-L {overall['rouge_l']:.4f}{failed_note(overall['searches_failed'], searches)}  -> {out}"
    )
