"""The smol preset: SmolLM2-135M-Instruct converts offline from its PyPI package and generates."""

from __future__ import annotations

import pytest

from search_r1.config import load_config
from search_r1.world.smol import SmolConfig, convert_smol, gguf_path


def test_gguf_is_found_inside_the_package():
    path = gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


@pytest.mark.slow
def test_converts_once_and_generates_offline():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert_smol(load_config(SmolConfig))
    assert (out / "config.json").exists() and any(out.glob("*.safetensors"))
    assert convert_smol(load_config(SmolConfig)) == out  # cached: the second call converts nothing

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert model.config.model_type == "llama" and 100e6 < model.num_parameters() < 200e6
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    print("smol says:", text)
    assert "Paris" in text
