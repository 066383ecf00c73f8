"""A verl FSDP actor checkpoint -> a Hugging Face folder that ``eval.sh`` and ``sft.evaluate`` load.

    python -m search_r1.rl.export ckpt_dir=outputs/runs/ppo/<experiment> [out=<folder>] [step=-1] [force=true]

verl saves what it needs to resume, not a model: every rank's shard of the weights
(``global_step_<N>/actor/model_world_size_<W>_rank_<r>.pt``), ``fsdp_config.json`` and the config and
tokenizer under ``huggingface/``. This finds the checkpoint (the latest ``global_step_<N>`` by default)
and runs verl's own FSDP model merger on it in-process (the code behind
``python -m verl.model_merger merge --backend fsdp``), so the shards are joined exactly as verl lays
them out. The merger writes bf16 safetensors, the config and the tokenizer. It writes to a temporary
sibling folder that is renamed at the end, so an interrupted export never leaves a half model at ``out``.

A LoRA actor is refused: verl's merger writes the base weights and the adapter separately, and
evaluating the base weights alone would score the model before RL.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.config import die, entry_point, parse_config

STEP_DIR = re.compile(r"global_step_(\d+)")


@dataclass
class ExportConfig:
    ckpt_dir: str = field(
        default="",
        metadata={"help": "verl's trainer.default_local_dir of the run: the folder holding global_step_<N>/"},
    )
    out: str = field(default="", metadata={"help": "HF folder to write ('' = <ckpt_dir>/merged)"})
    step: int = field(default=-1, metadata={"help": "the global step to export (-1 = the latest)"})
    force: bool = field(default=False, metadata={"help": "overwrite a model already at out"})


def actor_checkpoints(ckpt_dir: Path) -> dict[int, Path]:
    """Step -> ``global_step_<step>/actor`` for every complete actor checkpoint under ``ckpt_dir``
    (``fsdp_config.json`` is the last file verl's rank 0 writes)."""
    found = {}
    for sub in ckpt_dir.iterdir():
        match = STEP_DIR.fullmatch(sub.name)
        if match and (sub / "actor" / "fsdp_config.json").is_file():
            found[int(match.group(1))] = sub / "actor"
    return found


def find_checkpoint(ckpt_dir: Path, step: int = -1) -> Path:
    """The actor folder of ``step`` (-1 = the latest); exits 2 with a one-line reason if there is none."""
    if not ckpt_dir.is_dir():
        die(f"no such folder: {ckpt_dir}", 2)
    found = actor_checkpoints(ckpt_dir)
    if not found:
        die(f"no verl checkpoint (global_step_<N>/actor/fsdp_config.json) in {ckpt_dir}", 2)
    if step == -1:
        return found[max(found)]
    if step not in found:
        die(f"no checkpoint of step {step} in {ckpt_dir} (steps: {sorted(found)})", 2)
    return found[step]


def holds_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def merge_actor(actor: Path, out: Path) -> None:
    """verl's FSDP model merger, in-process: joins the rank shards and saves model + tokenizer."""
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(actor),
        target_dir=str(out),
        hf_model_config_path=str(actor / "huggingface"),
    )
    merger = FSDPModelMerger(config)
    merger.merge_and_save()
    merger.cleanup()


def export(cfg: ExportConfig) -> Path:
    """Write the HF folder of the chosen checkpoint to ``out`` (skipped when it already holds a model,
    unless ``force``); returns ``out``."""
    if not cfg.ckpt_dir:
        die("ckpt_dir=<folder holding global_step_<N>/> is required", 2)
    ckpt_dir = Path(cfg.ckpt_dir)
    actor = find_checkpoint(ckpt_dir, cfg.step)
    out = Path(cfg.out) if cfg.out else ckpt_dir / "merged"
    if holds_model(out) and not cfg.force:
        print(f"[export] {out} already holds a model; force=true to overwrite it")
        return out
    if (actor / "lora_train_meta.json").is_file():
        die(f"{actor} is a LoRA checkpoint; only full-weight actors are exported", 2)
    print(f"[export] {actor} -> {out}")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merge_actor(actor, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(
        ExportConfig, "Export a verl FSDP actor checkpoint as a Hugging Face folder.", None, argv
    )
    print(f"[export] model: {export(cfg)}")


if __name__ == "__main__":
    main()
