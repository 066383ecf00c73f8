"""``search_r1.rl.export`` on checkpoints verl itself wrote.

The checkpoints are made the real way, on CPU: two processes join a gloo process group, wrap a tiny
Qwen2 in FSDP (FULL_SHARD over a two-rank device mesh, as verl's FSDP engine does) and save it with
verl's ``FSDPCheckpointManager.save_checkpoint`` (``search_r1.rl.verl_checkpoint``, which the CPU
rehearsal uses too) — so each rank's file holds DTensor shards, and the export has to join them as it
will on a GPU node.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from agent_fixtures import tiny_qwen2, toy_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from search_r1.rl.export import main
from search_r1.rl.verl_checkpoint import save_verl_checkpoint

WORLD = 2
STEPS = (2, 5)
SHIFT = 0.5  # added to every weight between the two checkpoints, so the steps are told apart


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(the source HF folder, a verl run folder with FSDP actor checkpoints of steps 2 and 5; step 5's
    weights are the source's plus ``SHIFT``), saved by verl's checkpoint manager on CPU ranks."""
    root = tmp_path_factory.mktemp("verl_run")
    src, shifted, ckpt = root / "src", root / "shifted", root / "ckpt"
    tok = toy_tokenizer()
    torch.manual_seed(0)
    model = tiny_qwen2(tok)
    model.save_pretrained(src)
    tok.save_pretrained(src)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(SHIFT)
    model.save_pretrained(shifted)
    tok.save_pretrained(shifted)
    save_verl_checkpoint(src, ckpt, STEPS[0], WORLD)
    save_verl_checkpoint(shifted, ckpt, STEPS[1], WORLD)
    return src, ckpt


def bf16_state(model_dir: Path, shift: float = 0.0) -> dict[str, torch.Tensor]:
    """The source weights as verl's merger writes them: bf16 (of the fp32 weights after ``shift``)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {k: (v + shift).bfloat16() for k, v in model.state_dict().items()}


@pytest.mark.slow  # two processes save the checkpoints (~30 s on 2 cores)
def test_checkpoint_is_in_verls_sharded_layout(run) -> None:
    _, ckpt = run
    actor = ckpt / "global_step_5" / "actor"
    assert json.loads((actor / "fsdp_config.json").read_text())["world_size"] == WORLD
    shard = torch.load(actor / f"model_world_size_{WORLD}_rank_1.pt", weights_only=False)
    from torch.distributed.tensor import DTensor

    assert all(isinstance(v, DTensor) for v in shard.values())


@pytest.mark.slow
@pytest.mark.parametrize(("args", "step"), [([], 5), (["step=2"], 2)])
def test_export_writes_a_loadable_model_with_the_checkpoints_weights(run, tmp_path, args, step) -> None:
    src, ckpt = run
    out = tmp_path / "merged"
    main([f"ckpt_dir={ckpt}", f"out={out}", *args])

    model = AutoModelForCausalLM.from_pretrained(out)
    expected = bf16_state(src, SHIFT if step == STEPS[1] else 0.0)
    got = model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    tok, src_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(src)
    assert tok.chat_template == src_tok.chat_template and tok.eos_token == src_tok.eos_token
    ids = tok("The capital", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids.shape[1]


@pytest.mark.slow
def test_default_out_and_skip_unless_forced(run, capsys) -> None:
    _, ckpt = run
    main([f"ckpt_dir={ckpt}"])
    weights = ckpt / "merged" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    main([f"ckpt_dir={ckpt}"])
    assert "already holds a model" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == written
    main([f"ckpt_dir={ckpt}", "force=true"])
    assert weights.stat().st_mtime_ns != written
    assert not (ckpt / ".merged.tmp").exists()


def checkpoint_folder(root: Path, kind: str) -> Path:
    """A run folder that is missing, empty, has a half-written step 3, or a complete (empty) step 3."""
    if kind != "missing":
        (root / "global_step_3" / "actor").mkdir(parents=True)
    if kind == "complete":
        (root / "global_step_3" / "actor" / "fsdp_config.json").write_text("{}")
    return root


@pytest.mark.parametrize(
    ("kind", "args", "message"),
    [
        ("missing", [], "no such folder"),
        ("half-written", [], "no verl checkpoint"),
        ("complete", ["step=4"], r"no checkpoint of step 4 .*\(steps: \[3\]\)"),
    ],
)
def test_clear_one_line_errors_exit_2(tmp_path, capsys, kind, args, message) -> None:
    ckpt = checkpoint_folder(tmp_path / "run", kind)
    with pytest.raises(SystemExit) as exc:
        main([f"ckpt_dir={ckpt}", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and re.search(message, err)


def test_help_lists_the_fields(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and all(f in out for f in ("ckpt_dir=", "out=", "step=", "force="))


def test_runs_as_a_module(tmp_path) -> None:
    """``python -m search_r1.rl.export`` is the documented entry point."""
    proc = subprocess.run(
        [sys.executable, "-m", "search_r1.rl.export", f"ckpt_dir={tmp_path / 'nope'}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no such folder" in proc.stderr
