#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test suite (what CI runs): the format check
# (scripts/format-check.sh), the main ctest, then
# a bounded fuzz run of every parser (scripts/fuzz.sh, clang) and the sanitizer suites
# (scripts/sanitize.sh: ASan/UBSan and TSan builds).
# Usage: scripts/test.sh            (LORA_SKIP_INSTALL=1 skips the apt step;
#                                    LORA_SKIP_FUZZ=1, LORA_SKIP_SANITIZERS=1 skip those stages;
#                                    LORA_FUZZ_SECONDS sets the time per fuzz target, default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${LORA_SKIP_INSTALL:-0}" != "1" ]; then scripts/install-deps.sh; fi
scripts/format-check.sh
scripts/build.sh
(cd "${LORA_BUILD_DIR:-build}" && ctest --output-on-failure --timeout 600 -j "$(nproc)" "$@")
if [ "${LORA_SKIP_FUZZ:-0}" != "1" ]; then LORA_FUZZ_SEED=${LORA_FUZZ_SEED:-1} scripts/fuzz.sh "${LORA_FUZZ_SECONDS:-20}"; fi
if [ "${LORA_SKIP_SANITIZERS:-0}" != "1" ]; then scripts/sanitize.sh; fi
