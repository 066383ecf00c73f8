"""Typed configs: a dataclass per entry point, filled from YAML plus ``key=value`` overrides.

Every entry point takes ``--config FILE.yaml`` and any number of OmegaConf dotlist overrides
(``retriever.topk=5``), and ``--help`` lists each field with its default and help text (taken from
``field(metadata={"help": ...})``). Unknown keys are an error, so a typo never silently does nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

T = TypeVar("T")


def _describe_fields(cls: type, prefix: str = "") -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(f.type) or (
            f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)
        ):
            sub = f.type if dataclasses.is_dataclass(f.type) else f.default_factory
            lines.extend(_describe_fields(sub, prefix=f"{name}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        help_text = f.metadata.get("help", "")
        lines.append(f"  {name}={default!r}\n      {help_text}")
    return lines


def build_parser(cls: type, description: str, default_config: Path | None = None) -> argparse.ArgumentParser:
    """An argparse parser whose epilog documents every config field of ``cls``."""
    epilog = "config fields (override as key=value):\n" + "\n".join(_describe_fields(cls))
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=default_config,
        help=f"YAML config file (default: {default_config})",
    )
    parser.add_argument("overrides", nargs="*", help="OmegaConf dotlist overrides, e.g. topk=5")
    return parser


def load_config(cls: type[T], config_path: Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Merge defaults ← YAML ← overrides into an instance of ``cls`` (unknown keys raise)."""
    merged = OmegaConf.structured(cls)
    if config_path is not None:
        merged = OmegaConf.merge(merged, OmegaConf.load(config_path))
    if overrides:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def parse_config(
    cls: type[T], description: str, default_config: Path | None = None, argv: Sequence[str] | None = None
) -> T:
    """Parse ``argv`` for an entry point; exits with a readable message on a bad key or value."""
    parser = build_parser(cls, description, default_config)
    args = parser.parse_intermixed_args(argv)  # `a=1 --config f.yaml b=2` as users type it
    try:
        return load_config(cls, args.config, args.overrides)
    except Exception as exc:  # OmegaConf raises several types; all are user errors here
        parser.exit(2, f"{parser.prog}: error: invalid config: {exc}\n")


def to_dict(cfg: Any) -> dict:
    """A plain dict of a config dataclass, for results files and wandb."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def die(message: str, code: int = 1) -> None:
    """Exit with a one-line error on stderr (for entry points)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
