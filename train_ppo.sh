#!/usr/bin/env bash
# Post-distillation RL.
#
#   bash train_ppo.sh                                      # single-machine PPO on the embedded world (CPU or 1 GPU)
#   bash train_ppo.sh trainer.total_training_steps=5       # + overrides (python -m search_r1.rl.trainer --help)
#   bash train_ppo.sh --resume                             # continue the run from its latest checkpoint
#   bash train_ppo.sh --config configs/rl/tiny_grpo.yaml   # another single-machine preset
#   bash train_ppo.sh --config configs/rl/verl_ppo.yaml [hydra overrides]   # verl on a GPU node (docs/rl.md)
#
# Single-machine presets start from the SFT checkpoint train_sft.sh wrote for the same preset
# (outputs/runs/sft/<preset>/merged) when there is one, else from the base model; the first line
# says which. A config with a Hydra `defaults:` list is a verl config: it is checked against verl's
# own defaults and validation, then run by `python -m search_r1.rl.verl_main` (verl's main_ppo with
# search metrics on every training step).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/_env.sh"
cd "$ROOT"
export TOKENIZERS_PARALLELISM=false

CONFIG=configs/rl/tiny_ppo.yaml
if [[ "${1:-}" == "--config" ]]; then CONFIG="${2:?--config needs a file}"; shift 2; fi
if [[ "${1:-}" == --config=* ]]; then CONFIG="${1#--config=}"; shift; fi

for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then exec "$PY" -m search_r1.rl.trainer --help; fi
done
[[ -f "$CONFIG" ]] || { echo "train_ppo.sh: error: no such config file: $CONFIG" >&2; exit 2; }

if grep -q '^defaults:' "$CONFIG"; then
  # verl: the config must compose over verl's defaults with no unknown keys and pass validate_config.
  # search_r1.rl.verl_main is verl.trainer.main_ppo (same arguments) plus our search metrics every step.
  NAME="$(basename "$CONFIG" .yaml)"
  DIR="$(cd "$(dirname "$CONFIG")" && pwd)"
  echo "train_ppo.sh: verl PPO with $CONFIG"
  "$PY" -m search_r1.rl.verl_config "$NAME" "$@"
  exec "$PY" -m search_r1.rl.verl_main --config-path="$DIR" --config-name="$NAME" \
    'hydra.searchpath=[pkg://verl.trainer.config]' "$@"
fi

# Single machine: a bad key or value is reported now (exit 2, one line), not after the builds below.
OVERRIDES=()
for arg in "$@"; do [[ "$arg" == "--resume" ]] || OVERRIDES+=("$arg"); done
"$PY" -c 'import sys; from search_r1.config import parse_config; from search_r1.rl.config import PPOConfig
parse_config(PPOConfig, "", None, sys.argv[1:], prog="train_ppo.sh")' --config "$CONFIG" "${OVERRIDES[@]}"

# The embedded world, its tiny model and its index (built once, cached).
PRESET="$(basename "$CONFIG" .yaml)"; PRESET="${PRESET%%_*}"          # tiny_ppo -> tiny
SFT="${SEARCH_R1_HOME:-outputs}/runs/sft/$PRESET/merged"
MODEL_ARGS=()
if [[ -f "$SFT/config.json" ]]; then
  echo "train_ppo.sh: starting from the SFT checkpoint $SFT"
  MODEL_ARGS=("actor_rollout_ref.model.path=$SFT")
else
  echo "train_ppo.sh: starting from the base model in $CONFIG (no SFT checkpoint at $SFT; run train_sft.sh first)"
fi
"$PY" -m search_r1.world >&2
"$PY" - <<'PYEOF' || "$PY" scripts/build_index.py >&2
import sys
from search_r1.paths import INDEX_DIR
from search_r1.retrieval.build import read_manifest
m = read_manifest(INDEX_DIR / "world")
sys.exit(0 if all(m.get(p, {}).get("done") for p in ("docstore", "dense", "bm25")) else 1)
PYEOF
exec "$PY" -m search_r1.rl.trainer --config "$CONFIG" "${MODEL_ARGS[@]}" "$@"
