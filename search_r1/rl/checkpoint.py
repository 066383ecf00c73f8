"""Checkpoints of the single-machine trainer: ``<run>/global_step_<N>/state.pt`` (verl's folder naming).

A checkpoint holds the trainable weights (the LoRA adapter, or the full model), the optimizers, the
RNG states and the step. The data order is a pure function of ``data.seed`` and the step, so the
step is the whole data-order state: a resumed run sees exactly the batches it had not seen yet.
Written to a temporary folder and renamed, so a kill mid-save never leaves a half checkpoint.
Loading is strict: the saved tensors must be exactly the model's trainable ones, and a critic must be
in the checkpoint exactly when the run has one; anything else raises :class:`CheckpointError` naming
the keys, rather than resuming with some weights silently left at their initial values.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

PREFIX = "global_step_"


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the run resuming from it; the message names what differs."""


def _trainable_keys(model: torch.nn.Module) -> set[str]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k for k in model.state_dict() if k in names}


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    keys = _trainable_keys(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k in keys}


def _load_trainable(
    model: torch.nn.Module, saved: dict[str, torch.Tensor] | None, what: str, path: Path
) -> None:
    """Load ``saved`` into ``model``, which must be exactly its trainable tensors. Frozen weights (the
    base under a LoRA adapter) are not saved, so ``load_state_dict(strict=True)`` would report them
    missing; the key sets are compared here instead (shapes are checked by ``load_state_dict``)."""
    if saved is None:
        raise CheckpointError(
            f"{path}: holds no {what}, but this run has one (algorithm.adv_estimator changed?)"
        )
    expected = _trainable_keys(model)
    missing, unexpected = sorted(expected - saved.keys()), sorted(saved.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the {what} weights do not fit this model: {len(missing)} trainable tensors missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]} (a changed model, LoRA setting or "
            "target_modules?)"
        )
    model.load_state_dict(saved, strict=False)


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
    _load_trainable(actor, state["actor"], "actor", path)
    actor_opt.load_state_dict(state["actor_opt"])
    if critic is not None:
        _load_trainable(critic, state["critic"], "critic", path)
        critic_opt.load_state_dict(state["critic_opt"])
    elif state["critic"] is not None:
        raise CheckpointError(
            f"{path}: holds a critic, but this run has none (algorithm.adv_estimator changed?)"
        )
    rng = state["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])
