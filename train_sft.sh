#!/usr/bin/env bash
# Process distillation: teacher trajectories -> filters -> LLaMA-Factory export -> LoRA SFT -> merge.
#
#   bash train_sft.sh                                   # tiny preset on the embedded world
#   bash train_sft.sh --config configs/sft/smol.yaml    # another preset
#   bash train_sft.sh generate.n_samples=4 llamafactory.learning_rate=1e-3   # overrides (any stage)
#
# Every stage resumes: generation skips finished questions, LLaMA-Factory continues from the newest
# checkpoint in <run_dir>/lora. Set SFT_SKIP_EVAL=1 to skip the before/after EM check at the end.
# Needs the retriever service at generate.retriever_url; for the embedded world it is started here
# (and stopped at exit) when nothing answers there. Practice worlds (practice.worlds, tiny preset: 2)
# are built, indexed and served one at a time by sft.generate, with the same retriever backend.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/_env.sh"
cd "$ROOT"
export TOKENIZERS_PARALLELISM=false

CONFIG=configs/sft/tiny.yaml
if [[ "${1:-}" == "--config" ]]; then CONFIG="$2"; shift 2; fi
ARGS=(--config "$CONFIG" "$@")

# Resolved settings (model, world, run dir, retriever) from the same typed config the stages use; a
# bad key or value ends the script here (exit 2: an assignment keeps the status that eval would lose).
SETTINGS="$("$PY" - "${ARGS[@]}" <<'PYEOF'
import shlex, sys
from pathlib import Path
from search_r1.config import parse_config
from search_r1.paths import MODELS_DIR
from sft.config import DEFAULT_CONFIG, SFTConfig
c = parse_config(SFTConfig, "train_sft", DEFAULT_CONFIG, sys.argv[1:], prog="train_sft.sh")
for k, v in dict(MODEL=c.model, WORLD=c.world_dir, RUN=c.root, URL=c.generate.retriever_url,
                 PROTOCOL=c.generate.protocol, MERGE=int(c.merge), CHECK_SPLIT=c.check.split,
                 CHECK_N=c.check.max_questions, CHECK_DEVICE=c.check.device,
                 TINY=int(Path(c.model) == MODELS_DIR / "tiny-base")).items():
    print(f"{k}={shlex.quote(str(v))}")
PYEOF
)"
eval "$SETTINGS"

echo "[train_sft] config $CONFIG -> $RUN"
mkdir -p "$RUN"
if [[ "$TINY" == 1 ]]; then  # the default student: build the world and the tiny base model if missing
  "$PY" -c "from search_r1.world.setup import ensure_world, ensure_tiny_model; ensure_tiny_model(ensure_world())"
fi

SERVER_PID=""
cleanup() { if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT
if ! curl -sf "$URL/health" >/dev/null 2>&1; then
  echo "[train_sft] no retriever at $URL: building/serving the embedded world's index"
  "$PY" scripts/build_index.py
  PORT="${URL##*:}"
  "$PY" -m search_r1.retrieval.server port="${PORT%%/*}" > "$RUN.retriever.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 120); do curl -sf "$URL/health" >/dev/null 2>&1 && break; sleep 1; done
  curl -sf "$URL/health" >/dev/null || { echo "retriever did not start, see $RUN.retriever.log" >&2; exit 1; }
fi

"$PY" -m sft.generate "${ARGS[@]}"
"$PY" -m sft.filters "${ARGS[@]}"
"$PY" -m sft.export "${ARGS[@]}"
"$PY" -m sft.train "${ARGS[@]}"

if [[ "$MERGE" == 1 && "${SFT_SKIP_EVAL:-0}" != 1 ]]; then
  "$PY" -m sft.evaluate "models=[$MODEL,$RUN/merged]" world_dir="$WORLD" retriever_url="$URL" \
    protocol="$PROTOCOL" split="$CHECK_SPLIT" max_questions="$CHECK_N" device="$CHECK_DEVICE" \
    out="$RUN/eval_test.json"
fi
[[ "$MERGE" == 1 ]] && echo "[train_sft] merged model: $RUN/merged"
