#!/usr/bin/env bash
# Load + convert + export time and peak memory of `lora-train convert`, for debugmodel and a
# ~1.2B-parameter model (the Llama-3.2-1B shape) written by `lora-train init-model`; then
# safetensors read throughput against cat on the 1B file.
# Usage: bench/convert_bench.sh [WORKDIR]   (needs ~8 GiB free disk and ~6 GiB RAM)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${LORA_BUILD_DIR:-build}
TRAIN="$BIN/worker/lora-train"
WORK=${1:-/tmp/lora-convert-bench}
mkdir -p "$WORK"

[ -f "$WORK/debug/config.json" ] || "$TRAIN" init-model --flavor debugmodel --out "$WORK/debug" >/dev/null
[ -f "$WORK/1b/config.json" ] || "$TRAIN" init-model --flavor llama3.2-1b --dtype bfloat16 --out "$WORK/1b"

REPEAT=${REPEAT:-3}
echo "best of $REPEAT runs by total time (machine is shared), warm page cache"
printf '%-7s %-9s %12s %8s %8s %8s %8s %10s %11s\n' model load_as params load_s conv_s export_s total_s peak_rss adapter_MB
for spec in "debug float32" "debug bfloat16" "1b bfloat16" "1b float32"; do
  set -- $spec
  for i in $(seq "$REPEAT"); do
    cat "$WORK/$1"/*.safetensors > /dev/null  # warm page cache: measure our work, not the disk
    "$TRAIN" convert --model "$WORK/$1" --out "$WORK/adapter-$1-$2" --dtype "$2" --json | tr -d '\n'
    echo
  done | python3 -c '
import json, sys
runs = [json.loads(l) for l in sys.stdin if l.strip()]
j = min(runs, key=lambda r: r["timing_seconds"]["total"]); t = j["timing_seconds"]
print("%-7s %-9s %12d %8.3f %8.3f %8.3f %8.3f %9.2fG %11.2f" % (sys.argv[1], sys.argv[2], j["total_parameters"],
      t["load"], t["convert"], t["export"], t["total"], max(r["peak_rss_bytes"] for r in runs) / 2**30, j["adapter_bytes"] / 1e6))' "$1" "$2"
done
echo
"$BIN/bench/safetensors_read_bench" "$WORK/1b/model.safetensors" --repeat 3
