#!/usr/bin/env bash
# Installs dependencies, builds, and runs every test suite (what CI runs).
# Usage: scripts/test.sh            (LORA_SKIP_INSTALL=1 skips the apt step)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${LORA_SKIP_INSTALL:-0}" != "1" ]; then scripts/install-deps.sh; fi
scripts/build.sh
cd "${LORA_BUILD_DIR:-build}"
ctest --output-on-failure --timeout 600 -j "$(nproc)" "$@"
