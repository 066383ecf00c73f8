"""Stages of a pipeline run: one command each, with its environment, inputs, outputs and log.

A run of the experiment (``search_r1.experiment``) is a list of these. A stage is a subprocess — the
user-facing entry point it stands for (``train_sft.sh``, ``python -m search_r1.eval``, ...) — so a
stage runs exactly what a user would type, in its own virtual environment and on its own GPUs.

A stage is done when it finished once (a marker file under ``<run>/stages/``) and its outputs
exist; a done stage is skipped, which is how an interrupted run resumes. ``{retriever}`` and
``{teacher}`` in a command stand for the URLs of services started at run time. A dry run prints
every stage with its command, environment, inputs and outputs, and checks that each input exists
or is the output of an earlier stage.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.paths import REPO_ROOT

# Lines worth echoing from a stage: its own "[stage] ..." summaries, tables and errors.
_STAGE_LINE = re.compile(r"^(\[[a-z_.-]+\] |\||.*\b(error|Error|Traceback)\b)")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class StageError(RuntimeError):
    """A stage failed; the message holds the command and the tail of its log."""


@dataclass
class Stage:
    name: str  # unique in the run; also the marker and log name
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the runner's environment
    inputs: list[str] = field(default_factory=list)  # paths (or hub ids) the stage reads
    outputs: list[str] = field(default_factory=list)  # paths whose existence (with the marker) = done
    services: tuple[str, ...] = ()  # which services must be up: "retriever", "teacher"
    always: bool = False  # cheap and idempotent on its own (cached builds): run every time
    before: Callable[[dict[str, str]], None] | None = None  # run with the service URLs before cmd
    config: tuple[str, str, list[str]] | None = None  # (kind, --config file, overrides) for dry-run checks

    def command(self, urls: dict[str, str]) -> list[str]:
        return [c.format(**urls) if "{" in c else c for c in self.cmd]

    def shell(self, urls: dict[str, str] | None = None) -> str:
        """The command as one line a user can paste, with its environment in front."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        cmd = " ".join(shlex.quote(c) for c in (self.command(urls) if urls else self.cmd))
        return f"{env} {cmd}".strip()


def python(venv: str) -> str:
    """The interpreter of ``venv`` ('' = the one running the runner)."""
    return str(Path(venv) / "bin" / "python") if venv else sys.executable


def gpu_env(gpus: list[int]) -> dict[str, str]:
    """The environment that puts a stage on ``gpus`` (none: nothing to set)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus else {}


def venv_env(venv: str) -> dict[str, str]:
    """The environment that makes the entry-point scripts use ``venv``."""
    return {"SEARCH_R1_VENV": venv} if venv else {}


def marker(run_dir: Path, stage: Stage) -> Path:
    return run_dir / "stages" / f"{stage.name}.done"


def is_done(run_dir: Path, stage: Stage) -> bool:
    if stage.always:
        return False
    return marker(run_dir, stage).exists() and all(_exists(p) for p in stage.outputs)


def _exists(path: str) -> bool:
    p = Path(path)
    return (p if p.is_absolute() else REPO_ROOT / p).exists()


def run_stage(stage: Stage, run_dir: Path, urls: dict[str, str]) -> None:
    """Run ``stage`` with the live service ``urls``, write its marker; a failure raises StageError."""
    if stage.before is not None:
        stage.before(urls)
    log = run_dir / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = stage.command(urls)
    print(f"[experiment] {stage.name}: {stage.shell(urls)}  (log: {log})", flush=True)
    start = time.time()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **stage.env},
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if _STAGE_LINE.match(line):
                print("    " + line.rstrip()[:200], flush=True)
        code = proc.wait()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise StageError(
            f"{stage.name} failed (exit {code}): {shlex.join(cmd)}\n--- last lines of {log} ---\n{tail}"
        )
    missing = [p for p in stage.outputs if not _exists(p)]
    if missing:
        raise StageError(f"{stage.name} exited 0 but did not write {missing} (log: {log})")
    seconds = time.time() - start
    if not stage.always:
        marker(run_dir, stage).parent.mkdir(parents=True, exist_ok=True)
        marker(run_dir, stage).write_text(json.dumps({"cmd": cmd, "seconds": round(seconds, 1)}) + "\n")
    print(f"[experiment] {stage.name} done in {seconds:.0f}s", flush=True)


def line_up(stages: list[Stage]) -> list[str]:
    """Problems with the plan's paths: an input that neither exists nor is an earlier stage's output.

    A name shaped like a hub id (``Qwen/Qwen2.5-3B-Instruct``) that is no local path is accepted:
    the stage downloads it.
    """
    produced: set[str] = set()
    problems = []
    for stage in stages:
        for path in stage.inputs:
            norm = _norm(path)
            if _exists(path) or any(_inside(norm, p) or _inside(p, norm) for p in produced):
                continue
            if _HUB_ID.match(path) and not path.startswith(("outputs/", "data/")):
                continue
            problems.append(f"{stage.name}: input {path} does not exist and no earlier stage writes it")
        produced.update(_norm(p) for p in stage.outputs)
    return problems


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def _norm(path: str) -> str:
    p = Path(path)
    return str((p if p.is_absolute() else REPO_ROOT / p).resolve())


def describe(stages: list[Stage], run_dir: Path) -> str:
    """The dry-run listing: each stage's command, environment, inputs, outputs and state."""
    blocks = []
    for i, s in enumerate(stages, start=1):
        state = (
            "cached build (runs every time)" if s.always else ("done" if is_done(run_dir, s) else "to run")
        )
        lines = [f"{i:2d}. {s.name}  [{state}]", f"    $ {s.shell()}"]
        if s.services:
            lines.append(f"    needs: {', '.join(s.services)}")
        lines += [f"    in:  {p}" for p in s.inputs] + [f"    out: {p}" for p in s.outputs]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
