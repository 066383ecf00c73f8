"""Training questions the start policy sometimes solves: a pass-rate pre-pass before RL.

GRPO learns only from groups whose rewards differ. From the tiny SFT model, about a third of a
practice world's questions are never solved and some always are, so their groups teach nothing;
trained on questions it solves only sometimes, the same run gains more and more reliably (session 7,
docs/benchmarks.md, RL). This pass samples each question ``n`` times with the start policy (the
trainer's rollout, retriever and reward), and writes the rows whose pass rate (exact match) lies
strictly between ``min_pass`` and ``max_pass`` to a parquet for ``data.train_files``, with every
question's rate beside it (``<out>.pass_rates.json``). Curating RL prompts by the starting
policy's pass rate is common practice; DAPO's dynamic sampling does it online.

A sample with a failed search (the retriever down) says nothing about the policy, so its question is
not classified at all (neither kept nor dropped); the report counts them as ``unclassified`` and the
pass exits with code 3, to be rerun once the retriever is up.

    python -m search_r1.rl.select model=data/models/tiny-sft \\
        train_files=outputs/world/practice/seed3/train.parquet out=outputs/rl/sometimes.parquet
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.engines.hf import HFEngine
from search_r1.agent.protocol import ProtocolConfig
from search_r1.agent.rollout import Retriever, rollout
from search_r1.config import die, entry_point, parse_config, to_dict
from search_r1.data.schema import read_parquet, uid_of
from search_r1.eval.faults import REFUSED_EXIT
from search_r1.paths import CONFIG_DIR, WORLD_DIR
from search_r1.rl.config import DataConfig, RetrieverConfig
from search_r1.rl.retriever import open_retriever
from search_r1.rl.trainer import prompt_ids, score_rollout, train_rows


@dataclass
class SelectConfig:
    model: str = field(default="", metadata={"help": "HF folder of the start policy (the SFT model)"})
    train_files: str = field(default=str(WORLD_DIR / "train.parquet"), metadata={"help": "questions"})
    out: str = field(default="", metadata={"help": "parquet of the selected rows"})
    max_questions: int = field(
        default=64, metadata={"help": "N questions drawn by seed, as data.train_max_samples (-1 = all)"}
    )
    n: int = field(default=8, metadata={"help": "samples per question"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (as the RL rollout)"})
    min_pass: float = field(default=0.0, metadata={"help": "keep pass rates strictly above this"})
    max_pass: float = field(default=1.0, metadata={"help": "keep pass rates strictly below this"})
    min_keep: int = field(
        default=0,
        metadata={
            "help": "when fewer questions are in bounds, keep every rated question instead (reported as "
            "fallback): a start policy that solves none still gets its RL run, on unfiltered questions"
        },
    )
    seed: int = field(default=1, metadata={"help": "seed of the question draw and the sampling"})
    protocol: str = field(
        default=str(CONFIG_DIR / "agent" / "tiny.yaml"), metadata={"help": "ProtocolConfig YAML"}
    )
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)


def pass_rates(cfg: SelectConfig, retriever: Retriever | None = None) -> tuple[dict[str, float], list[str]]:
    """Exact-match rate of ``cfg.n`` samples of each of ``max_questions`` questions, and the questions
    left unrated because one of their samples had a failed search. ``retriever`` replaces the one
    ``cfg.retriever`` opens (tests, as the trainer's ``train``)."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(cfg.model).eval()
    rows = train_rows(
        DataConfig(train_files=cfg.train_files, train_max_samples=cfg.max_questions, seed=cfg.seed)
    )
    uids = [uid_of(r) for r in rows]
    sampling = SamplingParams(temperature=cfg.temperature)
    with (
        asyncio.Runner() as runner,
        open_retriever(cfg.retriever, runner, retriever) as retr,
        tqdm(total=len(rows) * cfg.n, desc="pass rates", unit="sample") as bar,
    ):
        torch.manual_seed(cfg.seed)
        out = runner.run(
            rollout(
                HFEngine(model, tokenizer),
                tokenizer,
                retr,
                prompt_ids(tokenizer, rows),
                ProtocolConfig.from_yaml(cfg.protocol),
                sampling,
                uids=uids,
                n=cfg.n,
                on_done=lambda *_: bar.update(),
            )
        )
    em = [s["em"] for s in score_rollout(tokenizer, rows, out.trajectories, cfg.n, {})]
    per_question = np.array(em).reshape(len(rows), cfg.n).mean(axis=1)
    failed = np.array([t.num_retrieval_failures for t in out.trajectories]).reshape(len(rows), cfg.n)
    unrated = {u for u, f in zip(uids, failed.sum(axis=1), strict=True) if f}
    rates = {u: p for u, p in zip(uids, per_question.tolist(), strict=True) if u not in unrated}
    return rates, [u for u in uids if u in unrated]


def choose(rates: dict[str, float], cfg: SelectConfig) -> tuple[set[str], bool]:
    """The questions to keep, and whether that is the ``min_keep`` fallback (every rated question)."""
    keep = {uid for uid, p in rates.items() if cfg.min_pass < p < cfg.max_pass}
    if len(keep) < cfg.min_keep:
        return set(rates), True
    return keep, False


def select(cfg: SelectConfig, retriever: Retriever | None = None) -> Path:
    """Write the rows of ``train_files`` whose pass rate is in (min_pass, max_pass) to ``cfg.out``.

    Nothing is kept between runs: a killed pass is rerun from the start, and its sampling is a function
    of ``seed``, so the rerun writes what an uninterrupted run would. Both files are written to a
    temporary name and renamed, the report first (an older parquet removed before it): a kill never
    leaves a partial parquet, and a parquet always has its own report beside it.
    """
    if not cfg.model or not cfg.out:
        raise ValueError("select needs model= and out=")
    rates, unclassified = pass_rates(cfg, retriever)
    keep, fallback = choose(rates, cfg)
    table = pq.read_table(cfg.train_files)
    rows = read_parquet(cfg.train_files)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "config": to_dict(cfg),
        "selected": len(keep),
        "fallback": fallback,
        "unclassified": len(unclassified),
        "unclassified_uids": unclassified,
        "pass_rates": rates,
    }
    report_path, tmp = out.with_suffix(".pass_rates.json"), out.with_name(f".{out.name}.tmp")
    out.unlink(missing_ok=True)  # an older parquet must not stand beside the new report
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(report_path)
    pq.write_table(table.take([i for i, r in enumerate(rows) if uid_of(r) in keep]), tmp)
    tmp.replace(out)
    never, always = sum(p == 0 for p in rates.values()), sum(p == 1 for p in rates.values())
    print(
        f"[select] {len(rates)} rated questions × {cfg.n} samples: {never} never solved, {always} always, "
        f"{len(keep)} kept ({cfg.min_pass} < pass rate < {cfg.max_pass}) -> {out}"
    )
    if fallback:
        print(
            f"[select] fewer than min_keep={cfg.min_keep} questions in bounds: kept all {len(keep)} rated "
            "questions instead (fallback: the start policy solves almost none or almost all)",
            flush=True,
        )
    if unclassified:
        print(
            f"[select] {len(unclassified)} questions had a failed search and were not classified; "
            "rerun when the retriever is up",
            flush=True,
        )
    return out


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(SelectConfig, __doc__.splitlines()[0], None, argv)
    if not cfg.model or not cfg.out:
        die("model=<HF folder> and out=<parquet> are required", 2)
    out = select(cfg)
    if json.loads(out.with_suffix(".pass_rates.json").read_text())["unclassified"]:
        raise SystemExit(REFUSED_EXIT)  # a pipeline must not train on a partial selection


if __name__ == "__main__":
    main()
