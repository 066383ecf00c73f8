"""Quick before/after check for ``train_sft.sh``: greedy EM of base and SFT models on a world split.

    python -m sft.evaluate models=[outputs/models/tiny-base,outputs/runs/sft/tiny/merged]

Runs the shared rollout (HF engine, the RL protocol config, the retriever service) and scores the
final answer with the shared EM. ``eval.sh`` is the full harness (more metrics, baselines, data
sets); this is the smallest thing that shows whether distillation worked.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.protocol import ProtocolConfig
from search_r1.agent.rollout import rollout
from search_r1.config import die, parse_config
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


def evaluate(model: str, cfg: EvalConfig) -> dict[str, float]:
    """EM, search rate and answer rate of one model, greedy."""
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
    retriever = AsyncRetrieverClient(cfg.retriever_url, topk=protocol.topk, token=cfg.retriever_token)
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
    return {
        "em": round(sum(em) / len(em), 4),
        "answered": round(batch.stats.answered, 4),
        "searches_per_question": round(batch.stats.searches, 3),
        "questions": len(qs),
    }


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(EvalConfig, "Greedy EM of models on a world split (quick SFT check).", None, argv)
    try:
        results = {m: evaluate(m, cfg) for m in cfg.models}
    except RetrieverAuthError as exc:  # a configuration error: one line, not a traceback
        die(str(exc))
    text = json.dumps({"split": cfg.split, "results": results}, indent=1)
    if cfg.out:
        Path(cfg.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
