#!/usr/bin/env bash
# Sanitizer suites (gcc), each in its own build dir:
#   asan  build-asan: ASan + UBSan (-fno-sanitize-recover) over the unit tests that link no
#         LibTorch (safetensors, job spec, tokenizer.json, chat templates, metrics) and the
#         fuzz replay tests; any report fails the test that triggered it.
#   tsan  build-tsan: TSan over the server's threaded code that builds without LibTorch
#         (lora_metrics: the registry and the civetweb /metrics endpoint, metrics_test).
#         Debian's abseil is not instrumented: tests/sanitizers/absl_mutex_tsan.cc, linked
#         into every TSan executable, makes absl::Mutex visible to TSan; tests/sanitizers/
#         tsan.supp lists (and explains) the suppressions.
# Usage: scripts/sanitize.sh [asan] [tsan]     (default: both)
# Env:   LORA_ASAN_BUILD_DIR (build-asan), LORA_TSAN_BUILD_DIR (build-tsan)
set -euo pipefail
cd "$(dirname "$0")/.."
SUITES=("$@")
if [ ${#SUITES[@]} -eq 0 ]; then SUITES=(asan tsan); fi
ROOT=$PWD

# Same memory rule as scripts/build.sh: one compile job per 2 GiB available.
jobs=$(nproc)
mem_jobs=$(awk '/MemAvailable/ {print int($2 / 2097152)}' /proc/meminfo)
if [ "$mem_jobs" -lt 1 ]; then mem_jobs=1; fi
if [ "$mem_jobs" -lt "$jobs" ]; then jobs=$mem_jobs; fi

configure() {
  local dir=$1
  shift
  if [ ! -f "$dir/build.ninja" ]; then
    cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLORA_BUILD_BENCH=OFF \
      -DLORA_ASAN=OFF "$@" >/dev/null
  fi
}

# Tests that link no LibTorch (see tests/CMakeLists.txt and tests/fuzz/CMakeLists.txt).
ASAN_TESTS=(safetensors_test job_spec_test data_roots_test hf_tokenizer_test chat_template_test metrics_test
  fuzz_replay_safetensors fuzz_replay_job_spec_toml fuzz_replay_job_spec_json fuzz_replay_jsonl
  fuzz_replay_hf_config fuzz_replay_tokenizer fuzz_replay_nesting
  scheduler_test retry_policy_test job_core_test job_manager_test
  worker_retry_policy_test worker_work_dir_test log_test job_observer_test
  file_manager_test worker_file_cache_test job_store_test)
# Not worker_session_writer_test: gRPC's event engine locks Debian's uninstrumented absl::Mutex,
# which our TSan shim for absl::Mutex then reports as unlocks by the wrong thread (noise).
TSAN_TESTS=(metrics_test credentials_test job_manager_test log_test file_manager_test
  worker_file_cache_test job_store_test)

run_asan() {
  local dir=${LORA_ASAN_BUILD_DIR:-build-asan}
  local flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  configure "$dir" "-DCMAKE_CXX_FLAGS=$flags" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined"
  cmake --build "$dir" -j "$jobs" --target "${ASAN_TESTS[@]}"
  # Only the targets built above: every other test is a *_NOT_BUILT placeholder here. The two
  # SentencePiece cases load lora_sentencepiece with RTLD_DEEPBIND (its protobuf clashes with
  # ours), which the sanitizer runtimes refuse outright (google/sanitizers#611).
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir "$dir" --output-on-failure --timeout 600 -j "$(nproc)" -L 'unit|fuzz' \
      -E '_NOT_BUILT$|^deploy_check$|^HfTokenizerTest.DirectoryDetectionAndConfig$|^SentencePieceTest.PiecesAndConfig$'
}

run_tsan() {
  local dir=${LORA_TSAN_BUILD_DIR:-build-tsan}
  mkdir -p "$dir"
  # Built before configuring: CMake's compiler checks link it too.
  g++ -std=c++17 -O1 -g -fPIC -c tests/sanitizers/absl_mutex_tsan.cc -o "$dir/absl_mutex_tsan.o"
  configure "$dir" "-DCMAKE_CXX_FLAGS=-fsanitize=thread" \
    "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread $ROOT/$dir/absl_mutex_tsan.o -ldl"
  cmake --build "$dir" -j "$jobs" --target "${TSAN_TESTS[@]}"
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$ROOT/tests/sanitizers/tsan.supp" \
    ctest --test-dir "$dir" --output-on-failure --timeout 600 -j "$(nproc)" \
      -L unit -E '_NOT_BUILT$|^deploy_check$'
}

for s in "${SUITES[@]}"; do
  case "$s" in
    asan) run_asan ;;
    tsan) run_tsan ;;
    *) echo "sanitize.sh: unknown suite '$s' (asan, tsan)" >&2; exit 2 ;;
  esac
done
