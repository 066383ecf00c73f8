"""The multi-turn search rollout: one episode per question, all episodes concurrent.

Each episode is an ``async`` loop — generate a turn, parse its action, retrieve, append the
observation — and a batch is ``asyncio.gather`` over episodes. The engine batches the concurrent
``generate`` calls itself (dynamic batching), so while one episode waits on the retriever the
others keep generating: retrieval overlaps generation, no turn-level barrier. (The predecessor's
lock-step design — generate for all, then retrieve for all — is measured against this in
``benchmarks/bench_rollout.py``.)

Token-in/token-out: the policy's ids are appended exactly as the engine returned them (mask 1);
each observation is rendered as text, tokenised once and appended (mask 0). ``Turn.observation``
holds that text, so ``tokenizer.encode(turn.observation)`` reproduces the observation ids.
The response never exceeds ``ProtocolConfig.max_response_tokens``: an observation that does not
fit ends the episode with finish reason ``length`` instead of being cut.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from search_r1.agent.engines.base import Engine, SamplingParams
from search_r1.agent.protocol import (
    STOP_STRINGS,
    ProtocolConfig,
    TextTokenizer,
    TitledDoc,
    parse_action,
    render_failure,
    render_invalid,
    render_results,
    with_final_turn_note,
)
from search_r1.agent.trajectory import Trajectory, Turn
from search_r1.retrieval.client import RetrieverAuthError, RetrieverError

# What counts as "the search failed" (an observation, not a crash): the client's typed errors, plus
# the transport errors any other retriever implementation may raise. A refused token
# (RetrieverAuthError) is not among them: it is re-raised, see ``_search``.
RETRIEVAL_ERRORS = (RetrieverError, TimeoutError, OSError)


class RetrievedDoc(TitledDoc, Protocol):
    @property
    def id(self) -> str: ...


class Retriever(Protocol):
    """Anything with the retriever client's async ``retrieve`` (one list of passages per query)."""

    async def retrieve(self, queries: list[str], topk: int | None = None) -> list[list[RetrievedDoc]]: ...


async def run_episode(
    engine: Engine,
    tokenizer: TextTokenizer,
    retriever: Retriever | None,
    prompt_ids: list[int],
    cfg: ProtocolConfig,
    sampling: SamplingParams,
    uid: str = "",
    sample_index: int = 0,
) -> Trajectory:
    """One question, start to finish. ``retriever=None`` is only valid when ``max_turns == 0``."""
    traj = Trajectory(uid=uid, prompt_ids=list(prompt_ids), sample_index=sample_index)
    if sampling.logprobs:
        traj.response_logprobs = []
    timing = {"generation_s": 0.0, "retrieval_s": 0.0, "generated_tokens": 0, "text_after_action": 0}
    observed = 0  # turns that got an observation so far
    while True:
        budget = cfg.max_response_tokens - len(traj.response_ids)
        if budget <= 0:
            traj.finish_reason = "length"
            break
        turn_sampling = dataclasses.replace(
            sampling, max_new_tokens=min(cfg.max_turn_tokens, budget), stop=list(STOP_STRINGS)
        )
        t0 = time.perf_counter()
        res = await engine.generate(traj.prompt_ids + traj.response_ids, turn_sampling)
        timing["generation_s"] += time.perf_counter() - t0
        timing["generated_tokens"] += len(res.token_ids)
        traj.response_ids += res.token_ids
        traj.response_mask += [1] * len(res.token_ids)
        if traj.response_logprobs is not None:
            traj.response_logprobs += res.logprobs or [0.0] * len(res.token_ids)

        text = tokenizer.decode(res.token_ids, skip_special_tokens=False)
        action = parse_action(text)
        if action.end >= 0 and text[action.end :].strip():
            timing["text_after_action"] += 1  # an engine generated past a stop string
        turn = Turn(action=action.kind, text=text, query=action.content if action.kind == "search" else None)
        traj.turns.append(turn)

        if action.kind == "answer":
            traj.final_answer, traj.finish_reason = action.content, "answer"
            break
        if action.kind == "invalid" and res.finish_reason in ("eos", "length"):
            if res.finish_reason == "length":
                turn.action = "length"
            traj.finish_reason = res.finish_reason
            break
        if observed >= cfg.max_turns:  # the final turn: only an answer counts; a search gets nothing
            traj.finish_reason = "max_turns"
            break

        if action.kind == "search":
            t0 = time.perf_counter()
            observation = await _search(retriever, action.content, tokenizer, cfg, turn)
            timing["retrieval_s"] += time.perf_counter() - t0
        else:
            observation = render_invalid(cfg)
        observed += 1
        if observed == cfg.max_turns:
            observation = with_final_turn_note(observation, cfg)
        obs_ids = tokenizer.encode(observation, add_special_tokens=False)
        if len(obs_ids) >= cfg.max_response_tokens - len(traj.response_ids):
            traj.finish_reason = "length"  # no room for the observation and a reply to it
            break
        turn.observation = observation
        traj.response_ids += obs_ids
        traj.response_mask += [0] * len(obs_ids)
        if traj.response_logprobs is not None:
            traj.response_logprobs += [0.0] * len(obs_ids)
    traj.extra.update(timing)
    return traj


async def _search(
    retriever: Retriever | None, query: str, tokenizer: TextTokenizer, cfg: ProtocolConfig, turn: Turn
) -> str:
    if retriever is None:
        raise ValueError("a search action needs a retriever (max_turns > 0)")
    try:
        docs = (await retriever.retrieve([query], topk=cfg.topk))[0]
    except RetrieverAuthError:
        # A wrong or missing token fails every search of the run: as observations it would quietly
        # score a whole evaluation or RL step as failed searches, so the stage stops with the message.
        raise
    except RETRIEVAL_ERRORS as exc:
        turn.retrieval_failed = True
        turn.error = type(exc).__name__
        return render_failure(exc, cfg)
    turn.doc_ids = [str(d.id) for d in docs]
    return render_results(docs, tokenizer, cfg)


@dataclass
class RolloutStats:
    """Per-batch numbers for logs and dashboards (means are per trajectory)."""

    n: int = 0
    turns: float = 0.0
    searches: float = 0.0
    valid_action_ratio: float = 0.0  # turns with a complete search/answer / all turns
    answered: float = 0.0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    retrieval_failures: int = 0
    tokens_generated: int = 0  # ids the engine returned
    tokens_kept: int = 0  # policy ids in the responses (mask 1): equal unless something was dropped
    turns_with_text_after_action: int = 0  # should be 0: nothing generated past a stop string
    observation_tokens: int = 0
    response_tokens: float = 0.0
    generation_s: float = 0.0  # summed over episodes (they overlap)
    retrieval_s: float = 0.0
    wall_s: float = 0.0

    @property
    def questions_per_s(self) -> float:
        return self.n / self.wall_s if self.wall_s else 0.0

    @classmethod
    def of(cls, trajs: Sequence[Trajectory], wall_s: float = 0.0) -> RolloutStats:
        n = max(len(trajs), 1)
        turns = [t for tr in trajs for t in tr.turns]
        return cls(
            n=len(trajs),
            turns=len(turns) / n,
            searches=sum(tr.num_searches for tr in trajs) / n,
            valid_action_ratio=sum(t.action in ("search", "answer") for t in turns) / max(len(turns), 1),
            answered=sum(tr.final_answer is not None for tr in trajs) / n,
            finish_reasons=dict(Counter(tr.finish_reason for tr in trajs)),
            retrieval_failures=sum(tr.num_retrieval_failures for tr in trajs),
            tokens_generated=sum(tr.extra.get("generated_tokens", 0) for tr in trajs),
            tokens_kept=sum(tr.num_generated_tokens for tr in trajs),
            turns_with_text_after_action=sum(tr.extra.get("text_after_action", 0) for tr in trajs),
            observation_tokens=sum(len(tr.response_mask) - sum(tr.response_mask) for tr in trajs),
            response_tokens=sum(len(tr.response_ids) for tr in trajs) / n,
            generation_s=sum(tr.extra.get("generation_s", 0.0) for tr in trajs),
            retrieval_s=sum(tr.extra.get("retrieval_s", 0.0) for tr in trajs),
            wall_s=wall_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"questions_per_s": self.questions_per_s}


@dataclass
class RolloutBatch:
    trajectories: list[Trajectory]
    stats: RolloutStats


async def rollout(
    engine: Engine,
    tokenizer: TextTokenizer,
    retriever: Retriever | None,
    prompts: Sequence[list[int]],
    cfg: ProtocolConfig,
    sampling: SamplingParams,
    uids: Sequence[str] | None = None,
    n: int = 1,
    max_concurrency: int | None = None,
    on_done: Callable[[int, Trajectory], None] | None = None,
) -> RolloutBatch:
    """All episodes of a batch, ``n`` samples per prompt, in input order (prompt-major).

    ``max_concurrency`` caps live episodes (None: all at once; the engine's batch size still
    bounds each forward pass). ``on_done(i, trajectory)`` is called as each episode ends.
    """
    uids = list(uids) if uids is not None else [str(i) for i in range(len(prompts))]
    jobs = [(p, u, k) for p, u in zip(prompts, uids, strict=True) for k in range(n)]
    gate = asyncio.Semaphore(max_concurrency or max(len(jobs), 1))

    async def one(i: int, prompt: list[int], uid: str, k: int) -> Trajectory:
        async with gate:
            traj = await run_episode(engine, tokenizer, retriever, prompt, cfg, sampling, uid, k)
        if on_done is not None:
            on_done(i, traj)
        return traj

    t0 = time.perf_counter()
    trajs = await asyncio.gather(*(one(i, p, u, k) for i, (p, u, k) in enumerate(jobs)))
    return RolloutBatch(list(trajs), RolloutStats.of(trajs, time.perf_counter() - t0))
