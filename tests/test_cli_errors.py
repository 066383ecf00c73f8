"""Every entry point answers bad input (an unknown key, a wrong type, a missing file, a file that is not
data) with exit code 2 and one line on stderr naming the key or the file: never a traceback.

Each case runs the real command, as a user types it, in a subprocess. Bad input is rejected before
any model loads, so a case costs the command's start-up: mostly imports (torch and transformers for
the model stages, 5-7 s; under a second for the rest). The ``outcomes`` fixture therefore runs the
selected cases a few at a time, one per CPU, and each test checks its own result.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from search_r1.config import OneLineParser, config_error, die, entry_point, load_config
from search_r1.data.schema import DatasetError
from search_r1.paths import REPO_ROOT
from search_r1.world.build import WorldConfig

SFT_MODEL = REPO_ROOT / "data" / "models" / "tiny-sft"  # shipped: a real model folder in every checkout


@dataclass(frozen=True)
class Case:
    """``argv`` with ``{d}`` for the scratch folder (missing paths and garbage files live there),
    ``{model}`` for a real model folder, ``{root}`` for the checkout and ``{py}`` for this Python;
    ``names`` (the key or file) must appear in the last stderr line, the error."""

    id: str
    argv: tuple[str, ...]
    names: str

    def command(self, d: Path) -> list[str]:
        return [a.format(d=d, model=SFT_MODEL, root=REPO_ROOT, py=sys.executable) for a in self.argv]


def case(id: str, names: str, command: str) -> Any:
    """A parametrised case: ``command`` as typed in a shell (split with shlex)."""
    return pytest.param(Case(id, tuple(shlex.split(command)), names), id=id)


# Missing paths are {d}/none*; {d}/garbage.* exist but hold no data (written by the fixture).
CASES = [
    # the shell entry points
    case(
        "eval.sh-missing-data",
        "{d}/none.parquet",
        "bash eval.sh engine.model={model} data=[{d}/none.parquet]",
    ),
    case(
        "eval.sh-garbage-data",
        "{d}/garbage.parquet",
        "bash eval.sh engine.model={model} data=[{d}/garbage.parquet]",
    ),
    case("eval.sh-wrong-type", "max_examples", "bash eval.sh engine.model={model} max_examples=many"),
    case("train_sft.sh-unknown-key", "no_such_key", "bash train_sft.sh no_such_key=1"),
    case("train_sft.sh-missing-config", "{d}/none.yaml", "bash train_sft.sh --config {d}/none.yaml"),
    case("train_ppo.sh-unknown-key", "no_such_key", "bash train_ppo.sh --resume no_such_key=1"),
    case(
        "train_ppo.sh-wrong-type",
        "trainer.total_training_steps",
        "bash train_ppo.sh trainer.total_training_steps=x",
    ),
    case("train_ppo.sh-missing-config", "{d}/none.yaml", "bash train_ppo.sh --config {d}/none.yaml"),
    case(
        "train_ppo.sh-verl-unknown-key",
        "clip_ration",
        "bash train_ppo.sh --config configs/rl/verl_ppo.yaml +actor_rollout_ref.actor.clip_ration=0.1",
    ),
    case("retrieval_launch.sh-missing-index", "{d}/none", "bash retrieval_launch.sh index_dir={d}/none"),
    case("quickstart.sh-unknown-key", "no_such_key", "bash scripts/quickstart.sh no_such_key=1"),
    # python -m modules
    case("world-unknown-arg", "no_such_key", "{py} -m search_r1.world no_such_key=1"),
    case("world.setup-unknown-flag", "--bogus", "{py} -m search_r1.world.setup --bogus"),
    case("world.build-wrong-type", "seed", "{py} -m search_r1.world.build seed=abc out_dir={d}/w"),
    case(
        "world.mirror-missing-index",
        "{d}/none",
        "{py} -m search_r1.world.mirror index_dir={d}/none out={d}/m",
    ),
    case("world.smol-unknown-key", "no_such_key", "{py} -m search_r1.world.smol no_such_key=1"),
    case("world.practice-missing-world", "{d}/none", "{py} -m search_r1.world.practice world_dir={d}/none"),
    case("world.probe-missing-world", "{d}/none", "{py} -m search_r1.world.probe world_dir={d}/none"),
    case(
        "world.tiny_model-missing-world",
        "{d}/none",
        "{py} -m search_r1.world.tiny_model world_dir={d}/none out_dir={d}/t",
    ),
    case("agent.serve-missing-model", "{d}/none", "{py} -m search_r1.agent.serve model={d}/none"),
    case(
        "retrieval.server-missing-config",
        "{d}/none.yaml",
        "{py} -m search_r1.retrieval.server --config {d}/none.yaml",
    ),
    case("experiment-wrong-type", "seeds", "{py} -m search_r1.experiment seeds=abc"),
    case("eval-run-unknown-nested-key", "engine.nmae", "{py} -m search_r1.eval run engine.nmae=x"),
    case("eval-compare-missing-file", "{d}/none.json", "{py} -m search_r1.eval compare {d}/none.json"),
    case(
        "eval-compare-garbage-file", "{d}/garbage.jsonl", "{py} -m search_r1.eval compare {d}/garbage.jsonl"
    ),
    case(
        "rl.trainer-missing-data",
        "{d}/none.parquet",
        "{py} -m search_r1.rl.trainer actor_rollout_ref.model.path={model} data.train_files={d}/none.parquet "
        "trainer.default_local_dir={d}/ppo",
    ),
    case(
        "rl.select-garbage-data",
        "{d}/garbage.parquet",
        "{py} -m search_r1.rl.select model={model} out={d}/kept.parquet train_files={d}/garbage.parquet",
    ),
    case("rl.export-missing-checkpoint", "{d}/none", "{py} -m search_r1.rl.export ckpt_dir={d}/none"),
    case(
        "rl.verl_checkpoint-missing-run",
        "{d}/none",
        "{py} -m search_r1.rl.verl_checkpoint run={d}/none out={d}/v",
    ),
    case(
        "rl.verl_config-unknown-key",
        "clip_ration",
        "{py} -m search_r1.rl.verl_config verl_ppo +actor_rollout_ref.actor.clip_ration=0.1",
    ),
    case(
        "rl.verl_main-unknown-key",
        "no_such_key",
        "{py} -m search_r1.rl.verl_main --config-path={root}/configs/rl --config-name=verl_ppo "
        "hydra.searchpath=[pkg://verl.trainer.config] no_such_key=1",
    ),
    case(
        "rl.verl_rehearsal-garbage-data",
        "{d}/garbage.parquet",
        "{py} -m search_r1.rl.verl_rehearsal data.train_files={d}/garbage.parquet actor_rollout_ref.model.path={model}",
    ),
    case(
        "sft.generate-missing-world",
        "{d}/none",
        "{py} -m sft.generate model={model} world_dir={d}/none run_dir={d}/s",
    ),
    case(
        "sft.filters-garbage-trajectories",
        "{d}/sft/trajectories.jsonl",
        "{py} -m sft.filters model={model} run_dir={d}/sft",
    ),
    case(
        "sft.export-missing-filtered",
        "{d}/none/filtered.jsonl",
        "{py} -m sft.export model={model} run_dir={d}/none",
    ),
    case("sft.train-unknown-key", "no_such_key", "{py} -m sft.train no_such_key=1"),
    case("sft.evaluate-missing-model", "{d}/none", "{py} -m sft.evaluate models=[{d}/none] max_questions=1"),
    case("sft.ship-missing-run", "{d}/none", "{py} -m sft.ship run_dir={d}/none"),
    # scripts/*.py
    case(
        "build_index-missing-corpus",
        "{d}/none.jsonl",
        "{py} scripts/build_index.py corpus={d}/none.jsonl out_dir={d}/i",
    ),
    case(
        "build_index-binary-corpus",
        "{d}/binary.jsonl",
        "{py} scripts/build_index.py corpus={d}/binary.jsonl out_dir={d}/i",
    ),
    case(
        "prepare_data-missing-raw",
        "{d}/none",
        "{py} scripts/prepare_data.py sources=[bamboogle] raw_dir={d}/none download=false out_dir={d}/q",
    ),
    case(
        "prepare_data-garbage-raw",
        "{d}/raw/bamboogle/test.jsonl",
        "{py} scripts/prepare_data.py sources=[bamboogle] raw_dir={d}/raw download=false out_dir={d}/q",
    ),
    case(
        "download_wiki18-empty-mirror",
        "{d}",
        "{py} scripts/download_wiki18.py mirror={d} raw_dir={d}/w index=false",
    ),
]


def _scratch(d: Path) -> None:
    """The garbage the cases read: files that exist under their usual names but are not data."""
    (d / "garbage.parquet").write_text("this is not parquet\n")
    (d / "garbage.jsonl").write_text("not json at all\n")
    (d / "binary.jsonl").write_bytes(bytes(range(128, 256)) * 4)
    (d / "sft").mkdir()
    (d / "sft" / "trajectories.jsonl").write_text("{truncated\n")
    (d / "raw" / "bamboogle").mkdir(parents=True)
    (d / "raw" / "bamboogle" / "test.jsonl").write_text("not json\n")


def _run(c: Case, d: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(c.command(d), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """The scratch folder and the result of every case selected in this session, run concurrently."""
    d = tmp_path_factory.mktemp("cli_errors")
    _scratch(d)
    selected = [
        item.callspec.params["c"]
        for item in request.session.items
        if item.module is request.module and "c" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 2, 4)) as pool:
        results = dict(zip((c.id for c in selected), pool.map(lambda c: _run(c, d), selected), strict=True))
    return d, results


@pytest.mark.parametrize("c", CASES)
def test_bad_input_exits_2_with_one_line_naming_it(c: Case, outcomes) -> None:
    d, results = outcomes
    proc = results[c.id]
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    last = err.splitlines()[-1]
    assert "error" in last and c.names.format(d=d) in last, err[-3000:]


# ---- the shared layer, in process ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["no_such_key=1"], "Key 'no_such_key' not in 'WorldConfig'"),
        (["n_people=many"], "n_people: Value 'many' of type 'str' could not be converted to Integer"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(overrides, expected) -> None:
    with pytest.raises(Exception) as exc:
        load_config(WorldConfig, None, overrides)
    assert config_error(exc.value) == expected


def test_usage_errors_and_die_are_one_line(capsys) -> None:
    parser = OneLineParser(prog="prog")
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--bogus"])
    with pytest.raises(SystemExit) as died:
        die("first\nsecond", 2)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and died.value.code == 2
    assert err == "prog: error: unrecognized arguments: --bogus (see --help)\nerror: first second\n"


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (
            FileNotFoundError(2, "No such file or directory", "/x/y.parquet"),
            "/x/y.parquet: No such file or directory",
        ),
        (
            DatasetError("/x/y.parquet: row 3: empty gold answer list"),
            "/x/y.parquet: row 3: empty gold answer list",
        ),
    ],
)
def test_entry_point_turns_input_errors_into_exit_2(raised, expected, capsys) -> None:
    @entry_point
    def main() -> None:
        raise raised

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and capsys.readouterr().err == f"error: {expected}\n"


def test_entry_point_leaves_other_failures_alone() -> None:
    @entry_point
    def main() -> None:
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        main()
