#!/usr/bin/env bash
# Installs every Debian 12 package that building, running and testing lorad needs.
# Usage: scripts/install-deps.sh   (as root, or with sudo available)
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang-format sentencepiece
  # engine: LibTorch 1.13 (CPU), Gloo headers for c10d, a fast BLAS (mandatory at run time)
  libtorch-dev libgloo-dev libopenblas0-pthread libsentencepiece-dev
  # service: gRPC 1.51, Protobuf 3.21, Abseil, SQLite, civetweb (metrics HTTP)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libsqlite3-dev sqlite3 libcivetweb-dev
  # config and CLI parsing
  nlohmann-json3-dev libtoml11-dev libcli11-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev python3 python3-torch python3-numpy
  prometheus tmux procps python3-yaml
)

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${PACKAGES[@]}"

# LibTorch's fp32 matmul goes through the libblas.so.3 alternative; Debian's reference BLAS is
# ~30x slower than OpenBLAS here, so make sure the pthread OpenBLAS is the selected one.
for alt in libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu; do
  target=$(update-alternatives --list "$alt" 2>/dev/null | grep openblas-pthread | head -n1 || true)
  if [ -n "$target" ]; then $SUDO update-alternatives --set "$alt" "$target"; fi
done
