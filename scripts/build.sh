#!/usr/bin/env bash
# Configures and builds everything into build/ (incremental; ccache when available).
# Usage: scripts/build.sh [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${LORA_BUILD_DIR:-build}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
fi
# Each LibTorch translation unit needs ~1 GiB of compiler memory: one job per 2 GiB, at most nproc.
jobs=$(nproc)
mem_jobs=$(( $(awk '/MemAvailable/ {print int($2 / 2097152)}' /proc/meminfo) ))
if [ "$mem_jobs" -lt 1 ]; then mem_jobs=1; fi
if [ "$mem_jobs" -lt "$jobs" ]; then jobs=$mem_jobs; fi
cmake --build "$BUILD_DIR" -j "$jobs"
