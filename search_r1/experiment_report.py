"""The four-group table of the experiment: mean ± std over seeds, paired differences with bootstrap
CIs (``search_r1.eval.paired``), markdown + JSON + a chart, for each test set the groups were scored on.

Beside the scores, the failed searches of each group (summed over its seeds): an evaluation publishes
a score only when at most ``max_failed_share`` of its searches failed, so the column is usually 0,
and when it is not the reader is told under the table. Beside the table, the training curves of the
RL runs (reward, EM, searches/question, entropy per step, one line per run) from each run's
``metrics.jsonl``, so a run that collapsed shows how (docs/rl.md, "Training health").
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from search_r1.config import to_dict
from search_r1.eval.paired import DEFINITION as PAIRED_DEFINITION
from search_r1.eval.paired import PairedDiff, paired_bootstrap, question_scores, verdict
from search_r1.rl.learning import read_metrics

GROUPS = {"baseline": "baseline (no SFT, no RL)", "sft": "SFT only", "rl": "RL only", "sft_rl": "SFT + RL"}
# (key in results.json's overall metrics, column title)
COLUMNS = [
    ("em", "EM"),
    ("f1", "F1"),
    ("rouge_l", "ROUGE-L"),
    ("searches", "searches / question"),
    ("format_valid", "valid format"),
]
# (A, B): the comparisons A - B the method is about
PAIRS = [("sft_rl", "sft"), ("rl", "baseline"), ("sft", "baseline")]
# (key in the single-machine trainer's metrics.jsonl, panel title) of the training curves
CURVES = [
    ("reward/mean", "reward"),
    ("reward/em", "EM"),
    ("rollout/searches_per_question", "searches / question"),
    ("actor/entropy", "entropy"),
]


def summarize(results: dict[str, list[Path]], pairs: list[tuple[str, str]] = PAIRS) -> dict[str, Any]:
    """Per group: each metric's per-seed values, mean and (sample) std; per pair (A, B) of ``pairs``,
    the paired per-question EM difference A - B with its 95% bootstrap CI, from each run's
    ``predictions.jsonl``."""
    table: dict[str, Any] = {}
    for group, paths in results.items():
        runs = [json.loads(p.read_text()) for p in paths]
        row: dict[str, Any] = {"n_questions": runs[0]["metrics"]["overall"]["n"], "seeds": len(runs)}
        for key, _ in COLUMNS:
            values = [r["metrics"]["overall"][key] for r in runs]
            row[key] = {
                "values": values,
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
        # summed, not averaged: any failed search is worth seeing, and a sum of counts stays a count
        row["searches_failed"] = sum(r["metrics"]["overall"].get("searches_failed", 0) for r in runs)
        table[group] = row
    scores = {g: [question_scores(p) for p in results[g]] for g in {g for pair in pairs for g in pair}}
    paired = {f"{a}-{b}": paired_bootstrap(scores[a], scores[b]).to_dict() for a, b in pairs}
    definitions = json.loads(results["baseline"][0].read_text())["metrics"].get("definitions", {})
    if pairs:
        definitions = definitions | {"paired difference": PAIRED_DEFINITION}
    return {"groups": table, "paired": paired, "definitions": definitions}


def markdown(summary: dict[str, Any]) -> str:
    head = ["group", "seeds", *(title for _, title in COLUMNS), "failed searches (sum over seeds)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, row in summary["groups"].items():
        cells = [GROUPS[group], str(row["seeds"])]
        for key, _ in COLUMNS:
            m, s = row[key]["mean"], row[key]["std"]
            cells.append(f"{m:.4f} ± {s:.4f}" if row["seeds"] > 1 else f"{m:.4f}")
        cells.append(str(row["searches_failed"]))
        lines.append("| " + " | ".join(cells) + " |")
    failed = {
        GROUPS[g]: row["searches_failed"] for g, row in summary["groups"].items() if row["searches_failed"]
    }
    if failed:
        lines += [
            "",
            "Failed searches (the retriever did not answer) in "
            + ", ".join(f"{g}: {n}" for g, n in failed.items())
            + "; each was a failure observation to the model, within the evaluation's max_failed_share.",
        ]
    if summary.get("paired"):
        lines += ["", *paired_markdown(summary["paired"])]
    return "\n".join(lines) + "\n"


def _pair_names(key: str) -> tuple[str, str]:
    a, b = key.split("-")
    return GROUPS[a], GROUPS[b]


def paired_markdown(paired: dict[str, Any]) -> list[str]:
    lines = [
        "| paired EM difference | mean | 95% CI | per seed | A right, B wrong | B right, A wrong |",
        "|---|---|---|---|---|---|",
    ]
    for key, d in paired.items():
        a, b = _pair_names(key)
        seeds = ", ".join(f"{x:+.3f}" for x in d["per_seed"])
        lines.append(
            f"| {a} − {b} | {d['mean']:+.4f} | [{d['low']:+.4f}, {d['high']:+.4f}] | {seeds} "
            f"| {d['a_only']} | {d['b_only']} |"
        )
    lines += ["", *(f"- {verdict(_from_dict(d), *_pair_names(k))}." for k, d in paired.items())]
    n = next(iter(paired.values()))
    lines += [
        "",
        f"{n['n_questions']} questions x {n['seeds']} seed(s); the counts are (question, seed) pairs.",
    ]
    return lines


def _from_dict(d: dict[str, Any]) -> PairedDiff:
    return PairedDiff(**d)


def bar_chart(summary: dict[str, Any], path: Path) -> None:
    """Left: the groups' scores on the first test set (mean ± std over seeds). Right: each paired
    EM difference with its 95% CI, one marker per test set; the zero line is "no difference"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [c for c in COLUMNS if c[0] in ("em", "f1", "rouge_l")]
    groups = list(summary["groups"])
    tests = {summary.get("test_label", "test split"): summary, **summary.get("test_sets", {})}
    with_pairs = any(t.get("paired") for t in tests.values())
    fig, axes = plt.subplots(1, 2 if with_pairs else 1, figsize=(12 if with_pairs else 7, 3.8), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(metrics)
    for i, (key, title) in enumerate(metrics):
        xs = [g + i * width for g in range(len(groups))]
        means = [summary["groups"][g][key]["mean"] for g in groups]
        stds = [summary["groups"][g][key]["std"] for g in groups]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=title)
    ax.set_xticks(
        [g + width * (len(metrics) - 1) / 2 for g in range(len(groups))],
        [GROUPS[g].replace(" (", "\n(") for g in groups],
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"score ({next(iter(tests))})")
    ax.legend(loc="upper left")
    ax.set_title("Four experiment groups (mean ± std over seeds)")
    if with_pairs:
        ax = axes[0][1]
        keys = list(next(t["paired"] for t in tests.values() if t.get("paired")))
        step = 0.6 / max(len(tests), 1)
        for j, (label, test) in enumerate(tests.items()):
            ys = [k - 0.3 + (j + 0.5) * step for k in range(len(keys))]
            diffs = [test["paired"][k] for k in keys]
            xerr = [[d["mean"] - d["low"] for d in diffs], [d["high"] - d["mean"] for d in diffs]]
            name = label.split(":")[0]  # the legend names the test set; the table gives its file
            ax.errorbar([d["mean"] for d in diffs], ys, xerr=xerr, fmt="o", capsize=4, label=name)
        ax.axvline(0, color="grey", linewidth=1)
        ax.set_yticks(range(len(keys)), ["\n− ".join(_pair_names(k)) for k in keys])
        ax.invert_yaxis()
        ax.set_xlabel("EM difference, paired by question (95% bootstrap CI)")
        ax.set_title("What each stage adds")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def training_runs(root: Path) -> dict[str, Path]:
    """``seed<S>/<run name>`` -> run folder, for every RL run of the experiment that wrote
    ``metrics.jsonl`` (the single-machine trainer; verl logs to its own loggers)."""
    return {f"{m.parts[-4]}/{m.parts[-2]}": m.parent for m in sorted(root.glob("seed*/ppo*/*/metrics.jsonl"))}


def training_curves(runs: dict[str, Path], path: Path) -> dict[str, list[str]]:
    """One panel per :data:`CURVES` metric against the step, one line per run; returns each panel's
    drawn runs (a run that did not log a metric is left out of that panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {label: read_metrics(run) for label, run in runs.items()}
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.4), squeeze=False)
    drawn: dict[str, list[str]] = {}
    for ax, (key, title) in zip(axes[0], CURVES, strict=True):
        for label, steps in metrics.items():
            points = [(m["step"], m[key]) for m in steps if key in m]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        drawn[title] = [line.get_label() for line in ax.get_lines()]
    axes[0][0].legend(fontsize="small")
    fig.suptitle("RL training curves (one line per run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(summary: dict[str, Any], cfg: Any, root: Path, publish_dir: Path | None) -> None:
    summary = summary | {"config": to_dict(cfg), "git_commit": git_commit()}
    table = markdown(summary)
    for label, test in summary.get("test_sets", {}).items():
        table += f"\n### {label}\n\n" + markdown(test)
    minutes = summary["seconds"] / 60
    clock = " for this invocation, which reused stages of an earlier one" if summary.get("resumed") else ""
    body = (
        f"# Experiment `{cfg.preset}`\n\n### {summary.get('test_label', 'test split')}\n\n{table}\n"
        f"Commit `{summary['git_commit']}`, seeds {cfg.seeds}, {minutes:.1f} min wall clock{clock}. "
        "Greedy decoding; every test question evaluated.\n\n"
        "![scores and paired differences](results.png)\n\n"
        "How each metric is computed:\n\n"
        + "".join(f"- **{k}**: {v}\n" for k, v in summary["definitions"].items())
    )
    runs = training_runs(root)
    curves = f"{cfg.preset}.training.png"  # the same name beside results.md and where it is published
    if runs:
        training_curves(runs, root / curves)
        body += f"\nTraining curves of the RL runs ({', '.join(runs)}):\n\n![training curves]({curves})\n"
    (root / "results.md").write_text(body)
    (root / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    bar_chart(summary, root / "results.png")
    print("\n" + table, flush=True)
    print(
        f"[experiment] {minutes:.1f} min; table: {root / 'results.md'}, chart: {root / 'results.png'}"
        + (f", training curves: {root / curves}" if runs else ""),
        flush=True,
    )
    if publish_dir is not None:
        publish_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("json", "png"):
            shutil.copy(root / f"results.{suffix}", publish_dir / f"{cfg.preset}.{suffix}")
        (publish_dir / f"{cfg.preset}.md").write_text(body.replace("](results.png)", f"]({cfg.preset}.png)"))
        if runs:
            shutil.copy(root / curves, publish_dir / curves)
        print(f"[experiment] published to {publish_dir}", flush=True)
