#!/usr/bin/env bash
# Installs every Debian 12 package and every Python package (requirements.txt, pinned) that
# building, running and testing lorad needs.
# Usage: scripts/install-deps.sh   (as root, or with sudo available)
# LORA_PYTHON names the Python to install into (default: python3 on PATH); CMake uses the same.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git clang-format sentencepiece clang libclang-rt-14-dev
  # engine: LibTorch comes from PyPI (requirements.txt). The torch wheel leaves out gloo's
  # headers, which its ProcessGroupGloo.hpp includes for declarations only: Debian's
  # libgloo-dev supplies them (nothing links libgloo; the Gloo that runs is inside
  # libtorch_cpu). The CUDA 13.0 toolkit with NCCL is part of the machine image.
  libgloo-dev libsentencepiece-dev
  # service: gRPC 1.51, Protobuf 3.21, Abseil, SQLite, civetweb (metrics HTTP)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libsqlite3-dev sqlite3 libcivetweb-dev
  # PostgreSQL store's client library and the server its tests start
  libpq-dev postgresql
  # config and CLI parsing
  nlohmann-json3-dev libtoml11-dev libcli11-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev python3 python3-pip python3-venv
  prometheus tmux procps
  # loractl's completion scripts are checked by the shells they are for
  zsh fish
)

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${PACKAGES[@]}"

# Python packages: one pinned list. pip's cache keeps reruns fast; an already satisfied
# requirement costs nothing.
PYTHON=${LORA_PYTHON:-$(command -v python3)}
PIP_FLAGS=(--disable-pip-version-check --no-input)
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  echo "install-deps: $PYTHON has no pip" >&2
  exit 1
fi
# Debian's own Python refuses system-wide pip installs (PEP 668); a pyenv or venv Python does not.
if "$PYTHON" -c 'import sys; sys.exit(0 if sys.prefix == sys.base_prefix and sys.prefix == "/usr" else 1)'; then
  PIP_FLAGS+=(--break-system-packages)
fi
$SUDO "$PYTHON" -m pip install "${PIP_FLAGS[@]}" -r "$(dirname "$0")/../requirements.txt"
