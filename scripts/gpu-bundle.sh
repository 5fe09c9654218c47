#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on the accelerator machine into out/gpu/: lora-train,
# the gpu test suite and the training bench (debug info stripped), laid out like the build
# tree, plus the Debian shared libraries they link that a bare machine with torch lacks
# (Abseil, protobuf, sentencepiece, libstdc++). LibTorch, CUDA and NCCL are not packed: the
# accelerator's python3 has the same torch 2.11.0+cu130 wheel.
# Usage: scripts/gpu-bundle.sh   (after scripts/build.sh); then run(carry=["out/gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${LORA_BUILD_DIR:-build}
OUT=out/gpu
rm -rf "$OUT"
mkdir -p "$OUT/worker" "$OUT/tests" "$OUT/bench" "$OUT/lib" "$OUT/deps"
cp "$BUILD/worker/lora-train" "$OUT/worker/"
cp "$BUILD/tests/gpu_test" "$OUT/tests/"
cp "$BUILD/bench/train_bench" "$OUT/bench/"
cp "$BUILD/lib/liblora_sentencepiece.so" "$OUT/lib/"
for f in "$OUT"/worker/* "$OUT"/tests/* "$OUT"/bench/* "$OUT"/lib/*; do
  strip --strip-debug "$f"
done
# Every shared library they resolve here that is neither glibc's nor LibTorch's/CUDA's.
for f in "$OUT"/worker/* "$OUT"/tests/* "$OUT"/bench/* "$OUT"/lib/*; do
  ldd "$f" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  case "$lib" in
    */site-packages/*|/usr/local/cuda*|*/libc.so*|*/libm.so*|*/libdl.so*|*/libpthread.so*|*/librt.so*|*/ld-linux*|*/libgcc_s.so*) ;;
    *) cp -L "$lib" "$OUT/deps/" ;;
  esac
done
du -sh "$OUT"
