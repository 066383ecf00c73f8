"""Typed configs: a dataclass per entry point, filled from YAML plus ``key=value`` overrides.

Every entry point takes ``--config FILE.yaml`` and any number of OmegaConf dotlist overrides
(``retriever.topk=5``), and ``--help`` lists each field with its default and help text (taken from
``field(metadata={"help": ...})``). Unknown keys are an error, so a typo never silently does nothing.

Bad input ends every entry point the same way: exit code 2 and one line on stderr naming the key or
file, never a traceback. ``parse_config`` does it for the command line and the YAML file;
``@entry_point`` on a ``main`` does it for the input files the run then reads (a missing file, a
parquet or JSONL that does not follow its format).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

from omegaconf import OmegaConf

T = TypeVar("T")
P = ParamSpec("P")


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


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2: the usage block is what --help is for."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def _prog() -> str:
    """The command as typed: ``python -m sft.filters``, not argparse's ``filters.py``/``__main__.py``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] not in ("", "-", "-c") else "search_r1"


def build_parser(
    cls: type, description: str, default_config: Path | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser whose epilog documents every config field of ``cls``."""
    epilog = "config fields (override as key=value):\n" + "\n".join(_describe_fields(cls))
    parser = OneLineParser(
        prog=prog or _prog(),
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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


def config_error(exc: BaseException) -> str:
    """One line for a failed ``load_config``, naming the key (OmegaConf puts it on a later line) or
    the YAML file (its path is in the exception)."""
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, OmegaConfBaseException) and exc.msg:
        first, key = exc.msg.strip().splitlines()[0], getattr(exc, "full_key", None)
        return f"{key}: {first}" if key and f"'{key}'" not in first else first
    return one_line(str(exc)) or type(exc).__name__


def parse_config(
    cls: type[T],
    description: str,
    default_config: Path | None = None,
    argv: Sequence[str] | None = None,
    prog: str | None = None,
) -> T:
    """Parse ``argv`` for an entry point; a bad key, value or YAML file exits 2 with one line."""
    parser = build_parser(cls, description, default_config, prog)
    args = parser.parse_intermixed_args(argv)  # `a=1 --config f.yaml b=2` as users type it
    try:
        return load_config(cls, args.config, args.overrides)
    except Exception as exc:  # OmegaConf and YAML raise several types; all are user errors here
        parser.exit(2, f"{parser.prog}: error: invalid config: {config_error(exc)}\n")


def to_dict(cfg: Any) -> dict:
    """A plain dict of a config dataclass, for results files and wandb."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def one_line(message: str) -> str:
    """``message`` with its line breaks folded, so an error stays one line on stderr."""
    return " ".join(message.split())


def die(message: str, code: int = 1) -> NoReturn:
    """Exit with a one-line error on stderr (for entry points): code 2 for bad input, 1 for a failure
    of the run itself (a retriever that does not answer)."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


def input_errors() -> tuple[type[Exception], ...]:
    """What a run raises on a bad input file: missing or unreadable paths (the ``OSError`` names the
    file) and the data readers' format errors (their message names the file and row). Imported only
    when an exception is being matched, so no entry point pays for pandas at start-up."""
    from search_r1.data.corpus import CorpusError
    from search_r1.data.schema import DatasetError

    return (
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        DatasetError,
        CorpusError,
    )


def describe_input_error(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _missing_model(exc: OSError) -> bool:
    """transformers' ``OSError`` for a model path that is no folder: the Hub client then rejected the
    path as a repository id (``HFValidationError``), which is its cause."""
    return type(exc.__cause__).__name__ == "HFValidationError"


def entry_point(main: Callable[P, T]) -> Callable[P, T]:
    """Decorate an entry point's ``main``: a bad input file met after the config was parsed (a
    missing file or model folder, a data file that is not data) ends like a bad key, with one line
    naming the file and exit code 2, instead of a traceback."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except input_errors() as exc:
            die(describe_input_error(exc), 2)
        except OSError as exc:
            if not _missing_model(exc):
                raise
            die(f"no such model folder (nor a Hub model id): {exc}", 2)

    return run
