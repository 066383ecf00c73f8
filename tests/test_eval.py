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
from search_r1.agent.trajectory import Trajectory  # noqa: E402
from search_r1.config import load_config  # noqa: E402
from search_r1.data.schema import read_parquet  # noqa: E402
from search_r1.eval.compare import main as compare_main  # noqa: E402
from search_r1.eval.run import EvalConfig, evaluate  # noqa: E402
from search_r1.paths import CONFIG_DIR, REPO_ROOT  # noqa: E402
from search_r1.rewards.metrics import cover_exact_match, exact_match  # noqa: E402

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
    pngs = ["em_by_searches.png", "search_counts.png"] + (["answer_seen.png"] if mode != "direct" else [])
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diagnostics = results["metrics"]["overall"]["diagnostics"]
    assert (diagnostics is None) == (mode == "direct") and ("Was the answer retrieved?" in report)
    if diagnostics is not None:  # each question's answer_seen is recomputed from what it read
        for p in preds:
            traj = Trajectory.from_dict(p["trajectory"])
            texts = [t.observation for t in traj.turns if t.action == "search" and not t.retrieval_failed]
            if mode == "rag":  # the passages sit between the instruction line and the question
                prompt = tok_decode(out, p["trajectory"]["prompt_ids"])
                texts.append(prompt[prompt.index("Doc 1(Title:") : prompt.rindex("\nQuestion:")])
            assert p["answer_seen"] == any(cover_exact_match(t, p["golds"]) for t in texts)
        seen = [p for p in preds if p["answer_seen"]]
        assert diagnostics["answer_seen"] == len(seen) / n
    return results


def tok_decode(out: Path, ids: list[int]) -> str:
    """The prompt's text: a rag prompt holds its passages, so a gold in them was seen."""
    results = json.loads((out / "results.json").read_text())
    return AutoTokenizer.from_pretrained(results["config"]["engine"]["model"]).decode(ids)


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


SFT_MODEL = REPO_ROOT / "data" / "models" / "tiny-sft"  # the shipped SFT model: it searches
NO_SERVER = "http://127.0.0.1:9"  # nothing listens there: a replay must not need a server


def _sft_cfg(world, out: Path, url: str, *extra: str) -> EvalConfig:
    overrides = [
        f"data=[{world.test}]",
        f"engine.model={SFT_MODEL}",
        "engine.device=cpu",
        "max_examples=12",
        f"retriever_url={url}",
        f"out_dir={out}",
        *extra,
    ]
    return load_config(EvalConfig, CONFIG_DIR / "eval" / "default.yaml", overrides)


def _outcome(out: Path) -> tuple[dict, list[tuple]]:
    """What an evaluation decided: its metrics and each question's prediction, response and scores."""
    results = json.loads((out / "results.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return results["metrics"], [(p["uid"], p["prediction"], p["response"], p["metrics"]) for p in preds]


@pytest.fixture(scope="module")
def recorded(world, retriever_url, tmp_path_factory) -> Path:
    """An evaluation against the live server: its folder holds the retrieval log."""
    out = asyncio.run(evaluate(_sft_cfg(world, tmp_path_factory.mktemp("recorded") / "out", retriever_url)))
    assert json.loads((out / "results.json").read_text())["metrics"]["overall"]["searches"] > 0
    return out


def test_replay_reproduces_the_run_without_a_server(world, recorded, tmp_path, free_port) -> None:
    log = recorded / "retrieval_log.jsonl"
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    preds = [json.loads(line) for line in (recorded / "predictions.jsonl").read_text().splitlines()]
    searched = [t["query"] for p in preds for t in p["trajectory"]["turns"] if t["action"] == "search"]
    assert sorted(q["query"] for q in logged) == sorted(searched)  # every query sent, once each
    assert all(len(q["docs"]) == q["topk"] and q["docs"][0]["score"] is not None for q in logged)
    dead = f"http://127.0.0.1:{free_port}"  # nothing listens there: the replay must not need it
    out = asyncio.run(evaluate(_sft_cfg(world, tmp_path / "replay", dead, f"replay={log}")))
    assert _outcome(out) == _outcome(recorded)
    assert json.loads((out / "results.json").read_text())["replay"] == {"log": str(log), "misses": 0}


def test_replay_miss_is_an_error_or_a_counted_failure(world, recorded, tmp_path, free_port, capsys) -> None:
    from search_r1.eval.run import main as run_main

    logged = (recorded / "retrieval_log.jsonl").read_text().splitlines()
    queries = [json.loads(line)["query"] for line in logged]
    missing = next(q for q in queries if queries.count(q) == 1)
    short = tmp_path / "short.jsonl"
    short.write_text("".join(f"{line}\n" for line, q in zip(logged, queries, strict=True) if q != missing))
    args = [f"data=[{world.test}]", f"engine.model={SFT_MODEL}", "engine.device=cpu", "max_examples=12"]
    args += [f"retriever_url=http://127.0.0.1:{free_port}", f"replay={short}"]
    with pytest.raises(SystemExit) as exc:
        run_main([*args, f"out_dir={tmp_path / 'error'}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "not in the retrieval log" in err and repr(missing) in err
    out = asyncio.run(
        evaluate(
            _sft_cfg(
                world,
                tmp_path / "count",
                NO_SERVER,
                f"replay={short}",
                "replay_miss=count",
                "max_failed_share=1",
            )
        )
    )
    results = json.loads((out / "results.json").read_text())
    misses = results["replay"]["misses"]
    assert misses >= 1 and results["metrics"]["overall"]["searches_failed"] == misses


def test_eval_resumes_from_its_partial_predictions(world, recorded, tmp_path) -> None:
    """A run cut short (its partial record and a half-written line) finishes only the missing questions."""
    log = recorded / "retrieval_log.jsonl"
    out = tmp_path / "resumed"
    cfg = _sft_cfg(world, out, NO_SERVER, f"replay={log}")
    lines = (recorded / "predictions.jsonl").read_text().splitlines()
    out.mkdir()
    from search_r1.config import to_dict
    from search_r1.eval.resume import PARTIAL_NAME, RUN_NAME, deciding

    name = json.loads((recorded / "results.json").read_text())["name"]
    (out / RUN_NAME).write_text(json.dumps({"name": name, "config": deciding(to_dict(cfg))}))
    (out / PARTIAL_NAME).write_text("\n".join(lines[:5]) + "\n" + lines[5][: len(lines[5]) // 2])
    asyncio.run(evaluate(cfg))
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_questions"] == 5 and results["rollout"]["n"] == 12 and results["name"] == name
    assert _outcome(out) == _outcome(recorded)
    assert not (out / PARTIAL_NAME).exists()
    changed = _sft_cfg(world, out, NO_SERVER, f"replay={log}", "agent.topk=2")
    (out / PARTIAL_NAME).write_text(lines[0] + "\n")
    from search_r1.eval.resume import ResumeConflict

    with pytest.raises(ResumeConflict, match="differs in: agent"):
        asyncio.run(evaluate(changed))
