"""Run a plan: start services when a stage needs them, skip finished stages, write the table."""

from __future__ import annotations

import json
import shlex
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from search_r1.config import die, entry_point, parse_config, to_dict
from search_r1.experiment.check import check_plan
from search_r1.experiment.config import ExperimentConfig
from search_r1.experiment.plan import plan, services
from search_r1.experiment.stages import StageError, describe, is_done, line_up, run_stage
from search_r1.experiment_report import summarize, write_report
from search_r1.paths import CONFIG_DIR, REPO_ROOT
from search_r1.services import ServiceProcess

DESCRIPTION = "The four-group experiment (baseline, SFT only, RL only, SFT + RL) at any scale."


def run_experiment(cfg: ExperimentConfig) -> dict:
    start = time.time()
    root = cfg.root
    stages = plan(cfg)
    svc = services(cfg)
    if cfg.dry_run:
        problems, notes = check_plan(cfg, stages)
        print(describe(stages, root))
        for name, s in svc.items():
            env = " ".join(f"{k}={v}" for k, v in s.env.items())
            print(f"service {name} (up for: {', '.join(st.name for st in stages if name in st.services)}):")
            print(f"    $ {env} {shlex.join(s.cmd)}".replace("$  ", "$ "))
        print("".join(f"[dry-run] note: {n}\n" for n in notes), end="")
        print("".join(f"[dry-run] problem: {p}\n" for p in problems) or "[dry-run] ok: the plan checks out")
        return {"stages": [s.name for s in stages], "problems": problems, "notes": notes}
    problems = line_up(stages)
    if problems:
        raise RuntimeError("the plan's paths do not line up:\n  " + "\n  ".join(problems))
    root.mkdir(parents=True, exist_ok=True)
    resumed = cfg.resume and (root / "stages").exists()
    (root / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    last_use = {
        name: max(i for i, s in enumerate(stages) if name in s.services)
        for name in svc
        if any(name in s.services for s in stages)
    }
    urls: dict[str, str] = {}
    running: dict[str, ExitStack] = {}
    try:
        for i, stage in enumerate(stages):
            if cfg.resume and is_done(root, stage):
                print(f"[experiment] skip {stage.name}: done", flush=True)
            else:
                for name in stage.services:
                    if name not in urls:
                        running[name] = ExitStack()
                        given = cfg.retriever_url if name == "retriever" else ""
                        urls[name] = given or running[name].enter_context(ServiceProcess(svc[name]))
                run_stage(stage, root, urls)
            for name in [n for n, last in last_use.items() if last == i and n in running]:
                running.pop(name).close()  # e.g. the teacher's GPUs are free for SFT
                urls.pop(name)
    finally:
        for stack in running.values():
            stack.close()
    summary = summarize(eval_results(root, "", cfg.seeds))
    summary["test_label"] = f"Test: {', '.join(cfg.test_files)}"
    if cfg.unseen_world_seed is not None:
        unseen = cfg.unseen_dir / "test.parquet"
        if unseen.is_relative_to(REPO_ROOT):  # the published table names no machine's checkout
            unseen = unseen.relative_to(REPO_ROOT)
        label = f"Unseen world (seed {cfg.unseen_world_seed}, no stage trained on it): {unseen}"
        summary["test_sets"] = {label: summarize(eval_results(root, "unseen", cfg.seeds))}
    summary["seconds"] = round(time.time() - start)
    summary["resumed"] = resumed
    write_report(summary, cfg, root, publish_dir=REPO_ROOT / "docs" / "results" if cfg.publish else None)
    return summary


def eval_results(root: Path, test: str, seeds: list[int]) -> dict[str, list[Path]]:
    """Each group's results.json per seed (the baseline's once) for one test set ('' = the test files)."""
    results = {"baseline": [root / test / "baseline" / "results.json"]}
    for group in ("sft", "rl", "sft_rl"):
        results[group] = [root / f"seed{s}" / "eval" / test / group / "results.json" for s in seeds]
    return results


@entry_point
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ExperimentConfig, DESCRIPTION, CONFIG_DIR / "experiment" / "tiny.yaml", argv)
    try:
        summary = run_experiment(cfg)
    except KeyboardInterrupt:
        sys.exit("[experiment] interrupted; services were stopped. Run again to resume.")
    except ValueError as exc:  # a setting the plan cannot use (rl_backend=...): bad input
        die(f"[experiment] {exc}", 2)
    except (StageError, RuntimeError) as exc:
        sys.exit(f"[experiment] {exc}")
    if cfg.dry_run and summary["problems"]:
        sys.exit(2)
