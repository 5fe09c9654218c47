#!/usr/bin/env bash
# Installs dependencies, builds, and runs the demo end to end on the debug model:
# a base model checkpoint, LoRA conversion to a PEFT adapter, evaluation, and a merged export.
# Usage: scripts/demo.sh [WORKDIR]   (default: ./demo-data; LORA_SKIP_INSTALL=1 skips apt)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${LORA_SKIP_INSTALL:-0}" != "1" ]; then scripts/install-deps.sh; fi
scripts/build.sh
BIN=${LORA_BUILD_DIR:-build}
TRAIN="$BIN/worker/lora-train"
WORK=${1:-demo-data}
rm -rf "$WORK"
mkdir -p "$WORK"

step() { printf '\n== %s\n' "$*"; }

step "1. A base model (debugmodel, random weights) as a Hugging Face checkpoint"
"$TRAIN" init-model --flavor debugmodel --seed 0 --out "$WORK/base"

step "2. Convert it to LoRA: the initial PEFT adapter and the conversion report"
"$TRAIN" convert --model "$WORK/base" --out "$WORK/adapter" --rank 8 --alpha 16

step "3. Evaluate base and base+adapter on held-out tokens (equal: B starts at zero)"
python3 - "$WORK/eval.jsonl" <<'PY'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as f:
    for _ in range(8):
        f.write(json.dumps({"input_ids": [random.randrange(2048) for _ in range(129)]}) + "\n")
PY
"$TRAIN" eval --model "$WORK/base" --dataset "$WORK/eval.jsonl" --seq-len 128
"$TRAIN" eval --model "$WORK/base" --adapter "$WORK/adapter" --dataset "$WORK/eval.jsonl" --seq-len 128

step "4. Merge the adapter into the base: a plain checkpoint any HF loader reads"
"$TRAIN" merge --model "$WORK/base" --adapter "$WORK/adapter" --out "$WORK/merged"

step "Done"
echo "adapter: $WORK/adapter ($(ls "$WORK/adapter" | tr '\n' ' '))"
echo "merged:  $WORK/merged ($(ls "$WORK/merged" | tr '\n' ' '))"
