# Sourced by the entry scripts: use the checkout's .venv when it is there, else the active python.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEARCH_R1_VENV:-$ROOT/.venv}"
if [[ -x "$VENV/bin/python" ]]; then PY="$VENV/bin/python"; else PY="${PYTHON:-python3}"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
