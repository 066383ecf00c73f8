"""Quick before/after check for ``train_sft.sh``: greedy EM of base and SFT models on a world split.

    python -m sft.evaluate models=[outputs/models/tiny-base,outputs/runs/sft/tiny/merged]

Runs the shared rollout (HF engine, the RL protocol config, the retriever service) and scores the
final answer with the shared EM. ``eval.sh`` is the full harness (more metrics, baselines, data
sets); this is the smallest thing that shows whether distillation worked.

A search that failed (the retriever down) is an observation the model answers around, so each
model's result counts them; above ``max_failed_share`` of the searches nothing is written and the
check exits with code 3 (``search_r1.eval.faults``): an EM measured against a dead retriever would
read as if SFT had broken the model.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.protocol import ProtocolConfig
from search_r1.agent.rollout import rollout
from search_r1.config import die, entry_point, parse_config
from search_r1.eval.faults import REFUSED_EXIT, failed_note, failed_share, refusal
from search_r1.paths import CONFIG_DIR, WORLD_DIR
from search_r1.retrieval.client import RetrieverAuthError
from search_r1.rewards.metrics import exact_match
from sft.generate import load_questions


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=list, metadata={"help": "HF folders to evaluate"})
    world_dir: str = field(default=str(WORLD_DIR), metadata={"help": "embedded world"})
    split: str = field(default="test", metadata={"help": "world split"})
    max_questions: int = field(default=0, metadata={"help": "first N questions (0 = all)"})
    retriever_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "retriever service"})
    retriever_token: str | None = field(
        default=None,
        metadata={"help": "bearer token of the retriever service; null = env SEARCH_R1_RETRIEVER_TOKEN"},
    )
    protocol: str = field(
        default=str(CONFIG_DIR / "agent" / "tiny.yaml"), metadata={"help": "ProtocolConfig YAML"}
    )
    batch_size: int = field(default=64, metadata={"help": "HF engine batch size"})
    device: str = field(
        default="auto", metadata={"help": "HF engine device: auto (GPU when there is one) | cpu"}
    )
    out: str = field(default="", metadata={"help": "write the results JSON here too"})
    retriever_timeout: float = field(default=10.0, metadata={"help": "seconds per retrieval request"})
    max_failed_share: float = field(
        default=0.02,
        metadata={"help": "refuse (exit 3, nothing written) above this share of failed searches"},
    )


def evaluate(model: str, cfg: EvalConfig) -> dict[str, float]:
    """EM, search rate, answer rate and failed searches of one model, greedy."""
    from search_r1.agent.engines.hf import HFEngine
    from search_r1.retrieval.client import AsyncRetrieverClient

    engine = HFEngine.from_config(model, device=cfg.device, max_batch_size=cfg.batch_size)
    tok = engine.tokenizer
    protocol = ProtocolConfig.from_yaml(cfg.protocol)
    qs = load_questions(Path(cfg.world_dir) / f"{cfg.split}.parquet", cfg.max_questions)
    prompts = [
        tok.apply_chat_template(q.messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        for q in qs
    ]
    retriever = AsyncRetrieverClient(
        cfg.retriever_url, topk=protocol.topk, timeout=cfg.retriever_timeout, token=cfg.retriever_token
    )
    batch = asyncio.run(
        rollout(
            engine,
            tok,
            retriever,
            [list(p) for p in prompts],
            protocol,
            SamplingParams(temperature=0.0),
            uids=[q.uid for q in qs],
        )
    )
    em = [exact_match(t.final_answer, q.golds) for t, q in zip(batch.trajectories, qs, strict=True)]
    searches = sum(t.num_searches for t in batch.trajectories)
    failed = batch.stats.retrieval_failures
    return {
        "em": round(sum(em) / len(em), 4),
        "answered": round(batch.stats.answered, 4),
        "searches_per_question": round(batch.stats.searches, 3),
        "questions": len(qs),
        "searches": searches,
        "searches_failed": failed,
        "searches_failed_share": round(failed_share(failed, searches), 4),
    }


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(EvalConfig, "Greedy EM of models on a world split (quick SFT check).", None, argv)
    results = {}
    try:
        for m in cfg.models:
            r = results[m] = evaluate(m, cfg)
            print(
                f"[sft.evaluate] {m}: em {r['em']}, searches/question {r['searches_per_question']}"
                f"{failed_note(r['searches_failed'], r['searches'])}",
                flush=True,
            )
    except RetrieverAuthError as exc:  # a configuration error: one line, not a traceback
        die(str(exc))
    failed, searches = (sum(r[k] for r in results.values()) for k in ("searches_failed", "searches"))
    reason = refusal(failed, searches, cfg.max_failed_share, cfg.retriever_url)
    if reason is not None:
        print(f"[sft.evaluate] {reason}", flush=True)
        raise SystemExit(REFUSED_EXIT)
    text = json.dumps({"split": cfg.split, "results": results}, indent=1)
    if cfg.out:
        Path(cfg.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
