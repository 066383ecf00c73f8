"""The evaluation harness end to end, in miniature: real retrieval server (BM25 over the world),
a toy HF model saved to disk, every output file checked; plus modes, compare and failure paths."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from agent_fixtures import toy_model, toy_tokenizer  # noqa: E402

from search_r1.agent.protocol import ProtocolConfig  # noqa: E402
from search_r1.config import load_config  # noqa: E402
from search_r1.data.schema import read_parquet  # noqa: E402
from search_r1.eval.compare import main as compare_main  # noqa: E402
from search_r1.eval.run import EvalConfig, evaluate  # noqa: E402
from search_r1.paths import CONFIG_DIR, REPO_ROOT  # noqa: E402
from search_r1.rewards.metrics import exact_match  # noqa: E402

N = 7  # not a multiple of the batch size: the tail must be evaluated too


@pytest.fixture(scope="module")
def toy_model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy_model")
    tok = toy_tokenizer()
    toy_model(tok, max_steps=5).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def retriever_url(world, tmp_path_factory):
    from search_r1.retrieval.build import build_index
    from search_r1.retrieval.config import BuildConfig, ServerConfig
    from search_r1.retrieval.local import serve_in_thread
    from search_r1.retrieval.searchers import load_retriever

    root = tmp_path_factory.mktemp("bm25")
    index = build_index(BuildConfig(corpus=str(world.corpus), out_dir=str(root / "index"), backends=["bm25"]))
    cfg = ServerConfig(index_dir=str(index), port=0, backend="bm25")
    with serve_in_thread(cfg, load_retriever(cfg)) as url:
        yield url


def _cfg_args(world, toy_model_dir, out: Path, url: str) -> list[str]:
    return [
        f"data=[{world.test}]",
        f"engine.model={toy_model_dir}",
        "engine.device=cpu",
        "engine.max_batch_size=4",
        f"max_examples={N}",
        f"retriever_url={url}",
        f"out_dir={out}",
        "agent.max_turn_tokens=24",
        "agent.max_response_tokens=160",
    ]


def _cfg(world, toy_model_dir, out: Path, url: str, **kw) -> EvalConfig:
    overrides = _cfg_args(world, toy_model_dir, out, url) + [f"{k}={v}" for k, v in kw.items()]
    return load_config(EvalConfig, CONFIG_DIR / "eval" / "default.yaml", overrides)


def _check_outputs(out: Path, n: int, mode: str) -> dict:
    results = json.loads((out / "results.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert results["mode"] == mode and results["metrics"]["overall"]["n"] == n == len(preds)
    assert len({p["uid"] for p in preds}) == n
    assert results["config"]["temperature"] == 0.0 and results["git_commit"]
    for p in preds:  # each stored metric is the metric of the stored prediction
        assert p["metrics"]["em"] == exact_match(p["prediction"], p["golds"])
        assert p["trajectory"]["response_ids"] and len(p["trajectory"]["response_mask"]) == len(
            p["trajectory"]["response_ids"]
        )
    for k in ("em", "f1", "rouge_l", "cover_em"):
        assert 0.0 <= results["metrics"]["overall"][k] <= 1.0 and k in results["metrics"]["definitions"]
    report = (out / "report.md").read_text()
    assert "| **overall** |" in report and "How each metric is computed" in report
    for png in ("em_by_searches.png", "search_counts.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return results


def test_eval_sh_in_miniature(world, toy_model_dir, retriever_url, tmp_path) -> None:
    """``bash eval.sh`` (the user's entry point) on the world test split against a live retriever."""
    out = tmp_path / "run"
    args = _cfg_args(world, toy_model_dir, out, retriever_url)
    env = os.environ | {"WANDB_MODE": "disabled"}
    proc = subprocess.run(
        ["bash", "eval.sh", *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[eval] 7 examples" in proc.stdout
    results = _check_outputs(out, N, "search")
    rows = read_parquet(world.test)[:N]
    assert {r["data_source"] for r in rows} == set(results["metrics"]["by_source"])


@pytest.mark.parametrize("mode", ["direct", "rag"])
def test_baseline_modes(world, toy_model_dir, retriever_url, tmp_path, mode) -> None:
    out = asyncio.run(evaluate(_cfg(world, toy_model_dir, tmp_path / mode, retriever_url, mode=mode)))
    results = _check_outputs(out, N, mode)
    assert results["metrics"]["overall"]["searches"] == 0.0  # baselines never search
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert all(len(p["trajectory"]["turns"]) == 1 for p in preds)
    tok = AutoTokenizer.from_pretrained(toy_model_dir)
    prompt = tok.decode(preds[0]["trajectory"]["prompt_ids"])
    assert ("Doc 1(Title:" in prompt) == (mode == "rag") and preds[0]["question"] in prompt


def test_compare_merges_runs(world, toy_model_dir, retriever_url, tmp_path, capsys) -> None:
    a = asyncio.run(
        evaluate(_cfg(world, toy_model_dir, tmp_path / "a", retriever_url, mode="direct", name="base"))
    )
    b = asyncio.run(evaluate(_cfg(world, toy_model_dir, tmp_path / "b", retriever_url, name="agent")))
    compare_main(
        [str(a), str(b / "results.json"), "--names", "baseline", "SFT + RL", "--out", str(tmp_path / "cmp")]
    )
    table = (tmp_path / "cmp" / "compare.md").read_text()
    em_b = json.loads((b / "results.json").read_text())["metrics"]["overall"]["em"]
    assert "| baseline | direct | 7 |" in table and f"| SFT + RL | search | 7 | {em_b:.4f} |" in table
    assert set(json.loads((tmp_path / "cmp" / "compare.json").read_text())) == {"baseline", "SFT + RL"}
    assert "EM world" in capsys.readouterr().out


def test_unreachable_retriever_is_a_clear_error(world, toy_model_dir, tmp_path, free_port) -> None:
    cfg = _cfg(world, toy_model_dir, tmp_path / "x", f"http://127.0.0.1:{free_port}", retriever_timeout=0.5)
    with pytest.raises(SystemExit, match="no retriever at"):
        asyncio.run(evaluate(cfg))


def test_eval_default_agent_is_the_tiny_preset() -> None:
    cfg = load_config(EvalConfig, CONFIG_DIR / "eval" / "default.yaml")
    assert cfg.agent == ProtocolConfig.from_yaml(CONFIG_DIR / "agent" / "tiny.yaml")
    assert cfg.temperature == 0.0 and cfg.max_examples == -1


@pytest.mark.slow
def test_eval_sh_defaults_on_the_tiny_base_model(tiny_model, retriever_url, tmp_path) -> None:
    """``bash eval.sh`` with the default model and data (the world's tiny base model, test split)."""
    out = tmp_path / "default"
    args = [f"retriever_url={retriever_url}", f"out_dir={out}", "max_examples=16"]
    proc = subprocess.run(
        ["bash", "eval.sh", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _check_outputs(out, 16, "search")
    assert Path(results["config"]["engine"]["model"]) == tiny_model


def test_wandb_logging_offline(world, toy_model_dir, retriever_url, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _cfg(
        world, toy_model_dir, tmp_path / "w", retriever_url, mode="direct", wandb="true", max_examples=3
    )
    asyncio.run(evaluate(cfg))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_lora_adapter_is_merged_at_load(toy_model_dir, tmp_path) -> None:
    """engine.adapter: the adapter's weights change the model the engine runs (not silently ignored)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from search_r1.agent.engines.hf import HFEngine

    base = AutoModelForCausalLM.from_pretrained(toy_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    x = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        expected = peft_model(x).logits
    engine = HFEngine.from_config(toy_model_dir, adapter=str(tmp_path / "adapter"), device="cpu")
    plain = HFEngine.from_config(toy_model_dir, device="cpu")
    with torch.no_grad():
        assert torch.allclose(engine.model(x).logits, expected, atol=1e-4)
        assert not torch.allclose(plain.model(x).logits, expected, atol=1e-3)
