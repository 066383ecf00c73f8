"""Evaluation outputs: metrics per data source, results.json, predictions.jsonl, report.md, plots."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from search_r1.eval.diagnostics import DIAGNOSTIC_DEFINITIONS, summarise
from search_r1.eval.faults import failed_share
from search_r1.rewards.metrics import METRIC_DEFINITIONS

SCORE_KEYS = ("em", "cover_em", "f1", "rouge_l", "format_valid", "has_answer")
DEFINITIONS = (
    METRIC_DEFINITIONS
    | {
        "format_valid": "share of responses that follow the tag grammar (search_r1.rewards.format)",
        "has_answer": "share of responses that end with a complete <answer>",
        "searches": "mean search actions per question",
        "searches_failed": "search actions whose retrieval failed (timeout, refused connection, 5xx after the "
        "client's retries): the model saw a failure observation instead of passages",
        "searches_failed_share": "searches_failed / all search actions (0 when nothing was searched); above "
        "max_failed_share the run refuses to publish a score",
        "turns": "mean model turns per question",
        "valid_action_ratio": "turns with a complete search/answer action / all turns",
        "em_by_searches": "EM of the questions grouped by their number of searches",
        "diagnostics": "answer-seen diagnostics (null for closed-book runs), defined below",
    }
    | DIAGNOSTIC_DEFINITIONS
)


def _summary(preds: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(preds)
    out: dict[str, Any] = {"n": n}
    for k in SCORE_KEYS:
        out[k] = sum(p["metrics"][k] for p in preds) / n
    turns = [t for p in preds for t in p["trajectory"]["turns"]]
    out["searches"] = sum(p["num_searches"] for p in preds) / n
    out["turns"] = len(turns) / n
    out["valid_action_ratio"] = sum(t["action"] in ("search", "answer") for t in turns) / max(len(turns), 1)
    searches = sum(p["num_searches"] for p in preds)
    out["searches_failed"] = sum(p["retrieval_failures"] for p in preds)
    out["searches_failed_share"] = failed_share(out["searches_failed"], searches)
    out["finish_reasons"] = dict(Counter(p["finish_reason"] for p in preds))
    by_s: dict[int, list[float]] = defaultdict(list)
    for p in preds:
        by_s[p["num_searches"]].append(p["metrics"]["em"])
    out["em_by_searches"] = {str(k): {"n": len(v), "em": sum(v) / len(v)} for k, v in sorted(by_s.items())}
    out["diagnostics"] = summarise(preds)
    return out


def aggregate(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics overall and per ``data_source`` (unweighted means over questions)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in predictions:
        groups[p["data_source"]].append(p)
    return {
        "overall": _summary(predictions),
        "by_source": {src: _summary(ps) for src, ps in sorted(groups.items())},
        "definitions": DEFINITIONS,
    }


def _table(rows: dict[str, dict[str, Any]]) -> str:
    head = "| source | n | EM | cover-EM | F1 | ROUGE-L | searches | valid actions | format ok |\n"
    head += "|---|---|---|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {name} | {m['n']} | {m['em']:.4f} | {m['cover_em']:.4f} | {m['f1']:.4f} | {m['rouge_l']:.4f} | "
        f"{m['searches']:.2f} | {m['valid_action_ratio']:.3f} | {m['format_valid']:.3f} |\n"
        for name, m in rows.items()
    )


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _diagnostics_section(m: dict[str, Any]) -> list[str]:
    rows = {"**overall**": m["overall"], **m["by_source"]}
    if m["overall"]["diagnostics"] is None:
        return ["## Was the answer retrieved?", "", "Closed book: nothing was retrieved.", ""]
    lines = [
        "## Was the answer retrieved?",
        "",
        "| source | answer seen | EM when seen | EM when not seen | wrong | of which retrieval failures | "
        "of which reading failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        d = r["diagnostics"]
        lines.append(
            f"| {name} | {d['answer_seen']:.3f} | {_pct(d['em_when_seen'])} | {_pct(d['em_when_not_seen'])} | "
            f"{d['wrong']} | {_pct(d['wrong_retrieval_failure'])} | {_pct(d['wrong_reading_failure'])} |"
        )
    hops = m["overall"]["diagnostics"]["evidence_recall_by_hop"]
    if hops:
        lines += ["", "Evidence recall per hop (supporting passage of hop h retrieved in any turn):", ""]
        lines += ["| hop | questions | recall |", "|---|---|---|"]
        lines += [f"| {h} | {v['n']} | {v['recall']:.3f} |" for h, v in hops.items()]
    return [*lines, "", "![answer seen](answer_seen.png)", ""]


def render_report(results: dict[str, Any], predictions: list[dict[str, Any]], samples: int) -> str:
    m = results["metrics"]
    cfg = results["config"]
    lines = [
        f"# Evaluation: {results['name']}",
        "",
        f"- mode: `{results['mode']}`, model: `{cfg['engine']['model']}`"
        + (f" + adapter `{cfg['engine']['adapter']}`" if cfg["engine"]["adapter"] else ""),
        f"- data: {', '.join(f'`{d}`' for d in cfg['data'])}",
        f"- decoding: temperature {cfg['temperature']} ({'greedy' if cfg['temperature'] <= 0 else 'sampled'}), "
        f"max_turns {cfg['agent']['max_turns'] if results['mode'] == 'search' else 0}, topk {cfg['agent']['topk']}",
        f"- git commit: `{results['git_commit']}`, created {results['created']}",
        "",
        "## Metrics",
        "",
        _table({"**overall**": m["overall"], **m["by_source"]}),
        "## EM by number of searches",
        "",
        "| searches | n | EM |\n|---|---|---|\n"
        + "".join(f"| {k} | {v['n']} | {v['em']:.4f} |\n" for k, v in m["overall"]["em_by_searches"].items()),
        "## Rollout",
        "",
        f"finish reasons: {m['overall']['finish_reasons']}; failed searches: {m['overall']['searches_failed']}; "
        f"tokens generated {results['rollout']['tokens_generated']} / kept {results['rollout']['tokens_kept']}; "
        f"{results['rollout']['questions_per_s']:.2f} questions/s",
        "",
        "![EM by searches](em_by_searches.png) ![search counts](search_counts.png)",
        "",
        *_diagnostics_section(m),
        "## How each metric is computed",
        "",
        *(f"- **{k}**: {v}" for k, v in m["definitions"].items()),
        "",
        "## Sample trajectories",
        "",
    ]
    for p in predictions[:samples]:
        lines += [
            f"### {p['uid']} — EM {p['metrics']['em']:.0f}",
            f"Q: {p['question']}  ",
            f"gold: {p['golds']}; predicted: {p['prediction']!r}; finish: {p['finish_reason']}",
            "",
            "```",
            p["response"],
            "```",
            "",
        ]
    return "\n".join(lines)


def plot(results: dict[str, Any], predictions: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_s = results["metrics"]["overall"]["em_by_searches"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(list(by_s), [v["em"] for v in by_s.values()], color="tab:blue")
    for i, v in enumerate(by_s.values()):
        ax.annotate(f"n={v['n']}", (i, v["em"]), ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="searches in the trajectory", ylabel="EM", title="EM by number of searches", ylim=(0, 1.05))
    fig.tight_layout()
    fig.savefig(out / "em_by_searches.png", dpi=100)
    plt.close(fig)

    counts = Counter(p["num_searches"] for p in predictions)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = sorted(counts)
    ax.bar([str(x) for x in xs], [counts[x] for x in xs], color="tab:orange")
    ax.set(xlabel="searches", ylabel="questions", title="Search-count distribution")
    fig.tight_layout()
    fig.savefig(out / "search_counts.png", dpi=100)
    plt.close(fig)
    paths = [out / "em_by_searches.png", out / "search_counts.png"]
    diagnostics = results["metrics"]["overall"]["diagnostics"]
    if diagnostics is not None:
        paths.append(_plot_answer_seen(plt, diagnostics, out / "answer_seen.png"))
    return paths


def _plot_answer_seen(plt: Any, d: dict[str, Any], path: Path) -> Path:
    """EM by number of searches split by whether the gold was seen, and where wrong answers fail."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    keys = list(d["em_by_searches_seen"])
    for offset, part, color in ((-0.2, "seen", "tab:green"), (0.2, "not_seen", "tab:red")):
        cells = [d["em_by_searches_seen"][k][part] for k in keys]
        xs = [i + offset for i in range(len(keys))]
        left.bar(xs, [c["em"] or 0.0 for c in cells], width=0.4, color=color, label=part.replace("_", " "))
        for x, c in zip(xs, cells, strict=True):
            left.annotate(f"n={c['n']}", (x, c["em"] or 0.0), ha="center", va="bottom", fontsize=7)
    left.set_xticks(range(len(keys)), keys)
    left.set(xlabel="searches in the trajectory", ylabel="EM", title="EM by searches, gold seen or not")
    left.set_ylim(0, 1.1)
    left.legend(fontsize=8)
    wrong = d["wrong"]
    reading = round((d["wrong_reading_failure"] or 0.0) * wrong)
    n_correct = d["n"] - wrong
    right.bar(["answers"], [n_correct], color="tab:blue", label="correct")
    right.bar(
        ["answers"], [reading], bottom=[n_correct], color="tab:orange", label="wrong: gold seen (reading)"
    )
    right.bar(
        ["answers"],
        [wrong - reading],
        bottom=[n_correct + reading],
        color="tab:gray",
        label="wrong: gold not seen (retrieval)",
    )
    right.set(ylabel="questions", title=f"answer seen in {d['answer_seen']:.0%} of questions")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(
    out: Path, results: dict[str, Any], predictions: list[dict[str, Any]], samples: int
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for p in predictions:
            fh.write(json.dumps(p, ensure_ascii=False) + "\n")
    plot(results, predictions, out)
    (out / "report.md").write_text(render_report(results, predictions, samples))
