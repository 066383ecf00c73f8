"""Teacher trajectories: the shared rollout, driven by a teacher engine, into an append-only JSONL.

    python -m sft.generate --config configs/sft/tiny.yaml [generate.n_samples=4 ...]

Same prompt, same retriever, same observation format and same protocol config as RL: each episode
is ``search_r1.agent.rollout.run_episode``; only the engine differs. Tokens are the *student's*
tokens (the teacher's text is tokenised with the student tokenizer), so a trajectory is exactly
what the student would see in RL.

With ``practice.worlds`` set (the tiny preset), the practice worlds follow the world, each with its
own index and retriever (``sft.practice``), into their own files.

Crash safety: a question's ``n`` samples are written together, in question order, one JSON line
each, flushed and fsynced per batch. On restart the file is read back, a torn last line is cut
off, finished ``(uid, sample)`` pairs are skipped and the rest is generated. Sample ``k`` uses seed
``seed + k`` and the oracle is deterministic given its seed, so an interrupted-and-resumed run
writes the same file as an uninterrupted one.

A failed search (the retriever down) would teach the student failure observations, and once written
resume would count the question as done; so a question with a failed search in any sample is not
written at all, and the run ends with exit code 3 and the number of questions left: rerun it once
the retriever is back and resume generates just those.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from search_r1.agent.engines.base import Engine, SamplingParams
from search_r1.agent.engines.openai_chat import OpenAIChatEngine
from search_r1.agent.protocol import ProtocolConfig
from search_r1.agent.rollout import Retriever, run_episode
from search_r1.agent.trajectory import Trajectory
from search_r1.config import die, entry_point, parse_config
from search_r1.data.schema import DatasetError, read_parquet, uid_of
from search_r1.eval.faults import REFUSED_EXIT
from search_r1.rewards.metrics import exact_match
from sft.config import DEFAULT_CONFIG, SFTConfig, TeacherConfig
from sft.oracle import OracleTeacher, load_oracle_questions

_TIMINGS = ("generation_s", "retrieval_s")
# Questions left for a rerun (a failed search) per trajectory file, for main's exit code: the practice
# worlds reach generate() through sft.practice, whose return value is only the list of files.
LEFT_FOR_RERUN: dict[Path, int] = {}


@dataclass
class Question:
    """One dataset row, reduced to what generation and the filters need."""

    uid: str
    messages: list[dict[str, str]]
    golds: list[str]
    meta: dict[str, Any]  # question text, hops, support doc ids, known, ...
    source: str = "world"  # which world it comes from: "world", or "p<seed>" for a practice world


def load_questions(parquet: Path, max_questions: int = 0, source: str = "world") -> list[Question]:
    """The rows of ``parquet``; a practice world's uids get its ``source`` as a prefix, since every
    world numbers its questions the same way."""
    rows = read_parquet(parquet)
    rows = rows[:max_questions] if max_questions else rows
    prefix = "" if source == "world" else f"{source}-"
    out = []
    for row in rows:
        meta = {k: (list(v) if hasattr(v, "tolist") else v) for k, v in row["extra_info"].items()}
        golds = row["reward_model"]["ground_truth"]["target"]
        out.append(Question(prefix + uid_of(row), row["prompt"], golds, meta, source))
    return out


def _numbered_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("<file>:<line>", record)`` for each line of ``path``; a line that is not a JSON object
    raises ``DatasetError`` naming file and line."""
    lineno = 0
    with Path(path).open(encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{where}: not JSON ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise DatasetError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                yield where, rec
        except UnicodeDecodeError as exc:  # decoded a block at a time: the line is approximate
            raise DatasetError(f"{path}: not UTF-8 text near line {lineno + 1} ({exc.reason})") from None


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of ``path``, one a line; a bad line raises ``DatasetError`` naming file and line."""
    for _, rec in _numbered_records(path):
        yield rec


def read_trajectories(path: Path) -> Iterator[Trajectory]:
    """The trajectories of ``path``; a line that is no trajectory record (a field missing, unknown or
    of the wrong kind) raises ``DatasetError`` naming file and line, not a bare ``TypeError``."""
    for where, rec in _numbered_records(path):
        try:
            yield Trajectory.from_dict(rec)
        except (TypeError, KeyError, AttributeError) as exc:
            raise DatasetError(f"{where}: not a trajectory record ({exc})") from None


def recover(path: Path) -> set[tuple[str, int]]:
    """Cut a torn last line (a crash mid-write) and return the finished ``(uid, sample)`` pairs."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(keep))
    return {(t.uid, t.sample_index) for t in read_trajectories(path)}


def missing(path: Path, questions: list[Question], n_samples: int) -> list[tuple[Question, list[int]]]:
    """The questions of ``questions`` with samples not yet in ``path``, and which samples."""
    done = recover(path)
    pending = [(q, [k for k in range(n_samples) if (q.uid, k) not in done]) for q in questions]
    return [(q, todo) for q, todo in pending if todo]


_TEACHER_ENGINES = {"completions": "openai", "chat": "openai_chat"}  # teacher.api -> registered engine


def make_teacher(cfg: TeacherConfig, tokenizer: PreTrainedTokenizerBase, world_dir: Path) -> Engine:
    """The teacher engine of ``cfg``; an API teacher's text is tokenised with the student's ``tokenizer``."""
    if cfg.kind == "oracle":
        return OracleTeacher(
            tokenizer, load_oracle_questions(world_dir / "questions.jsonl"), cfg.p_search_known
        )
    if cfg.kind == "openai":
        from search_r1.agent.engines.registry import make_engine

        if cfg.api not in _TEACHER_ENGINES:
            raise ValueError(f"unknown teacher api {cfg.api!r}: completions | chat")
        if not cfg.model:
            raise ValueError("teacher.model (the served model name) is required for teacher.kind=openai")
        return make_engine(
            _TEACHER_ENGINES[cfg.api],
            base_url=cfg.base_url,
            served_model=cfg.model,
            tokenizer=tokenizer,
            api_key_env=cfg.api_key_env,
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
        )
    raise ValueError(f"unknown teacher kind {cfg.kind!r}: oracle | openai")


async def _episodes(
    q: Question,
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    retriever: Retriever | None,
    protocol: ProtocolConfig,
    cfg: SFTConfig,
    todo: list[int],
) -> list[Trajectory] | None:
    """The samples ``todo`` of ``q``; None when one of them had a failed search (nothing to write)."""
    prompt_ids = list(
        tokenizer.apply_chat_template(
            q.messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )
    # a chat teacher is asked with the question's messages, which the student's template has rendered away
    chat = (
        engine.conversation(prompt_ids, q.messages) if isinstance(engine, OpenAIChatEngine) else nullcontext()
    )
    out = []
    with chat:
        for k in todo:  # a question's samples run one after another; questions run concurrently
            sampling = SamplingParams(temperature=cfg.generate.temperature, seed=cfg.generate.seed + k)
            traj = await run_episode(engine, tokenizer, retriever, prompt_ids, protocol, sampling, q.uid, k)
            if traj.num_retrieval_failures:
                return None
            for key in _TIMINGS:  # wall-clock numbers would make a resumed file differ from a clean run
                traj.extra.pop(key, None)
            traj.extra.update(
                messages=q.messages, golds=q.golds, meta=q.meta, teacher=cfg.teacher.kind, source=q.source
            )
            out.append(traj)
    return out


async def generate(
    cfg: SFTConfig,
    engine: Engine,
    tokenizer: PreTrainedTokenizerBase,
    retriever: Retriever | None,
    questions: list[Question],
    protocol: ProtocolConfig,
    stop_after_batches: int | None = None,
    out: Path | None = None,
) -> Path:
    """Append every missing ``(question, sample)`` to ``out`` (default ``cfg.trajectories``); returns
    its path. Questions with a failed search are skipped and counted in ``LEFT_FOR_RERUN[out]``.

    ``stop_after_batches`` simulates a crash (tests): return early, as a killed process would.
    """
    out = out or cfg.trajectories
    out.parent.mkdir(parents=True, exist_ok=True)
    pending = missing(out, questions, cfg.generate.n_samples)
    bs = cfg.generate.batch_size
    LEFT_FOR_RERUN[out] = 0
    with out.open("a", encoding="utf-8") as f, tqdm(total=len(pending), desc="teacher", unit="q") as bar:
        for b, start in enumerate(range(0, len(pending), bs)):
            if stop_after_batches is not None and b >= stop_after_batches:
                break
            batch = pending[start : start + bs]
            results = await asyncio.gather(
                *(_episodes(q, engine, tokenizer, retriever, protocol, cfg, todo) for q, todo in batch)
            )
            for trajs in results:  # in question order, so a resumed run writes the same bytes
                if trajs is None:
                    LEFT_FOR_RERUN[out] += 1
                    continue
                for t in trajs:
                    f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    return out


def summarize(path: Path) -> dict[str, Any]:
    """Counts for the end-of-run summary: finish reasons, searches, exact match against gold."""
    recs = list(read_records(path))
    if not recs:
        return {"trajectories": 0}
    em = [exact_match(r["final_answer"], r["extra"]["golds"]) for r in recs]
    searches = Counter(sum(t["action"] == "search" for t in r["turns"]) for r in recs)
    return {
        "trajectories": len(recs),
        "questions": len({r["uid"] for r in recs}),
        "exact_match": round(sum(em) / len(recs), 4),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in recs)),
        "searches": dict(sorted(searches.items())),
    }


def generate_world(
    cfg: SFTConfig,
    world_dir: Path,
    url: str,
    tokenizer: PreTrainedTokenizerBase,
    protocol: ProtocolConfig,
    questions: list[Question],
    out: Path | None = None,
) -> Path:
    """The teacher of ``cfg`` on ``questions`` of the world at ``world_dir``, searching at ``url``."""
    from search_r1.retrieval.client import AsyncRetrieverClient

    engine = make_teacher(cfg.teacher, tokenizer, world_dir)

    async def run() -> Path:
        async with AsyncRetrieverClient(
            url, topk=protocol.topk, token=cfg.generate.retriever_token
        ) as retriever:
            return await generate(cfg, engine, tokenizer, retriever, questions, protocol, out=out)

    return asyncio.run(run())


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(SFTConfig, "Generate teacher trajectories (resumable).", DEFAULT_CONFIG, argv)
    from search_r1.retrieval.client import RetrieverAuthError
    from sft.practice import generate_practice

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    protocol = ProtocolConfig.from_yaml(cfg.generate.protocol)
    world_dir = Path(cfg.world_dir)
    questions = load_questions(world_dir / f"{cfg.generate.split}.parquet", cfg.generate.max_questions)
    t0 = time.perf_counter()
    try:
        paths = [generate_world(cfg, world_dir, cfg.generate.retriever_url, tokenizer, protocol, questions)]
        paths += generate_practice(cfg, tokenizer, protocol)
    except RetrieverAuthError as exc:  # a configuration error: one line, not a traceback
        die(str(exc))
    wall = round(time.perf_counter() - t0, 1)
    summary = {str(p): summarize(p) for p in paths} | {"wall_s": wall}
    print(f"[sft.generate] {len(paths)} trajectory file(s)\n{json.dumps(summary, indent=1)}")
    if left := sum(LEFT_FOR_RERUN.values()):
        print(
            f"[sft.generate] {left} questions had a failed search and were not written "
            f"(retriever at {cfg.generate.retriever_url} or a practice world's down?); "
            "rerun once the retriever is back to generate just those",
            flush=True,
        )
        raise SystemExit(REFUSED_EXIT)


if __name__ == "__main__":
    main()
