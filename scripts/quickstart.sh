#!/usr/bin/env bash
# The main job on the embedded default: set-up, then the whole experiment — world and index build,
# retriever, teacher generation + LoRA SFT, RL from the SFT checkpoint and from the base model,
# evaluation of the four groups on the test split, and the comparison table (printed and written to
# outputs/runs/experiment/<preset>/results.{md,json,png}). Runs on a 2-core CPU with no downloads beyond
# the package registries. Tracked files are left alone; publish=true also copies the table to docs/results/.
#
#   bash scripts/quickstart.sh                       # tiny preset
#   bash scripts/quickstart.sh publish=true          # ... and publish it as docs/results/<preset>.*
#   bash scripts/quickstart.sh seeds=[0,1,2]         # any ExperimentConfig override (see --help)
#   bash scripts/quickstart.sh --config configs/experiment/smol.yaml
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
source "$ROOT/scripts/_env.sh"
cd "$ROOT"
# The embedded presets set HF_HUB_OFFLINE in their `env:`; a paper-scale preset downloads its models.
export TOKENIZERS_PARALLELISM=false WANDB_MODE="${WANDB_MODE:-disabled}"
exec "$PY" -m search_r1.experiment "$@"
