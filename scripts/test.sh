#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` or `bash scripts/test.sh tests/test_world.py`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# The embedded world and the tiny base model are shared test fixtures: build them (cached) before
# pytest, so their few minutes of CPU time are not charged to one test's timeout.
"${SEARCH_R1_VENV:-$ROOT/.venv}/bin/python" -m search_r1.world
exec "${SEARCH_R1_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
