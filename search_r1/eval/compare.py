"""Merge several ``results.json`` into one table (e.g. the four experiment groups).

python -m search_r1.eval compare base/results.json sft/results.json --names baseline "SFT only"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from search_r1.config import OneLineParser, die, entry_point


def compare(results: list[dict[str, Any]], names: list[str]) -> str:
    """A markdown table: overall EM / F1 / ROUGE-L / searches, then EM per data source."""
    sources = sorted({s for r in results for s in r["metrics"]["by_source"]})
    head = ["group", "mode", "n", "EM", "F1", "ROUGE-L", "searches", *(f"EM {s}" for s in sources)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in zip(names, results, strict=True):
        o, by = r["metrics"]["overall"], r["metrics"]["by_source"]
        per_source = [f"{by[s]['em']:.4f}" if s in by else "–" for s in sources]
        cells = [
            name,
            r["mode"],
            str(o["n"]),
            f"{o['em']:.4f}",
            f"{o['f1']:.4f}",
            f"{o['rouge_l']:.4f}",
            f"{o['searches']:.2f}",
            *per_source,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _read_results(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        die(f"{path}: not JSON ({exc})", 2)
    if not isinstance(run, dict) or not {"name", "mode", "metrics"} <= run.keys():
        die(f"{path}: not a results.json written by python -m search_r1.eval run", 2)
    return run


@entry_point
def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(
        prog="python -m search_r1.eval compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", nargs="+", type=Path, help="results.json files (or their run folders)")
    parser.add_argument("--names", nargs="*", help="one label per file (default: each run's name)")
    parser.add_argument("--out", type=Path, help="write compare.md and compare.json here")
    args = parser.parse_args(argv)
    paths = [p / "results.json" if p.is_dir() else p for p in args.results]
    runs = [_read_results(p) for p in paths]
    names = args.names or [r["name"] for r in runs]
    if len(names) != len(runs):
        parser.error(f"{len(names)} names for {len(runs)} results")
    table = compare(runs, names)
    print(table, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.md").write_text(table)
        merged = {
            n: {"path": str(p), "mode": r["mode"], "git_commit": r["git_commit"], "metrics": r["metrics"]}
            for n, p, r in zip(names, paths, runs, strict=True)
        }
        (args.out / "compare.json").write_text(json.dumps(merged, indent=2) + "\n")
