"""Named engines (verl-style registry): ``make_engine("hf", path=...)`` builds one from a config."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from search_r1.agent.engines.base import Engine

ENGINES: dict[str, type] = {}
# Modules that register an engine on import; imported on demand so optional deps stay optional.
_MODULES = {"hf": "hf", "openai": "openai", "openai_chat": "openai_chat", "vllm": "vllm"}


def register_engine(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        ENGINES[name] = cls
        return cls

    return deco


def make_engine(name: str, **kwargs: Any) -> Engine:
    """Build a registered engine through its ``from_config(**kwargs)`` constructor."""
    if name not in ENGINES and name in _MODULES:
        importlib.import_module(f"search_r1.agent.engines.{_MODULES[name]}")
    try:
        cls = ENGINES[name]
    except KeyError:
        raise ValueError(
            f"unknown engine {name!r}; choose from {sorted(set(ENGINES) | set(_MODULES))}"
        ) from None
    return cls.from_config(**kwargs)
