#!/usr/bin/env bash
# Check, on any CPU machine, that the two GPU-node requirement sets resolve (no install, no GPU):
# pip resolves each set for this interpreter (run it with the node's Python) and prints the key pins.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
status=0
for env in gpu-sft gpu-rl; do
  report="$(mktemp)"
  if python3 -m pip install --dry-run --ignore-installed --quiet --report "$report" --target "$(mktemp -d)" \
       -r "$ROOT/requirements/$env.txt" 2>"$report.err"; then
    python3 - "$report" "$env" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
pins = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
keys = ["torch", "transformers", "vllm", "verl", "llamafactory", "peft", "trl", "flash-attn", "deepspeed"]
print(f"[{sys.argv[2]}] resolves: {len(pins)} packages; " + ", ".join(f"{k}=={pins[k]}" for k in keys if k in pins))
PY
  else
    echo "[$env] does NOT resolve:"; tail -20 "$report.err"; status=1
  fi
done
exit $status
