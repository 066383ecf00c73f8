"""The tiny base model's cache: the shipped build belongs to the committed config, and the build
itself still runs end to end (in miniature) so a config change can always be rebuilt."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from search_r1.config import load_config
from search_r1.paths import CONFIG_DIR
from search_r1.world.setup import SHIPPED_TINY_MODEL, ensure_tiny_model
from search_r1.world.tiny_model import TinyModelConfig, build_tiny_model, cache_key, is_cached


def committed_config(world, out_dir: Path) -> TinyModelConfig:
    return load_config(
        TinyModelConfig,
        CONFIG_DIR / "world" / "tiny_model.yaml",
        [f"world_dir={world.root}", f"out_dir={out_dir}"],
    )


def test_shipped_build_matches_the_committed_config_and_world(world):
    """Editing configs/world/tiny_model.yaml (or the world) without rebuilding breaks this pairing."""
    info = json.loads((SHIPPED_TINY_MODEL / "build_info.json").read_text())
    assert info["key"] == cache_key(committed_config(world, SHIPPED_TINY_MODEL), world)
    assert (SHIPPED_TINY_MODEL / "model.safetensors").stat().st_size > 1_000_000


def test_ensure_copies_the_shipped_build_only_when_keys_match(world, tmp_path):
    out = ensure_tiny_model(world, tmp_path / "copy")
    assert is_cached(committed_config(world, out))
    assert (out / "model.safetensors").read_bytes() == (SHIPPED_TINY_MODEL / "model.safetensors").read_bytes()

    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "build_info.json").write_text(json.dumps({"key": "not-this-config"}))
    assert not is_cached(committed_config(world, stale))


@pytest.mark.slow
def test_build_runs_all_three_phases_in_miniature(world, tmp_path, capsys):
    cfg = replace(
        committed_config(world, tmp_path / "mini"),
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        steps=24,
        copy_warmup_steps=6,
        drill_steps=6,
        warmup=2,
        lr=3e-3,
        reading_examples=40,
        reading_drills=40,
        copy_drills=40,
        closed_book_repeats=1,
        max_wiki_passages=10,
        threads=2,
    )
    out = build_tiny_model(cfg)
    info = json.loads((out / "build_info.json").read_text())
    assert info["key"] == cache_key(cfg, world) and is_cached(cfg)  # the build is keyed by its own recipe
    weights = (out / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert build_tiny_model(cfg) == out and f"[tiny-model] cached: {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == weights  # not rebuilt
    assert not is_cached(replace(cfg, lr=1e-3)) and is_cached(replace(cfg, threads=1))  # recipe, not threads
    assert len(info["losses"]) == 24 and info["loss_last_20"] < info["loss_first_20"]
    assert info["data_epoch"]["reading_drill"] == 40 and set(info["probe"]["counts"]) == {
        "known",
        "unknown",
        "reading",
    }
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32 and torch.isfinite(next(model.parameters())).all()

    with pytest.raises(ValueError, match="reading_drill"):
        build_tiny_model(replace(cfg, out_dir=str(tmp_path / "bad"), reading_drills=0, force=True))
