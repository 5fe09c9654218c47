#!/usr/bin/env bash
# The GPU checks, as one prepared command for the accelerator machine (one H200, torch
# 2.11.0+cu130 in its python3, no package registry). Runs binaries built here and packed by
# scripts/gpu-bundle.sh into out/gpu (carried with the working tree), then:
#   1. lora-train version (CUDA, NCCL, the GPU's name and memory)
#   2. the `gpu` test suite (CUDA vs CPU, bf16, exact resume, OOM, two ranks on one GPU)
#   3. NCCL refuses two ranks of one communicator on one GPU (checked with torch itself)
#   4. the training bench on the GPU: debugmodel, then the Llama-3.2-1B shape at seq 2048
#      (tokens/s, MFU against the bf16 matmul rate of the same run, peak GPU memory; LoRA vs
#      full fine-tuning; PyTorch eager and torch.compile of the same loop)
# Everything lands in $OUT (default ./gpu-out). Each step has its own time limit (580 s in all,
# under the device tool's 600 s per command), so one that
# hangs cannot eat the others' time.
#   run: scripts/gpu-check.sh        (carry: out/gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
B=$ROOT/out/gpu
PY=${LORA_PYTHON:-python3}
if [ ! -x "$B/worker/lora-train" ]; then
  echo "gpu-check: $B/worker/lora-train missing: run scripts/gpu-bundle.sh here and carry out/gpu" >&2
  exit 2
fi
TORCH_LIB=$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
NV_LIBS=$("$PY" - <<'PY'
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "cu13", "lib")))
print(":".join(dict.fromkeys(dirs)))
PY
)
# The packed Debian copies of system libraries give way to the machine's own where those are
# at least as new (a newer image's Python extensions may need its newer libstdc++).
for lib in libstdc++.so.6 libutil.so.1 libz.so.1; do
  sys=$(ldconfig -p 2>/dev/null | awk -v n="$lib" '$1 == n && /x86-64/ {print $NF; exit}')
  [ -n "$sys" ] && [ -f "$B/deps/$lib" ] || continue
  if [ "$lib" = libstdc++.so.6 ] && ! grep -aq GLIBCXX_3.4.29 "$sys"; then continue; fi
  echo "gpu-check: using the machine's $sys"
  rm -f "$B/deps/$lib"
done
export LD_LIBRARY_PATH="$B/deps:$TORCH_LIB:$NV_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LORA_TEST_BINARY_DIR=$B LORA_TEST_SOURCE_DIR=$ROOT LORA_PYTHON=$PY
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c 'import torch; print("python torch", torch.__version__, torch.version.cuda)'
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# GPU_CHECK_STEPS="bench_llama1b profile_llama1b": only those steps (a rerun inside one lease).
step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  if [ -n "${GPU_CHECK_STEPS:-}" ] && [[ " $GPU_CHECK_STEPS " != *" $name "* ]]; then return; fi
  echo "=== $name (limit ${secs}s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$secs" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  tail -n 40 "$OUT/$name.txt"
}

step version 30 "$B/worker/lora-train" version
step gpu_test 140 "$B/tests/gpu_test" --gtest_color=no
# mp.spawn re-imports the main module, so the check lives in a file (not $OUT: at most 8 files
# come back from there).
NCCL_PY=$(mktemp /tmp/nccl_two_ranks.XXXXXX.py)
cat > "$NCCL_PY" <<'PY'
# NCCL with two ranks of one communicator on the same GPU: expected to fail ("Duplicate GPU").
import os, torch, torch.distributed as dist, torch.multiprocessing as mp
def rank(r):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=r, world_size=2)
    try:
        t = torch.ones(1, device="cuda:0"); dist.all_reduce(t); torch.cuda.synchronize()
        print(f"rank {r}: all_reduce on one GPU returned {t.item()}")
    except Exception as e:
        print(f"rank {r}: NCCL refused: {type(e).__name__}: {str(e)[:300]}")
    dist.destroy_process_group()
if __name__ == "__main__":
    mp.spawn(rank, nprocs=2)
PY
step nccl_two_ranks_one_gpu 60 "$PY" "$NCCL_PY"
step bench_debugmodel 70 "$B/bench/train_bench" --device cuda --flavor debugmodel \
  --seq-len 2048 --batch 8 --steps 20 --warmup 5 --dtypes bf16
step bench_llama1b 280 "$B/bench/train_bench" --device cuda --flavor llama3.2-1b \
  --seq-len 2048 --batch 4 --steps 10 --warmup 3 --dtypes bf16
# Where lora-train spends host time on the GPU (the trace holds host-side operator spans: when
# they add up to the step time the loop is launch-bound): LoRA bf16 steps, summarised
# by bench/profile_summary.py.
step profile_llama1b 90 bash -c '"$0" --row lora --dtype bf16 --device cuda:0 \
  --flavor llama3.2-1b --seq-len 2048 --batch 4 --steps 3 --warmup 2 --profile /tmp/lora1b.json \
  && "$1" "$2/bench/profile_summary.py" /tmp/lora1b.json' \
  "$B/bench/train_bench" "$PY" "$ROOT"
echo "results in $OUT"
