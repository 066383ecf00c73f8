"""Real LLaMA-Factory runs: argument parsing of every preset (fast) and a LoRA train + merge (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from agent_fixtures import tiny_qwen2
from sft_helpers import build_tokenizer
from test_sft_export import oracle_trajectories
from transformers import AutoModelForCausalLM, AutoTokenizer

from search_r1.config import load_config
from search_r1.paths import CONFIG_DIR
from sft.config import SFTConfig
from sft.export import export
from sft.train import lf_train_args, merge, train

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


@pytest.mark.slow
def test_lora_sft_with_llamafactory_then_merge_loads(world, tmp_path):
    tok_dir = build_tokenizer(world, tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    tiny_qwen2(tok).save_pretrained(tok_dir)

    cfg = load_config(
        SFTConfig,
        CONFIG_DIR / "sft" / "tiny.yaml",
        [
            f"model={tok_dir}",
            f"run_dir={tmp_path / 'run'}",
            "llamafactory.num_train_epochs=2",
            "llamafactory.save_steps=2",
            "llamafactory.per_device_train_batch_size=4",
            "llamafactory.finetuning_type=lora",
            "llamafactory.lora_rank=8",
            "llamafactory.lora_alpha=16",
            "llamafactory.lora_target=all",
        ],
    )
    trajs = [t for t in oracle_trajectories(world, tok) if t.finish_reason == "answer"]
    export(trajs, tok, cfg.dataset_dir)

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
