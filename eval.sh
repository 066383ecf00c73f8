#!/usr/bin/env bash
# Evaluate a model as a search agent (or a baseline) and write results.json, predictions.jsonl,
# report.md and plots.
#
#   bash eval.sh                                   # tiny base model, world test split, retriever at :8000
#   bash eval.sh engine.model=PATH mode=direct     # any config field as key=value (see --help)
#   bash eval.sh --config configs/eval/nq_3b.yaml engine.adapter=outputs/runs/sft/lora
#   bash eval.sh compare RUN_A RUN_B --names base sft --out outputs/runs/eval/compare
#   bash eval.sh audit data=[D.parquet] index_dir=INDEX   # share of golds in the corpus / top-k
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/_env.sh"
cd "$ROOT"
if [[ "${1:-}" == "compare" || "${1:-}" == "audit" ]]; then
  exec "$PY" -m search_r1.eval "$@"
fi
# The default model is the embedded world's tiny base model: build it (cached) when it is missing.
if [[ " $* " != *" engine.model="* && " $* " != *"--config"* && " $* " != *" -h"* && " $* " != *"--help"* ]]; then
  "$PY" -m search_r1.world.setup
fi
exec "$PY" -m search_r1.eval run "$@"
