"""Rollout benchmark: tokens generated vs kept, and questions/s with retrieval overlapped vs serial.

    python benchmarks/bench_rollout.py                  # toy searcher, 48 episodes, 50 ms ± 50% retrieval
    python benchmarks/bench_rollout.py --model outputs/models/tiny-base --latency-ms 100   # world test split

Schedules compared (same engine, same questions, greedy):

* ``overlapped`` — ours: every episode is its own task; the HF engine batches whatever generate
  calls are waiting, so episodes waiting on the retriever do not hold up the others.
* ``lockstep`` — the predecessor's schedule: generation starts only when every live episode is
  waiting to generate (generate for all → retrieve for all → …), so retrieval never overlaps it.
* ``sequential`` — one episode at a time (batch 1), for scale.

The default policy is the toy searcher of ``tests/agent_fixtures.py``: a tiny Qwen2 overfit to three
episodes of different shapes (answer at once / one search / two searches), cycled over the batch,
so the work is real multi-turn search with uneven episodes. (The world's tiny base model has not
learnt the protocol and rarely searches; ``--model`` runs it on the world test split anyway.)
Retrieval is a word-overlap search plus a latency drawn uniformly from ``latency * [0.5, 1.5]``,
standing in for a dense retriever behind HTTP.

Also measured: what the predecessor's no-stop-string decoding would waste — the first turn decoded
to the turn budget without stop strings, counting the tokens after the first closing tag.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent_fixtures import MIXED_EPISODES, TOY_CFG, MemoryRetriever, prompt_ids, toy_model, toy_tokenizer  # noqa: E402

from search_r1.agent.engines.base import SamplingParams  # noqa: E402
from search_r1.agent.engines.hf import HFEngine  # noqa: E402
from search_r1.agent.protocol import STOP_STRINGS, parse_action  # noqa: E402
from search_r1.agent.rollout import rollout  # noqa: E402
from search_r1.data.corpus import iter_corpus  # noqa: E402
from search_r1.data.schema import read_parquet  # noqa: E402
from search_r1.eval.run import chat_ids  # noqa: E402
from search_r1.paths import HOME, WORLD_DIR  # noqa: E402


class LockstepEngine:
    """Releases generate calls only when every live episode is waiting for one (a turn barrier)."""

    def __init__(self, inner: HFEngine, live: int):
        self.inner, self.live, self.waiting = inner, live, 0
        self._release = asyncio.Event()

    def episode_done(self, *_: object) -> None:
        self.live -= 1
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self.waiting and self.waiting >= self.live:
            self.waiting = 0
            self._release.set()
            self._release = asyncio.Event()

    async def generate(self, prompt_ids, sampling):
        self.waiting += 1
        release = self._release
        self._maybe_release()
        await release.wait()
        return await self.inner.generate(prompt_ids, sampling)


async def run_schedule(name: str, engine: HFEngine, tok, retriever, prompts, cfg, sampling) -> dict:
    engine.stats.__init__()
    if name == "lockstep":
        barrier = LockstepEngine(engine, len(prompts))
        batch = await rollout(barrier, tok, retriever, prompts, cfg, sampling, on_done=barrier.episode_done)
    else:
        conc = 1 if name == "sequential" else None
        batch = await rollout(engine, tok, retriever, prompts, cfg, sampling, max_concurrency=conc)
    s = batch.stats
    return {
        "schedule": name,
        "questions_per_s": s.questions_per_s,
        "wall_s": s.wall_s,
        "tokens_generated": s.tokens_generated,
        "tokens_kept": s.tokens_kept,
        "waste": s.tokens_generated - s.tokens_kept,
        "turns_with_text_after_action": s.turns_with_text_after_action,
        "searches": s.searches,
        "finish_reasons": s.finish_reasons,
        "batches": engine.stats.batches,
        "mean_batch": engine.stats.sequences / max(engine.stats.batches, 1),
        "padding_share": 1 - engine.stats.tokens / max(engine.stats.slot_steps, 1),
    }


async def no_stop_waste(engine: HFEngine, tok, prompts, cfg) -> dict:
    """First turn decoded to the budget without stop strings: tokens after the first action's close."""
    sampling = SamplingParams(temperature=0.0, max_new_tokens=cfg.max_turn_tokens, stop=[])
    results = await asyncio.gather(*(engine.generate(p, sampling) for p in prompts))
    total = wasted = 0
    for r in results:
        total += len(r.token_ids)
        for k in range(1, len(r.token_ids) + 1):
            if parse_action(tok.decode(r.token_ids[:k])).end >= 0:
                wasted += len(r.token_ids) - k
                break
    return {"tokens": total, "after_stop": wasted, "share": wasted / max(total, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy", help="'toy' (the mixed-episode searcher) or an HF folder")
    ap.add_argument("--n", type=int, default=48, help="episodes (toy) or world test questions (--model)")
    ap.add_argument("--latency-ms", type=float, nargs="+", default=[50.0, 200.0], help="retrieval latencies")
    ap.add_argument(
        "--batch-wait-ms",
        type=float,
        nargs="+",
        default=[2.0, 20.0],
        help="HF engine batch windows (overlapped)",
    )
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--out", type=Path, default=HOME / "benchmarks" / "rollout.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model == "toy":
        tok = toy_tokenizer()
        cached = HOME / "benchmarks" / "toy-searcher"  # training takes minutes on a busy CPU: keep it
        if (cached / "model.safetensors").exists():
            model = Qwen2ForCausalLM.from_pretrained(cached)
        else:
            model = toy_model(tok, MIXED_EPISODES, max_steps=600)
            model.save_pretrained(cached)
        engine = HFEngine(model, tok, max_batch_size=args.max_batch_size)
        prompts = [prompt_ids(tok, MIXED_EPISODES[i % len(MIXED_EPISODES)][0]) for i in range(args.n)]
        retriever = MemoryRetriever(jitter=0.5)
    else:
        engine = HFEngine.from_config(args.model, device="cpu", max_batch_size=args.max_batch_size)
        tok = engine.tokenizer
        prompts = [chat_ids(tok, r["prompt"]) for r in read_parquet(WORLD_DIR / "test.parquet")[: args.n]]
        retriever = MemoryRetriever(list(iter_corpus(WORLD_DIR / "corpus.jsonl")), jitter=0.5)
    # the observations the toy was trained on (TOY_CFG), with room for its two-search episode
    cfg = dataclasses.replace(TOY_CFG, max_turns=3)
    sampling = SamplingParams(temperature=0.0)

    async def all_runs() -> dict:
        await rollout(engine, tok, retriever, prompts[:4], cfg, sampling)  # warm-up
        runs = []
        for latency in args.latency_ms:
            retriever.delay_s = latency / 1000
            settings = [("overlapped", w) for w in args.batch_wait_ms] + [
                ("lockstep", 2.0),
                ("sequential", 2.0),
            ]
            for schedule, wait in settings:
                engine.batch_wait_s = wait / 1000
                r = await run_schedule(schedule, engine, tok, retriever, prompts, cfg, sampling)
                runs.append(r | {"latency_ms": latency, "batch_wait_ms": wait})
        return {"runs": runs, "no_stop_strings": await no_stop_waste(engine, tok, prompts, cfg)}

    t0 = time.perf_counter()
    result = asyncio.run(all_runs())
    result |= {
        "model": args.model,
        "n": len(prompts),
        "max_batch_size": args.max_batch_size,
        "torch_threads": torch.get_num_threads(),
        "stop_strings": list(STOP_STRINGS),
        "total_s": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"model={args.model} n={len(prompts)} batch<={args.max_batch_size} threads={torch.get_num_threads()}"
    )
    print(
        "| retrieval ms | schedule | batch wait ms | questions/s | generated | kept | waste | text after stop "
        "| searches/q | mean batch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        print(
            f"| {r['latency_ms']:.0f} | {r['schedule']} | {r['batch_wait_ms']:.0f} | {r['questions_per_s']:.2f} | "
            f"{r['tokens_generated']} | {r['tokens_kept']} | {r['waste']} | {r['turns_with_text_after_action']} | "
            f"{r['searches']:.2f} | {r['mean_batch']:.1f} |"
        )
    ns = result["no_stop_strings"]
    print(
        f"without stop strings, first turn: {ns['after_stop']}/{ns['tokens']} tokens ({ns['share']:.0%}) "
        "decoded after the action's closing tag"
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
