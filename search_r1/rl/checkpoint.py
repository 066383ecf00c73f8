"""Checkpoints of the single-machine trainer: ``<run>/global_step_<N>/state.pt`` (verl's folder naming).

A checkpoint holds the trainable weights (the LoRA adapter, or the full model), the optimizers, the
RNG states and the step. The data order is a pure function of ``data.seed`` and the step, so the
step is the whole data-order state: a resumed run sees exactly the batches it had not seen yet.
Written to a temporary folder and renamed, so a kill mid-save never leaves a half checkpoint.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

PREFIX = "global_step_"


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(run_dir: Path, step: int, actor, critic, actor_opt, critic_opt) -> Path:
    final = run_dir / f"{PREFIX}{step}"
    tmp = run_dir / f".tmp_{PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "step": step,
        "actor": _trainable_state(actor),
        "actor_opt": actor_opt.state_dict(),
        "critic": _trainable_state(critic) if critic is not None else None,
        "critic_opt": critic_opt.state_dict() if critic_opt is not None else None,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    }
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    steps = [int(p.name[len(PREFIX) :]) for p in run_dir.glob(f"{PREFIX}*") if (p / "state.pt").exists()]
    return run_dir / f"{PREFIX}{max(steps)}" if steps else None


def load_checkpoint(path: Path, actor, critic, actor_opt, critic_opt) -> int:
    """Restore everything saved by :func:`save_checkpoint`; returns the step it was taken at."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    actor.load_state_dict(state["actor"], strict=False)
    actor_opt.load_state_dict(state["actor_opt"])
    if critic is not None:
        critic.load_state_dict(state["critic"], strict=False)
        critic_opt.load_state_dict(state["critic_opt"])
    rng = state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])
