#!/usr/bin/env bash
# Installs dependencies, builds, and runs the demo end to end:
#   1. the engine alone: a random debugmodel checkpoint, LoRA conversion, a merged export;
#   2. the service: lorad with a local worker, `loractl submit --watch` of
#      configs/llama3_debugmodel_lora.toml (held-out loss falls by more than half), then
#      `loractl download` of the trained PEFT adapter; lorad is stopped at the end.
# Usage: scripts/demo.sh [WORKDIR]   (default ./demo-data; LORA_SKIP_INSTALL=1 skips apt)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${LORA_SKIP_INSTALL:-0}" != "1" ]; then scripts/install-deps.sh; fi
scripts/build.sh
BIN=${LORA_BUILD_DIR:-build}
TRAIN="$BIN/worker/lora-train"
LORACTL="$BIN/client/loractl"
WORK=${1:-demo-data}
rm -rf "$WORK"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

step() { printf '\n== %s\n' "$*"; }

step "1. The engine: a base model (debugmodel, random weights) as a Hugging Face checkpoint"
"$TRAIN" init-model --flavor debugmodel --seed 0 --out "$WORK/base"

step "2. Convert it to LoRA: the conversion report and the initial PEFT adapter"
"$TRAIN" convert --model "$WORK/base" --out "$WORK/initial-adapter" --rank 8 --alpha 16

step "3. Merge an adapter into the base: a plain checkpoint any HF loader reads"
"$TRAIN" merge --model "$WORK/base" --adapter "$WORK/initial-adapter" --out "$WORK/merged"

step "4. The service: lorad with one local worker"
"$BIN/server/lorad" --data-dir "$WORK/lorad" --listen 127.0.0.1:0 --port-file "$WORK/lorad.port" \
  --metrics-listen 127.0.0.1:0 --local-workers 1 > "$WORK/lorad.log" 2>&1 &
LORAD_PID=$!
trap 'kill $LORAD_PID 2>/dev/null || true; wait $LORAD_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$WORK/lorad.port" ] && break; sleep 0.1; done
export LORACTL_ADDR="127.0.0.1:$(cat "$WORK/lorad.port")"
echo "lorad pid $LORAD_PID on $LORACTL_ADDR (log: $WORK/lorad.log)"

step "5. loractl submit --watch: LoRA fine-tuning of debugmodel on synthetic sums"
"$LORACTL" submit configs/llama3_debugmodel_lora.toml --request-id demo-1 --watch | tee "$WORK/watch.log"
JOB=$(head -n 1 "$WORK/watch.log")

step "6. The job, its checkpoints, and the trained adapter"
"$LORACTL" get "$JOB"
"$LORACTL" checkpoints "$JOB"
"$LORACTL" download "$JOB" --out "$WORK/adapter"

step "7. The downloaded adapter reproduces the reported held-out loss"
"$TRAIN" eval --job configs/llama3_debugmodel_lora.toml --adapter "$WORK/adapter"

step "Done"
echo "trained PEFT adapter: $WORK/adapter"
ls -l "$WORK/adapter"
kill "$LORAD_PID"
wait "$LORAD_PID" || true
trap - EXIT
echo "lorad stopped"
