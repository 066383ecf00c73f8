"""Shared fixtures: the embedded world and the tiny base model, built once and cached on disk.

They live under ``outputs/`` (or ``$SEARCH_R1_HOME``) so a second test run reuses them; the build is
keyed by config, so a changed config rebuilds. ``scripts/test.sh`` builds them, and the other cached
fixtures the tests share, before pytest (``python -m search_r1.world fixtures``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def world():
    """The default embedded world (``search_r1.world.build.World``: corpus, questions, parquet splits)."""
    from search_r1.world.setup import ensure_world

    return ensure_world()


@pytest.fixture(scope="session")
def tiny_model(world) -> Path:
    """Path of the tiny base model's HF folder (Qwen2 architecture, tags as single tokens, ChatML)."""
    from search_r1.world.setup import ensure_tiny_model

    return ensure_tiny_model(world)


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """A toy Qwen2 that greedily searches once, reads, then answers (tests/agent_fixtures.py); verl's
    config checks load its config as they would a real model's."""
    from agent_fixtures import toy_model, toy_tokenizer

    tok = toy_tokenizer()
    out = tmp_path_factory.mktemp("toy")
    toy_model(tok).save_pretrained(out)
    tok.save_pretrained(out)
    return out
