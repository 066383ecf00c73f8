"""Real LLaMA-Factory runs: argument parsing of every preset (fast) and a LoRA train + merge (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from agent_fixtures import tiny_qwen2
from sft_helpers import build_tokenizer
from test_sft_export import oracle_trajectories
from transformers import AutoModelForCausalLM, AutoTokenizer

import sft.train as sft_train
from search_r1.config import load_config
from search_r1.paths import CONFIG_DIR, REPO_ROOT
from sft.config import SFTConfig
from sft.export import export
from sft.train import lf_train_args, merge, torchrun_command, train

PRESETS = sorted((CONFIG_DIR / "sft").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_passes_llamafactory_argument_parsing(preset: Path, tmp_path):
    """LLaMA-Factory's own parser accepts every key and value of each preset.

    transformers refuses bf16 on a machine without a GPU ("Your setup doesn't support bf16/gpu"), so a
    bf16 preset is parsed once as written (that exact refusal is the only error allowed) and once with
    ``use_cpu`` — everything else (flash-attention, cutoff, LoRA, data, template) is checked for real.
    """
    from llamafactory.hparams import get_train_args

    cfg = load_config(SFTConfig, preset, [f"run_dir={tmp_path}"])
    args = lf_train_args(cfg)
    if args.get("bf16") and not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bf16/gpu"):
            get_train_args(args)
        args = args | {"bf16": False, "use_cpu": True}
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
    # the method is LoRA; the tiny preset fine-tunes all weights (its tag embeddings are untrained)
    assert finetuning_args.finetuning_type == ("full" if preset.stem == "tiny" else "lora")
    assert data_args.template == "search_r1" and data_args.dataset == ["search_r1_sft"]
    assert data_args.cutoff_len == cfg.llamafactory["cutoff_len"]
    assert training_args.output_dir == str(cfg.adapter_dir)
    if preset.stem == "qwen2.5-3b-instruct":
        assert model_args.flash_attn == "fa2" and cfg.llamafactory["bf16"]
        assert data_args.cutoff_len >= 4096  # prompt + four searches with full observations


def test_several_gpus_relaunch_under_torchrun_with_one_rank_each():
    """LLaMA-Factory refuses several visible GPUs outside a distributed launch: with 4 the launcher
    re-runs itself under torchrun, 4 ranks, same arguments, and the ranks do not merge."""
    argv = ["--config", "configs/sft/qwen2.5-3b-instruct.yaml", "llamafactory.learning_rate=1e-4"]
    assert torchrun_command(argv, 4, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
        "-m", "sft.train", *argv, "merge=false",
    ]  # fmt: skip


@pytest.mark.parametrize("gpus", [0, 1])
def test_no_relaunch_on_cpu_or_one_gpu(gpus):
    assert torchrun_command(["--config", "x.yaml"], gpus, {}) is None


@pytest.mark.parametrize("var", ["WORLD_SIZE", "LOCAL_RANK"])
def test_no_relaunch_inside_a_distributed_launch(var):
    assert torchrun_command([], 8, {var: "0"}) is None


def lora_run(world, tmp_path: Path) -> tuple[AutoTokenizer, Path, list[str]]:
    """A tiny Qwen2 base model, its oracle SFT set exported, and the overrides of a short LoRA run."""
    tok_dir = build_tokenizer(world, tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    tiny_qwen2(tok).save_pretrained(tok_dir)
    overrides = [
        f"model={tok_dir}",
        f"run_dir={tmp_path / 'run'}",
        "llamafactory.num_train_epochs=2",
        "llamafactory.save_steps=2",
        "llamafactory.per_device_train_batch_size=4",
        "llamafactory.finetuning_type=lora",
        "llamafactory.lora_rank=8",
        "llamafactory.lora_alpha=16",
        "llamafactory.lora_target=all",
    ]
    cfg = load_config(SFTConfig, CONFIG_DIR / "sft" / "tiny.yaml", overrides)
    trajs = [t for t in oracle_trajectories(world, tok) if t.finish_reason == "answer"]
    export(trajs, tok, cfg.dataset_dir)
    return tok, tok_dir, overrides


@pytest.mark.slow
def test_sft_train_runs_as_a_torchrun_rank(world, tmp_path):
    """What each rank of a multi-GPU launch runs: ``sft.train`` under torchrun (one CPU rank here)
    registers the template, trains with LLaMA-Factory inside the process group, and rank 0 merges."""
    tok, _, overrides = lora_run(world, tmp_path)
    overrides += ["llamafactory.max_steps=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    cmd += ["-m", "sft.train", "--config", str(CONFIG_DIR / "sft" / "tiny.yaml"), *overrides]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "distributed training: True" in proc.stdout + proc.stderr  # a rank, not a plain process
    run = tmp_path / "run"
    state = json.loads((run / "lora" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and (run / "lora" / "adapter_model.safetensors").exists()
    assert AutoTokenizer.from_pretrained(run / "merged").chat_template == tok.chat_template
    AutoModelForCausalLM.from_pretrained(run / "merged")


@pytest.mark.slow
def test_lora_sft_with_llamafactory_then_merge_loads(world, tmp_path):
    tok, tok_dir, overrides = lora_run(world, tmp_path)
    cfg = load_config(SFTConfig, CONFIG_DIR / "sft" / "tiny.yaml", overrides)

    train(cfg)
    state = json.loads((cfg.adapter_dir / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert (cfg.adapter_dir / "adapter_model.safetensors").exists()
    assert state["global_step"] > 0 and all(x == x for x in losses)

    merged = merge(cfg)
    model = AutoModelForCausalLM.from_pretrained(merged)
    merged_tok = AutoTokenizer.from_pretrained(merged)
    assert merged_tok.chat_template == tok.chat_template  # the template was not replaced
    assert merged_tok.eos_token == tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(tok_dir)
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), base.state_dict().values(), strict=True)
    )
    assert changed, "merging the adapter must change the weights"


@pytest.mark.slow
def test_two_devices_train_as_two_ranks_then_merge_once(world, tmp_path, monkeypatch):
    """``main`` seeing two GPUs relaunches under torchrun (two CPU ranks stand in for the GPUs: each
    child sees no GPU, so it trains in place) and merges once, in this process, after the ranks."""
    _, _, overrides = lora_run(world, tmp_path)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)
    merges = []
    monkeypatch.setattr(sft_train, "merge", lambda cfg: merges.append(cfg.merged_dir) or cfg.merged_dir)
    sft_train.main(
        ["--config", str(CONFIG_DIR / "sft" / "tiny.yaml"), *overrides, "llamafactory.max_steps=2"]
    )
    state = json.loads((tmp_path / "run" / "lora" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and merges == [tmp_path / "run" / "merged"]
