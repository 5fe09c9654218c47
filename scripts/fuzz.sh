#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan) and runs each for a
# bounded time, then prints target / executions / crashes. Exits non-zero when a target crashed,
# leaked, or timed out on an input; such inputs are kept under $BUILD_DIR/crashes/<target>/.
# Once a crash is fixed, its input belongs in tests/fuzz/regressions/<target>/ (the
# fuzz_replay_<target> tests replay it in every build).
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]          (default 60)
# Env:   LORA_FUZZ_BUILD_DIR   build dir (default build-fuzz)
#        LORA_FUZZ_TARGETS     targets to run (default: all but peft_config)
#        LORA_FUZZ_TORCH=1     add peft_config, which needs lora_engine built with clang + ASan
#                              (tens of minutes on 2 cores)
#        LORA_FUZZ_PARALLEL    targets fuzzed at once (default: nproc)
#        LORA_FUZZ_RSS_MB      per-process memory limit (default 2048)
#        LORA_FUZZ_SEED        libFuzzer -seed (default: random). scripts/test.sh sets 1 so a CI
#                              run is reproducible; exploring belongs to runs without a seed.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
BUILD_DIR=${LORA_FUZZ_BUILD_DIR:-build-fuzz}
TARGETS=${LORA_FUZZ_TARGETS:-safetensors job_spec_toml job_spec_json jsonl hf_config tokenizer nesting}
if [ "${LORA_FUZZ_TORCH:-0}" = "1" ]; then TARGETS="$TARGETS peft_config"; fi
PARALLEL=${LORA_FUZZ_PARALLEL:-$(nproc)}
RSS_MB=${LORA_FUZZ_RSS_MB:-2048}
SEED_ARGS=()
if [ -n "${LORA_FUZZ_SEED:-}" ]; then SEED_ARGS=(-seed="$LORA_FUZZ_SEED"); fi

if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ not found (scripts/install-deps.sh installs it)" >&2
  exit 1
fi
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ -DLORA_FUZZ=ON -DLORA_BUILD_BENCH=OFF -DLORA_ASAN=OFF >/dev/null
fi
build_targets=()
for t in $TARGETS; do build_targets+=("${t}_fuzzer"); done
# Same memory rule as scripts/build.sh: one compile job per 2 GiB available.
jobs=$(nproc)
mem_jobs=$(awk '/MemAvailable/ {print int($2 / 2097152)}' /proc/meminfo)
if [ "$mem_jobs" -lt 1 ]; then mem_jobs=1; fi
if [ "$mem_jobs" -lt "$jobs" ]; then jobs=$mem_jobs; fi
cmake --build "$BUILD_DIR" -j "$jobs" --target "${build_targets[@]}"

run_target() {
  local t=$1
  local work="$BUILD_DIR/fuzz-corpus/$t" crashes="$BUILD_DIR/crashes/$t"
  mkdir -p "$work" "$crashes"
  # New inputs go to the first (scratch) corpus dir; the checked-in seeds stay untouched.
  # halt_on_error with UBSan: a report is a crash, not a log line.
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$BUILD_DIR/tests/fuzz/${t}_fuzzer" "$work" "tests/fuzz/corpus/$t" \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$RSS_MB" -timeout=20 \
      -artifact_prefix="$crashes/" -print_final_stats=1 "${SEED_ARGS[@]}" \
      >"$BUILD_DIR/fuzz-$t.log" 2>&1
}

rm -rf "$BUILD_DIR/crashes"
declare -A pids
for t in $TARGETS; do
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || true; done
  run_target "$t" &
  pids[$t]=$!
done
failed=0
printf '%-16s %14s %10s %8s\n' target executions exec/s crashes
for t in $TARGETS; do
  rc=0
  wait "${pids[$t]}" || rc=$?
  log="$BUILD_DIR/fuzz-$t.log"
  execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log" | tail -1)
  speed=$(awk '/stat::average_exec_per_sec/ {print $NF}' "$log" | tail -1)
  crashes=$(find "$BUILD_DIR/crashes/$t" -type f | wc -l)
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi  # died without an artifact
  printf '%-16s %14s %10s %8s\n' "$t" "${execs:-?}" "${speed:-?}" "$crashes"
  if [ "$crashes" -ne 0 ]; then
    failed=1
    echo "--- $t (rc $rc): inputs in $BUILD_DIR/crashes/$t/, log $log" >&2
    grep -E -m 20 'ERROR|SUMMARY|runtime error|#[0-9]+ 0x' "$log" >&2 || tail -20 "$log" >&2
  fi
done
exit "$failed"
