"""The experiment: baseline, SFT only, RL only and SFT + RL, evaluated on one test split.

    python -m search_r1.experiment                      # tiny preset on the embedded world
    python -m search_r1.experiment --config configs/experiment/smol.yaml seeds=[0,1,2]

It drives the user-facing entry scripts (``train_sft.sh``, ``train_ppo.sh``) and the evaluation
harness, so what it runs is exactly what a user runs. One retriever serves every stage and is
stopped at the end, also on failure or Ctrl-C. Each stage is skipped when its output exists
(``resume``), so an interrupted run continues where it stopped.

Outputs (``out_dir``): per seed ``seed<k>/{sft,ppo,eval}/``, then ``results.md`` / ``results.json``
(mean ± std over seeds of EM, F1, ROUGE-L, searches per question and valid-format rate) and
``results.png``, copied to ``docs/results/<preset>.*`` when ``publish`` is set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from search_r1.config import parse_config, to_dict
from search_r1.experiment_report import GROUPS, summarize, write_report
from search_r1.paths import CONFIG_DIR, INDEX_DIR, MODELS_DIR, REPO_ROOT, RUNS_DIR, WORLD_DIR
from search_r1.retrieval.process import RetrieverProcess


@dataclass
class ExperimentConfig:
    preset: str = field(
        default="tiny", metadata={"help": "name of the preset (run folder and docs/results name)"}
    )
    seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "SFT/RL seeds; the table reports mean ± std"}
    )
    base_model: str = field(
        default=str(MODELS_DIR / "tiny-base"), metadata={"help": "the student before SFT/RL"}
    )
    embedded_world: bool = field(
        default=True, metadata={"help": "build the embedded world + tiny model first"}
    )
    test_files: list[str] = field(
        default_factory=lambda: [str(WORLD_DIR / "test.parquet")],
        metadata={"help": "verl parquet(s) to evaluate on"},
    )
    index_dir: str = field(default=str(INDEX_DIR / "world"), metadata={"help": "retrieval index to serve"})
    retriever_url: str = field(
        default="", metadata={"help": "use a running retriever instead of starting one ('' = start one)"}
    )
    retriever_args: list[str] = field(
        default_factory=list, metadata={"help": "extra key=value overrides for the retriever server"}
    )
    sft_config: str = field(
        default=str(CONFIG_DIR / "sft" / "tiny.yaml"), metadata={"help": "train_sft.sh --config"}
    )
    sft_overrides: list[str] = field(
        default_factory=list, metadata={"help": "extra key=value for train_sft.sh"}
    )
    rl_config: str = field(
        default=str(CONFIG_DIR / "rl" / "tiny_ppo.yaml"), metadata={"help": "train_ppo.sh --config"}
    )
    rl_overrides: list[str] = field(
        default_factory=list, metadata={"help": "extra key=value for train_ppo.sh"}
    )
    eval_config: str = field(
        default=str(CONFIG_DIR / "eval" / "default.yaml"), metadata={"help": "eval --config"}
    )
    eval_overrides: list[str] = field(
        default_factory=list, metadata={"help": "extra key=value for the evaluation"}
    )
    out_dir: str = field(default="", metadata={"help": "run folder ('' = outputs/runs/experiment/<preset>)"})
    resume: bool = field(default=True, metadata={"help": "skip stages whose outputs exist"})
    publish: bool = field(
        default=False, metadata={"help": "copy the table and chart to docs/results/<preset>.*"}
    )


# Lines worth echoing from a stage: its own "[stage] ..." summaries, tables and errors.
_STAGE_LINE = re.compile(r"^(\[[a-z_.-]+\] |\||.*\b(error|Error|Traceback)\b)")


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run one stage, teeing its output to ``log``; a failure stops the experiment with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[experiment] $ {' '.join(cmd)}  (log: {log})", flush=True)
    start = time.time()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            if _STAGE_LINE.match(line):
                print("    " + line.rstrip()[:200], flush=True)
        code = proc.wait()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(
            f"stage failed (exit {code}): {' '.join(cmd)}\n--- last lines of {log} ---\n{tail}"
        )
    print(f"[experiment] done in {time.time() - start:.0f}s", flush=True)


def _sft(cfg: ExperimentConfig, seed: int, root: Path, url: str) -> Path:
    run_dir = root / "sft"
    merged = run_dir / "merged"
    if not (cfg.resume and (merged / "config.json").exists()):
        _run(
            [
                "bash",
                "train_sft.sh",
                "--config",
                cfg.sft_config,
                f"run_dir={run_dir}",
                f"model={cfg.base_model}",
                f"generate.retriever_url={url}",
                f"generate.seed={seed}",
                f"filters.seed={seed}",
                f"llamafactory.seed={seed}",
                *cfg.sft_overrides,
            ],
            root / "logs" / "sft.log",
            env={"SFT_SKIP_EVAL": "1"},
        )
    return merged


def _rl(cfg: ExperimentConfig, seed: int, root: Path, url: str, start_from: str, name: str) -> Path:
    merged = root / "ppo" / name / "merged"
    if not (cfg.resume and (merged / "config.json").exists()):
        _run(
            [
                "bash",
                "train_ppo.sh",
                "--config",
                cfg.rl_config,
                f"actor_rollout_ref.model.path={start_from}",
                f"retriever.url={url}",
                f"trainer.default_local_dir={root / 'ppo'}",
                f"trainer.experiment_name={name}",
                f"trainer.seed={seed}",
                f"data.seed={seed}",
                "trainer.resume_mode=auto",
                *cfg.rl_overrides,
            ],
            root / "logs" / f"{name}.log",
        )
    return merged


def _eval(cfg: ExperimentConfig, model: Path | str, out: Path, url: str, name: str) -> Path:
    if not (cfg.resume and (out / "results.json").exists()):
        files = "[" + ",".join(cfg.test_files) + "]"
        _run(
            [
                sys.executable,
                "-m",
                "search_r1.eval",
                "run",
                "--config",
                cfg.eval_config,
                f"engine.model={model}",
                f"data={files}",
                f"retriever_url={url}",
                f"out_dir={out}",
                f"name={name}",
                *cfg.eval_overrides,
            ],
            out.parent / "logs" / f"eval_{name}.log",
        )
    return out / "results.json"


def run_experiment(cfg: ExperimentConfig) -> dict:
    start = time.time()
    root = Path(cfg.out_dir or RUNS_DIR / "experiment" / cfg.preset)
    root.mkdir(parents=True, exist_ok=True)
    resumed = cfg.resume and any(root.glob("**/results.json"))  # some stages are reused, not rerun
    (root / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    if cfg.embedded_world:  # world, tiny model and index: each built once, then cached
        from search_r1.config import load_config
        from search_r1.retrieval.build import build_index
        from search_r1.retrieval.config import BuildConfig
        from search_r1.world.setup import ensure_tiny_model, ensure_world

        ensure_tiny_model(ensure_world())
        build_index(
            load_config(
                BuildConfig, CONFIG_DIR / "retriever" / "build_world.yaml", [f"out_dir={cfg.index_dir}"]
            )
        )
    if not (Path(cfg.base_model) / "config.json").exists():
        raise RuntimeError(
            f"no model at {cfg.base_model} (smol preset: run `python -m search_r1.world.smol` first)"
        )
    with RetrieverProcess(
        cfg.retriever_url, cfg.index_dir, cfg.retriever_args, log=root / "logs" / "retriever.log"
    ) as url:
        results: dict[str, list[Path]] = {g: [] for g in GROUPS}
        results["baseline"].append(_eval(cfg, cfg.base_model, root / "baseline", url, "baseline"))
        for seed in cfg.seeds:
            seed_root = root / f"seed{seed}"
            sft = _sft(cfg, seed, seed_root, url)
            rl_sft = _rl(cfg, seed, seed_root, url, str(sft), "rl_from_sft")
            rl_base = _rl(cfg, seed, seed_root, url, cfg.base_model, "rl_from_base")
            for group, model in (("sft", sft), ("rl", rl_base), ("sft_rl", rl_sft)):
                results[group].append(_eval(cfg, model, seed_root / "eval" / group, url, group))
    summary = summarize(results)
    summary["seconds"] = round(time.time() - start)
    summary["resumed"] = resumed
    write_report(summary, cfg, root, publish_dir=REPO_ROOT / "docs" / "results" if cfg.publish else None)
    return summary


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(
        ExperimentConfig, __doc__.splitlines()[0], CONFIG_DIR / "experiment" / "tiny.yaml", argv
    )
    try:
        run_experiment(cfg)
    except KeyboardInterrupt:
        sys.exit("[experiment] interrupted; the retriever was stopped. Run again to resume.")
    except RuntimeError as exc:
        sys.exit(f"[experiment] {exc}")


if __name__ == "__main__":
    main()
