"""The tiny base model of the embedded world: a Qwen2-architecture LM pretrained for a few minutes.

    python -m search_r1.world.tiny_model            # outputs/models/tiny-base (cached)

It writes fluent world text, answers in ``<answer>`` format, knows the famous entities' facts by
heart and is trained to read passages in its prompt (``python -m search_r1.world.probe`` measures
both), but has never seen the search protocol unless ``tool_demos`` is on (see ``pretrain_data``).
Training runs in up to three phases — copy drills alone, reading drills alone (``drill_steps``), then the whole mix — because
each skill forms only when it is trained alone first (``docs/benchmarks.md``, "learning to read").
The result is cached: a rebuild happens only when the world or this config changes
(``build_info.json`` holds the key, the loss curve, the time taken and the probe's numbers), and the
committed config's build ships with the repository (``search_r1.world.setup``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from search_r1.config import entry_point, parse_config, to_dict
from search_r1.data.corpus import iter_corpus
from search_r1.paths import CONFIG_DIR, MODELS_DIR, WORLD_DIR
from search_r1.world.build import World
from search_r1.world.pretrain_data import Example, build_examples
from search_r1.world.probe import ProbeConfig, probe
from search_r1.world.tokenizer import train_tokenizer

IGNORE = -100


@dataclass
class TinyModelConfig:
    world_dir: str = field(default=str(WORLD_DIR), metadata={"help": "a built world (search_r1.world.build)"})
    out_dir: str = field(default=str(MODELS_DIR / "tiny-base"), metadata={"help": "output HF folder"})
    seed: int = field(default=0, metadata={"help": "initialisation and data-order seed"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary (before the protocol tags)"})
    hidden_size: int = field(default=192, metadata={"help": "model width"})
    num_layers: int = field(default=4, metadata={"help": "transformer blocks"})
    num_heads: int = field(default=6, metadata={"help": "attention heads"})
    num_kv_heads: int = field(default=2, metadata={"help": "key/value heads (GQA as in Qwen2)"})
    intermediate_size: int = field(default=512, metadata={"help": "MLP width"})
    max_position: int = field(default=2048, metadata={"help": "context length"})
    steps: int = field(default=1600, metadata={"help": "optimizer steps, copy warm-up included"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate (cosine decay to 10%)"})
    warmup: int = field(default=30, metadata={"help": "linear warm-up steps"})
    closed_book_repeats: int = field(default=4, metadata={"help": "copies of each known fact per data epoch"})
    max_wiki_passages: int = field(default=100, metadata={"help": "Wikipedia passages in the LM mix"})
    reading_examples: int = field(
        default=4000, metadata={"help": "counterfactual reading questions per data epoch (never repeated)"}
    )
    reading_drills: int = field(
        default=0,
        metadata={
            "help": "passages followed by all the questions they answer, loss on the answers only, per "
            "data epoch: the dense signal reading needs (docs/benchmarks.md)"
        },
    )
    reading_docs: int = field(
        default=3, metadata={"help": "most passages in a reading prompt (the agent's topk)"}
    )
    copy_drills: int = field(default=1000, metadata={"help": "name-list repetitions per data epoch"})
    closed_book_drills: int = field(
        default=0,
        metadata={
            "help": "texts of 8 known facts as `Question: q Answer: a` lines per data epoch, loss on the "
            "answers: recall in the form of the agent's thoughts, not only right after the prompt"
        },
    )
    copy_warmup_steps: int = field(
        default=400,
        metadata={
            "help": "first steps on copy drills alone: copying attention forms there in ~300 steps, "
            "but not within 1,600 steps of the full mix (measured)"
        },
    )
    drill_steps: int = field(
        default=0,
        metadata={
            "help": "steps on reading drills alone after the copy warm-up: reading forms there (0.6 "
            "answer accuracy after 2,000 steps) but not when the drills are only part of the mix (measured)"
        },
    )
    tokenizer_wiki_passages: int = field(
        default=300,
        metadata={"help": "Wikipedia passages in the tokenizer's training text (the rest is world text)"},
    )
    tool_demos: int = field(
        default=0,
        metadata={
            "help": "tool-use demos per data epoch: the experiment's prompt over a counterfactual "
            "question, answered by one search and the answer read from its results"
        },
    )
    tool_demo_relations: list[str] = field(
        default_factory=list,
        metadata={"help": "single-hop relations the tool-use demos ask about (questions.SINGLE_HOP)"},
    )
    tool_demo_subject_share: float = field(
        default=1.0,
        metadata={
            "help": "share of subjects (by a hash of the name) whose tool-use demos search; the "
            "others decline (`<answer> unknown </answer>`)"
        },
    )
    threads: int = field(default=0, metadata={"help": "torch threads (0 = all cores)"})
    force: bool = field(default=False, metadata={"help": "rebuild even if the cache key matches"})


def cache_key(cfg: TinyModelConfig, world: World) -> str:
    params = to_dict(cfg)
    for k in ("world_dir", "out_dir", "force", "threads"):
        params.pop(k)
    blob = json.dumps(params, sort_keys=True) + world.manifest.read_text()
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_cached(cfg: TinyModelConfig) -> bool:
    info = Path(cfg.out_dir) / "build_info.json"
    world = World(Path(cfg.world_dir))
    return info.exists() and world.exists() and json.loads(info.read_text())["key"] == cache_key(cfg, world)


def encode(ex: Example, tok: PreTrainedTokenizerFast) -> tuple[list[int], list[int]]:
    """Token ids and labels; chat examples train only the assistant reply, as generation sees it,
    unless ``loss_on_prompt``; ``spans`` (plain text, or a reply with an observation in it) train
    only the pieces marked for it, each tokenised apart as the rollout tokenises turns."""
    if ex.prompt is None and not ex.spans:
        ids = tok(ex.target, add_special_tokens=False)["input_ids"] + [tok.pad_token_id]
        return ids, list(ids)
    prompt_ids = []
    if ex.prompt is not None:
        prompt_ids = list(
            tok.apply_chat_template(ex.prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        )
    end = tok.pad_token_id if ex.prompt is None else tok.eos_token_id
    if not ex.spans:
        reply = tok(ex.target, add_special_tokens=False)["input_ids"] + [end]
        ids = prompt_ids + reply
        return ids, list(ids) if ex.loss_on_prompt else [IGNORE] * len(prompt_ids) + reply
    ids, labels = list(prompt_ids), [IGNORE] * len(prompt_ids)
    for piece, trained in ex.spans:
        piece_ids = tok(piece, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        labels += piece_ids if trained else [IGNORE] * len(piece_ids)
    return ids + [end], labels + [end]


def _batches(data: list[tuple[list[int], list[int]]], batch_size: int, rng: random.Random):
    """Endless length-bucketed batches: shuffle, sort within windows, shuffle the batches."""
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        batches = []
        for w in range(0, len(order), batch_size * 32):
            window = sorted(order[w : w + batch_size * 32], key=lambda i: len(data[i][0]))
            batches += [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
        rng.shuffle(batches)
        yield from batches


def _collate(items: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), pad_id)
    labels = torch.full((len(items), width), IGNORE)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (x, y) in enumerate(items):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def tokenizer_texts(examples: list[Example], world: World, n_wiki: int) -> list[str]:
    """World text dominates, so entity names become single tokens (easy to memorise and to copy);
    a few Wikipedia passages give the common English sub-words."""
    texts = [
        e.prompt[0]["content"] + "\n" + e.target
        for e in examples
        if e.prompt is not None
        and e.kind not in ("tool_demo", "decline")  # same tokenizer with or without demos
    ]
    docs = list(iter_corpus(world.corpus))
    texts += [d.contents for d in docs if d.id.startswith("kb-")]
    texts += [d.contents for d in docs if not d.id.startswith("kb-")][:n_wiki]
    return texts


def build_tiny_model(cfg: TinyModelConfig) -> Path:
    out = Path(cfg.out_dir)
    world = World(Path(cfg.world_dir))
    if not world.exists():
        raise FileNotFoundError(f"no world at {world.root}: run `python -m search_r1.world.build` first")
    if not cfg.force and is_cached(cfg):
        print(f"[tiny-model] cached: {out}")
        return out
    start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)

    examples = build_examples(
        world,
        cfg.seed,
        cfg.reading_examples,
        cfg.reading_drills,
        cfg.reading_docs,
        cfg.copy_drills,
        cfg.closed_book_drills,
        tool_demos=cfg.tool_demos,
        tool_demo_relations=cfg.tool_demo_relations,
        tool_demo_subject_share=cfg.tool_demo_subject_share,
    )
    passages = [e for e in examples if e.kind == "passage"]
    wiki_cut = [
        e for e in passages if not e.target.startswith(tuple(json.loads(world.kb.read_text())["famous"]))
    ]
    dropped = set(map(id, wiki_cut[cfg.max_wiki_passages :]))
    mix = [e for e in examples if id(e) not in dropped]
    mix += [e for e in examples if e.kind == "closed_book"] * (cfg.closed_book_repeats - 1)
    counts = {
        k: sum(e.kind == k for e in mix)
        for k in (
            "passage",
            "closed_book",
            "closed_book_drill",
            "reading",
            "reading_drill",
            "copy",
            "tool_demo",
            "decline",
        )
    }
    print(f"[tiny-model] data epoch: {counts}")

    tok = train_tokenizer(tokenizer_texts(examples, world, cfg.tokenizer_wiki_passages), cfg.vocab_size)
    data = [encode(e, tok) for e in mix]
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            max_position_embeddings=cfg.max_position,
            tie_word_embeddings=True,
            bos_token_id=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    losses = []
    phases, end = [], 0  # (last step + 1, examples, their batches): copy warm-up, drills, the mix
    for n_steps, kind in (
        (cfg.copy_warmup_steps, "copy"),
        (cfg.drill_steps, "reading_drill"),
        (cfg.steps - cfg.copy_warmup_steps - cfg.drill_steps, None),
    ):
        pool = data if kind is None else [d for d, e in zip(data, mix, strict=True) if e.kind == kind]
        if n_steps > 0 and not pool:
            raise ValueError(f"{n_steps} steps on {kind!r} examples, but the mix has none: check the config")
        end += max(0, n_steps)
        phases.append((end, pool, _batches(pool, cfg.batch_size, rng)))
    bar = tqdm(range(cfg.steps), desc=f"[tiny-model] pretrain {n_params / 1e6:.1f}M params", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        _, pool, batches = next(p for p in phases if step < p[0])
        batch = _collate([pool[i] for i in next(batches)], tok.pad_token_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False, max_new_tokens=64
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    skills = probe(ProbeConfig(model=str(out), world_dir=str(world.root), splits=["train", "dev"]))
    info = {
        "key": cache_key(cfg, world),
        "config": to_dict(cfg),
        "params": n_params,
        "data_epoch": counts,
        "seconds": round(time.time() - start, 1),
        "loss_first_20": sum(losses[:20]) / 20,
        "loss_last_20": sum(losses[-20:]) / 20,
        "probe": asdict(skills),
        "losses": losses,
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=1))
    print(
        f"[tiny-model] {n_params / 1e6:.2f}M params, loss {info['loss_first_20']:.2f} -> {info['loss_last_20']:.2f}, "
        f"{info['seconds']:.0f}s -> {out}\n[tiny-model] train+dev EM: closed-book known {skills.closed_book_known:.3f}, "
        f"unknown {skills.closed_book_unknown:.3f}; reading {skills.reading:.3f} (python -m search_r1.world.probe)"
    )
    return out


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(
        TinyModelConfig, __doc__.splitlines()[0], CONFIG_DIR / "world" / "tiny_model.yaml", argv
    )
    build_tiny_model(cfg)


if __name__ == "__main__":
    main()
