#!/usr/bin/env bash
# Entry point: train_sft (not built yet — see the open issues).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/_env.sh"
echo "train_sft.sh: this stage is not built yet" >&2
exit 2
