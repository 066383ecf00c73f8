#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` or `bash scripts/test.sh tests/test_world.py`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# Every cached fixture the tests share (world, tiny model, world index, practice world and its index,
# tiny SFT model) is built before pytest: a no-op when cached. Per-test timeouts count the test body
# only (timeout_func_only in pyproject.toml), so a fixture built inside pytest is not charged either.
"${SEARCH_R1_VENV:-$ROOT/.venv}/bin/python" -m search_r1.world fixtures
exec "${SEARCH_R1_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
