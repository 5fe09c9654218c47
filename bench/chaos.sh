#!/usr/bin/env bash
# A longer chaos run than CI's (tests/integration/chaos_test.cc): more faults, more jobs, any
# seed. Prints the test's fault table and invariant summary.
# Usage: bench/chaos.sh [SECONDS] [JOBS] [SEED]      (defaults: 900 s, 60 jobs, 20261130)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${LORA_BUILD_DIR:-build}"
ninja -C "$build" chaos_test lorad lora-worker lora-train > /dev/null
LORA_CHAOS_SECONDS="${1:-900}" LORA_CHAOS_JOBS="${2:-60}" LORA_CHAOS_SEED="${3:-20261130}" \
  "$build/tests/chaos_test" --gtest_brief=1
