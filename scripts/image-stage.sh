#!/usr/bin/env bash
# Lays out what the runtime images copy from a build, each tree as it lands in the image
# (the Dockerfile's build stage runs this; tests/deploy/rootfs_check.py runs it on a build here):
#   OUT/controller   usr/local/bin/{lorad,loractl}
#   OUT/worker       usr/local/bin/{lora-worker,lora-train}, usr/local/lib/liblora_sentencepiece.so
#                    (lora-train opens ../lib/liblora_sentencepiece.so beside its binary)
#   OUT/torch-cpu    opt/lorad/...: the torch-wheel libraries lora-train loads at start, i.e. its
#                    ldd closure (the engine always links libtorch_cuda, so cuBLAS, cuDNN, NCCL
#                    and the CUDA runtime are in it even for the CPU image)
#   OUT/torch-cuda   opt/lorad/...: every shared library of torch/lib and of the nvidia-* wheels:
#                    on a GPU, LibTorch and cuDNN also open libraries at run time (cuDNN's
#                    engines, NVRTC, cuSOLVER through libtorch_cuda_linalg) that ldd cannot see
# Under opt/lorad the libraries keep the wheel's layout (torch/lib, nvidia/*/lib), which their
# $ORIGIN/../../nvidia/... RUNPATHs expect; etc/ld.so.conf.d/lorad-torch.conf names those
# directories for ldconfig (lora-train's own RUNPATH names the build's site-packages and CUDA
# toolkit, which the images do not have). libcudart.so.13, which the build resolves in the CUDA
# toolkit, is taken from the wheel (nvidia/cu13/lib) like the rest.
# Debug info is stripped from our binaries (symbols stay, for stack traces).
# Usage: scripts/image-stage.sh BUILD_DIR OUT_DIR   (LORA_PYTHON: the Python with the torch wheel)
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD_DIR OUT_DIR" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
out=$2
python=${LORA_PYTHON:-python3}
site=$("$python" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')

rm -rf "$out"
mkdir -p "$out"
out=$(cd "$out" && pwd)
install -d "$out/controller/usr/local/bin" "$out/worker/usr/local/bin" "$out/worker/usr/local/lib"
install -m 0755 "$build/server/lorad" "$build/client/loractl" "$out/controller/usr/local/bin/"
install -m 0755 "$build/worker/lora-worker" "$build/worker/lora-train" "$out/worker/usr/local/bin/"
install -m 0644 "$build/lib/liblora_sentencepiece.so" "$out/worker/usr/local/lib/"
strip --strip-debug "$out"/controller/usr/local/bin/* "$out"/worker/usr/local/bin/* \
  "$out"/worker/usr/local/lib/*

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$site"
find torch/lib nvidia -path '*/lib/*' -type f -name '*.so*' \
  ! -name libtorch_python.so ! -name 'libshm*' | LC_ALL=C sort > "$tmp/cuda-libs"
ldd "$build/worker/lora-train" | awk '{print $1}' | LC_ALL=C sort -u > "$tmp/sonames"
while read -r lib; do
  if grep -qxF "$(basename "$lib")" "$tmp/sonames"; then echo "$lib"; fi
done < "$tmp/cuda-libs" > "$tmp/cpu-libs"
for must in torch/lib/libtorch_cpu.so torch/lib/libtorch_cuda.so nvidia/cu13/lib/libcudart.so.13; do
  if ! grep -qxF "$must" "$tmp/cpu-libs"; then
    echo "image-stage: $must is not in lora-train's closure (ldd $build/worker/lora-train)" >&2
    exit 1
  fi
done
for variant in cpu cuda; do
  dest="$out/torch-$variant"
  install -d "$dest/opt/lorad" "$dest/etc/ld.so.conf.d"
  xargs -a "$tmp/$variant-libs" cp --parents -t "$dest/opt/lorad"
  (cd "$dest/opt/lorad" && find . -type f -name '*.so*' -printf '/opt/lorad/%h\n' \
    | sed 's|/\./|/|' | LC_ALL=C sort -u) > "$dest/etc/ld.so.conf.d/lorad-torch.conf"
done
echo "image-stage: $out: $(wc -l < "$tmp/cpu-libs") torch-wheel libraries for the CPU worker," \
  "$(wc -l < "$tmp/cuda-libs") for the CUDA worker"
