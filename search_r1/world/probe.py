"""What a base model can do before SFT: answer from memory, and read an answer out of passages.

    python -m search_r1.world.probe model=outputs/models/tiny-base

* **closed book** — the world's questions with the experiment's prompt and no passages, split by
  whether the subject is famous (memorised) or not: the gap is what makes searching worth learning.
  The same replies say how often the model starts with a search instead (its first turn only: the
  probe has no retriever), famous subjects apart, since an instruct model searches what it does not
  know; and, since RL samples, how likely the first reply token is to open a search (``<think>``:
  every search turn starts with it, every closed-book answer with ``<answer>``);
* **recall in a thought** — the famous subjects again, the reply started for the model as
  ``<think> Question: q Answer:``: the form in which the SFT teacher answers from memory
  (``sft.oracle``), so a fact the model knows is still usable once it thinks before answering;
* **reading** — single-hop questions about entities the model does *not* know, with the gold
  passage and retriever-like distractors in the prompt (``rag`` template): the copy skill that
  SFT builds on. Famous subjects are left out so memory cannot stand in for reading.

All are greedy EM (normalised exact match, as the reward), scored on the final ``<answer>``; a reply
that searches scores 0 in the closed-book EM.
The tiny-model build records them in ``build_info.json``; ``tests/test_tiny_model.py`` checks them.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.agent.engines.base import SamplingParams
from search_r1.agent.engines.hf import HFEngine
from search_r1.agent.prompt import render_prompt
from search_r1.agent.protocol import (
    ANSWER_CLOSE,
    SEARCH_CLOSE,
    THINK_OPEN,
    final_answer,
    format_docs,
    parse_action,
)
from search_r1.config import entry_point, parse_config
from search_r1.data.corpus import iter_corpus
from search_r1.paths import MODELS_DIR, WORLD_DIR
from search_r1.rewards.metrics import exact_match
from search_r1.world.build import World
from search_r1.world.pretrain_data import shown_docs


@dataclass
class ProbeConfig:
    model: str = field(default=str(MODELS_DIR / "tiny-base"), metadata={"help": "HF model folder"})
    world_dir: str = field(default=str(WORLD_DIR), metadata={"help": "a built world"})
    splits: list[str] = field(default_factory=lambda: ["dev"], metadata={"help": "question splits to probe"})
    n_docs: int = field(default=3, metadata={"help": "passages per reading question (gold + distractors)"})
    seed: int = field(default=0, metadata={"help": "distractor choice and order"})


@dataclass
class ProbeResult:
    closed_book_known: float  # EM, famous subjects, no passages
    closed_book_unknown: float  # EM, other subjects, no passages
    thought_recall: float  # EM, famous subjects, reply prefilled with "<think> Question: q Answer:"
    well_formed: float  # share of closed-book replies whose first action is an answer or a search
    search_known: float  # share of closed-book replies that search, famous subjects
    search_unknown: float  # share of closed-book replies that search, other subjects
    p_search_known: float  # mean probability that the first reply token opens a search, famous subjects
    p_search_unknown: float  # the same, other subjects
    reading: float  # EM, single-hop unknown subjects, passages in the prompt
    counts: dict[str, int]


def _greedy_replies(model: Path, prompts: list[list[dict[str, str]]], starts: list[str]) -> list[str]:
    """Greedy replies to chat prompts, each continuing its ``starts`` text (the reply's opening)."""
    engine = HFEngine.from_config(model, device="cpu", dtype="float32", max_batch_size=64)
    tok = engine.tokenizer
    sampling = SamplingParams(max_new_tokens=96, temperature=0.0, stop=[ANSWER_CLOSE, SEARCH_CLOSE])

    async def run() -> list[str]:
        ids = [
            list(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False))
            + tok(start, add_special_tokens=False)["input_ids"]
            for p, start in zip(prompts, starts, strict=True)
        ]
        outs = await asyncio.gather(*(engine.generate(list(i), sampling) for i in ids))
        return [tok.decode(o.token_ids, skip_special_tokens=True) for o in outs]

    return asyncio.run(run())


def search_probabilities(model: Path, prompts: list[list[dict[str, str]]]) -> list[float]:
    """For each chat prompt, the probability that the first reply token is ``<think>``: what sampling
    at temperature 1 starts with (a search turn opens with it, a closed-book answer does not)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    think = tok.convert_tokens_to_ids(THINK_OPEN)
    probs = []
    with torch.inference_mode():
        for p in prompts:
            ids = tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
            probs.append(lm(torch.tensor([list(ids)])).logits[0, -1].softmax(-1)[think].item())
    return probs


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _recalled(reply: str) -> str:
    """The answer a prefilled ``… Answer:`` thought goes on to state: up to the line, sentence or
    thought's end."""
    return re.split(r"\n|</think>|\.(?:\s|$)", reply, maxsplit=1)[0]


def _em(pairs: list[tuple[str, str]], answer_of: Callable[[str], str | None] = final_answer) -> float:
    """Mean EM of (reply, gold answer) pairs, the answer taken from the reply by ``answer_of``
    (default: the final ``<answer>``); NaN for none."""
    return sum(exact_match(answer_of(r), a) for r, a in pairs) / len(pairs) if pairs else float("nan")


def _search_share(pairs: list[tuple[str, str]]) -> float:
    return sum(parse_action(r).kind == "search" for r, _ in pairs) / len(pairs) if pairs else float("nan")


def probe(cfg: ProbeConfig) -> ProbeResult:
    world = World(Path(cfg.world_dir))
    template = json.loads(world.manifest.read_text())["config"]["prompt_template"]
    questions = [json.loads(line) for line in world.questions.open(encoding="utf-8")]
    questions = [q for q in questions if q["split"] in cfg.splits]
    if not questions:
        raise ValueError(f"no questions in splits {cfg.splits} of {world.root}")
    docs = {d.id: d for d in iter_corpus(world.corpus)}
    kb_docs = [d for d in docs.values() if d.id.startswith("kb-")]
    rng = random.Random(cfg.seed)

    readable = [q for q in questions if q["hops"] == 1 and not q["known"]]
    famous = [q for q in questions if q["known"]]
    prompts = [render_prompt(q["question"], template) for q in questions]
    starts = [""] * len(questions)
    for q in readable:
        shown = shown_docs([docs[d] for d in q["support"]], q["entities"], kb_docs, cfg.n_docs, rng)
        prompts.append(render_prompt(q["question"], "rag", information=format_docs(shown)))
    starts += [""] * len(readable)
    prompts += [render_prompt(q["question"], template) for q in famous]
    starts += [f"{THINK_OPEN} Question: {q['question']} Answer:" for q in famous]
    replies = _greedy_replies(Path(cfg.model), prompts, starts)
    n_closed, n_read = len(questions), len(readable)
    closed, reading = replies[:n_closed], replies[n_closed : n_closed + n_read]
    recalled = replies[n_closed + n_read :]

    p_search = search_probabilities(Path(cfg.model), prompts[:n_closed])
    known = [(r, q["answer"]) for r, q in zip(closed, questions, strict=True) if q["known"]]
    unknown = [(r, q["answer"]) for r, q in zip(closed, questions, strict=True) if not q["known"]]
    return ProbeResult(
        closed_book_known=_em(known),
        closed_book_unknown=_em(unknown),
        thought_recall=_em([(r, q["answer"]) for r, q in zip(recalled, famous, strict=True)], _recalled),
        well_formed=sum(parse_action(r).kind != "invalid" for r in closed) / len(closed),
        search_known=_search_share(known),
        search_unknown=_search_share(unknown),
        p_search_known=_mean([p for p, q in zip(p_search, questions, strict=True) if q["known"]]),
        p_search_unknown=_mean([p for p, q in zip(p_search, questions, strict=True) if not q["known"]]),
        reading=_em([(r, q["answer"]) for r, q in zip(reading, readable, strict=True)]),
        counts={"known": len(known), "unknown": len(unknown), "reading": len(readable)},
    )


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ProbeConfig, __doc__.splitlines()[0], None, argv)
    r = probe(cfg)
    print(
        f"[probe] {cfg.model} on {'+'.join(cfg.splits)}: closed-book EM known {r.closed_book_known:.3f} "
        f"(n={r.counts['known']}), unknown {r.closed_book_unknown:.3f} (n={r.counts['unknown']}); "
        f"recall in a thought {r.thought_recall:.3f}; "
        f"reading EM {r.reading:.3f} (n={r.counts['reading']}, {cfg.n_docs} passages); "
        f"well-formed {r.well_formed:.3f}; searches known {r.search_known:.3f}, unknown {r.search_unknown:.3f} "
        f"(greedy; P(search first) known {r.p_search_known:.3f}, unknown {r.p_search_unknown:.3f})"
    )


if __name__ == "__main__":
    main()
