#!/usr/bin/env bash
# Serve a retrieval index over HTTP (DESIGN §3). With no arguments: the embedded world on
# 127.0.0.1:8000, building its index first if missing (idempotent; MiniLM + bm25s).
#
#   bash retrieval_launch.sh                         # dense, embedded world, 127.0.0.1:8000
#   bash retrieval_launch.sh --port 8001 backend=hybrid topk=5
#   bash retrieval_launch.sh --config configs/retriever/wiki18.yaml --host 0.0.0.0 token=...
#   bash retrieval_launch.sh --help                  # every config field
#
# --port/--host are shorthands for port=/host= overrides; other key=value pairs and --config go to
# `python -m search_r1.retrieval.server`. Set SEARCH_R1_RETRIEVER_TOKEN to require a bearer token.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/_env.sh"

ARGS=()
CUSTOM_INDEX=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) ARGS+=("port=${2:?--port needs a value}"); shift 2 ;;
    --port=*) ARGS+=("port=${1#--port=}"); shift ;;
    --host) ARGS+=("host=${2:?--host needs a value}"); shift 2 ;;
    --host=*) ARGS+=("host=${1#--host=}"); shift ;;
    --config) ARGS+=("--config" "${2:?--config needs a file}"); CUSTOM_INDEX=1; shift 2 ;;
    --config=*) ARGS+=("$1"); CUSTOM_INDEX=1; shift ;;
    -h|--help) exec "$PY" -m search_r1.retrieval.server --help ;;
    index_dir=*|backend=pyserini) ARGS+=("$1"); CUSTOM_INDEX=1; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

world_index_ready() {
  "$PY" -c 'import sys
from search_r1.paths import INDEX_DIR
from search_r1.retrieval.build import read_manifest
m = read_manifest(INDEX_DIR / "world")
sys.exit(0 if all(m.get(p, {}).get("done") for p in ("docstore", "dense", "bm25")) else 1)'
}

# The default index is the embedded world's: build it (or finish an interrupted build) first.
if [[ $CUSTOM_INDEX -eq 0 ]] && ! world_index_ready; then
  if [[ ! -f "${SEARCH_R1_HOME:-$ROOT/outputs}/world/corpus.jsonl" ]]; then
    echo "retrieval_launch.sh: building the embedded world first (python -m search_r1.world.build)" >&2
    "$PY" -m search_r1.world.build
  fi
  echo "retrieval_launch.sh: building the world index (one-off; resumes if interrupted)" >&2
  "$PY" "$ROOT/scripts/build_index.py"
fi

exec "$PY" -m search_r1.retrieval.server "${ARGS[@]}"
