"""LoRA SFT with LLaMA-Factory, in-process (so our template is registered), then merge to an HF folder.

    python -m sft.train --config configs/sft/tiny.yaml [llamafactory.learning_rate=1e-3 ...]

LLaMA-Factory looks templates up in a Python registry; ``llamafactory-cli`` runs in a fresh process
that has never heard of ours, so this launcher registers ``search_r1`` (``sft.template``) and then
calls LLaMA-Factory's own ``run_exp``/``export_model`` with the preset's arguments.

Several GPUs: LLaMA-Factory trains on more than one visible GPU only as a distributed launch
("Please launch distributed training"), so with more than one GPU (``CUDA_VISIBLE_DEVICES`` picks
them) this launcher re-runs itself under torchrun, one rank per GPU; every rank registers the template
and calls ``run_exp``. The merge runs once, in this (non-distributed) process after torchrun returns.
Launched by hand under torchrun (e.g. several nodes), training runs in place and rank 0 merges.

Resume: LLaMA-Factory continues from the newest ``checkpoint-*`` in the adapter folder when
``overwrite_output_dir`` is false (our default), so rerunning after a crash picks up where it stopped.
The merged model goes to ``<run_dir>/merged`` (safetensors + tokenizer with its original chat
template): the path ``train_ppo.sh`` and ``eval.sh`` take.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from search_r1.config import entry_point, parse_config
from sft.config import DEFAULT_CONFIG, SFTConfig
from sft.export import DATASET_NAME
from sft.template import TEMPLATE_NAME, register_template


def lf_train_args(cfg: SFTConfig) -> dict[str, Any]:
    """The preset's LLaMA-Factory arguments with model, data, template and output filled in."""
    return {
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "overwrite_output_dir": False,
        "report_to": "none",
        **cfg.llamafactory,
        "model_name_or_path": cfg.model,
        "dataset": DATASET_NAME,
        "dataset_dir": str(cfg.dataset_dir),
        "template": TEMPLATE_NAME,
        "output_dir": str(cfg.adapter_dir),
    }


def lf_export_args(cfg: SFTConfig) -> dict[str, Any]:
    return {
        "model_name_or_path": cfg.model,
        "adapter_name_or_path": str(cfg.adapter_dir),
        "template": TEMPLATE_NAME,
        "finetuning_type": "lora",
        "export_dir": str(cfg.merged_dir),
        "export_size": 5,
        "export_legacy_format": False,
        "trust_remote_code": bool(cfg.llamafactory.get("trust_remote_code", False)),
    }


def train(cfg: SFTConfig) -> Path:
    """Run the LoRA (or full) fine-tune; returns the folder with the adapter/checkpoints."""
    from llamafactory.train.tuner import run_exp

    register_template(AutoTokenizer.from_pretrained(cfg.model))
    run_exp(lf_train_args(cfg))
    return cfg.adapter_dir


def merge(cfg: SFTConfig) -> Path:
    """Merge the adapter into the base weights (a full fine-tune is copied as is)."""
    from llamafactory.train.tuner import export_model

    if cfg.merged_dir.exists():
        shutil.rmtree(cfg.merged_dir)
    if lf_train_args(cfg)["finetuning_type"] != "lora":
        shutil.copytree(cfg.adapter_dir, cfg.merged_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
        return cfg.merged_dir
    register_template(AutoTokenizer.from_pretrained(cfg.model))
    export_model(lf_export_args(cfg))
    return cfg.merged_dir


def torchrun_command(argv: Sequence[str], gpus: int, env: Mapping[str, str]) -> list[str] | None:
    """The command that re-runs ``sft.train`` with ``argv`` under torchrun, one rank per GPU, or None
    when this process trains itself: at most one GPU, or already a rank of a distributed launch.

    The ranks get ``merge=false``: the merge is one process's job, done after they all finish.
    """
    if gpus <= 1 or "WORLD_SIZE" in env or "LOCAL_RANK" in env:
        return None
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
    return [*launcher, "-m", "sft.train", *argv, "merge=false"]


@entry_point
def main(argv: list[str] | None = None) -> None:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(SFTConfig, "LoRA SFT with LLaMA-Factory, then merge.", DEFAULT_CONFIG, argv)
    command = torchrun_command(argv, torch.cuda.device_count(), os.environ)
    if command is None:
        train(cfg)
    else:
        print(f"[sft.train] {torch.cuda.device_count()} GPUs: {' '.join(command)}", flush=True)
        if (code := subprocess.run(command, check=False).returncode) != 0:
            raise SystemExit(code)
    if cfg.merge and int(os.environ.get("RANK", "0")) == 0:
        print(f"[sft.train] merged model: {merge(cfg)}")


if __name__ == "__main__":
    main()
