# syntax=docker/dockerfile:1
# Three images from one build (docs/OPERATIONS.md, "Images"):
#   docker build --target controller  -t lorad-controller:0.1.0  .   # lorad + loractl, no LibTorch
#   docker build --target worker-cpu  -t lora-worker-cpu:0.1.0   .   # lora-worker + lora-train
#   docker build --target worker-cuda -t lora-worker-cuda:0.1.0  .   # the same, for GPU nodes
# The stages after `build` hold only what runs: the binaries, the Debian runtime libraries their
# ELF headers name (tests/deploy/image_check.py compares each image's apt list with `ldd` of the
# binaries) and, for the workers, LibTorch's shared libraries from the torch wheel.
# tests/deploy/rootfs_check.py runs these stages' instructions on a debootstrapped Debian root and
# the images' commands on read-only roots, without a Docker engine.
#
# Base images are pinned to exact version tags: debian 12.11, the point release the project's
# machines run, whose sonames (libgrpc29, libre2-9, libabsl20220623, ...) the binaries are built
# against. Pin them further by digest when you build (`docker buildx imagetools inspect
# debian:12.11-slim`): digests cannot be looked up from the machines that wrote this file, which
# reach no registry but Debian's and PyPI, and run no Docker engine.
#
# No nvidia/cuda base: those images are Ubuntu (noble ships libre2-10 and the t64 libraries, not
# the Debian 12 sonames above), and every CUDA 13.0 user-space library lora-train loads (cudart,
# cuBLAS, cuDNN, NCCL, ...) comes from the torch wheel's pinned nvidia-* dependencies, so a
# CUDA runtime base would only add an unused second copy. The driver (libcuda.so) comes from the
# node through the NVIDIA container toolkit, as with any CUDA image.

# ---------------------------------------------------------------------------------------------
# build: the project's own toolchain (scripts/install-deps.sh, requirements.txt) plus the CUDA
# 13.0 toolkit, which CMake's LibTorch config needs (nvcc, headers); CMakeLists.txt finds
# LibTorch through this Python's torch (the pinned torch 2.11.0 CUDA 13.0 wheel). Every image
# needs this stage: lorad and loractl link no LibTorch, but the project configures with it.
FROM debian:12.11 AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates wget \
 && wget -q https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
 && dpkg -i cuda-keyring_1.1-1_all.deb && rm cuda-keyring_1.1-1_all.deb \
 && apt-get update && apt-get install -y --no-install-recommends cuda-toolkit-13-0 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:$PATH
COPY requirements.txt requirements.txt
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh && rm -rf /var/lib/apt/lists/* /root/.cache/pip
COPY . .
RUN LORA_BUILD_DIR=/build scripts/build.sh \
      -DLORA_BUILD_TESTS=OFF -DLORA_BUILD_BENCH=OFF -DLORA_PYTHON=/usr/bin/python3
# What the runtime stages copy, laid out as they install it (COPY --from=build /out/X/ /): our
# binaries, and the torch-wheel libraries under /opt/lorad with an ld.so.conf.d entry (see the
# script: the CPU image gets lora-train's ldd closure, the CUDA image every wheel library).
RUN LORA_PYTHON=/usr/bin/python3 scripts/image-stage.sh /build /out

# ---------------------------------------------------------------------------------------------
# controller: lorad and loractl. The apt list is exactly the packages that own the libraries
# `ldd lorad loractl` names, less those already in debian:12.11-slim (libc6, libgcc-s1,
# libstdc++6, zlib1g); tests/deploy/image_check.py keeps it so.
# libpq5 and the Kerberos, LDAP and SASL libraries it links are the PostgreSQL store's (replicas).
# Writes only under /data (--data-dir) and /tmp (SQLite's temporary files): with a read-only root
# file system mount both (deploy/ does).
FROM debian:12.11-slim AS controller
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libcivetweb1 libgrpc++1.51 libgrpc29 libprotobuf32 libre2-9 \
      libsqlite3-0 libssl3 \
      libpq5 libgssapi-krb5-2 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 \
      libldap-2.5-0 libsasl2-2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 lorad \
 && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --no-log-init \
      --shell /usr/sbin/nologin lorad \
 && install -d -o 10001 -g 10001 -m 0750 /data
COPY --from=build /out/controller/ /
USER 10001:10001
WORKDIR /data
EXPOSE 50051 9464
# /healthz on the metrics listener answers 200 while lorad runs (bash's /dev/tcp: no HTTP client
# in the image). Kubernetes ignores HEALTHCHECK: deploy/ probes the same path.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && IFS= read -r -t 4 line <&3 && [[ $line == HTTP/1.?' 200'* ]]"]
ENTRYPOINT []
# Beyond loopback lorad wants credentials: mount tokens.csv (or pass --tls-client-ca / a worker
# token) and TLS files; see docs/OPERATIONS.md. It refuses to start without them, naming why.
CMD ["lorad", "--data-dir", "/data", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464", \
     "--local-workers", "0", "--auth-tokens-file", "/etc/lorad/tokens/tokens.csv"]

# ---------------------------------------------------------------------------------------------
# worker-base: what both worker images share. The apt list is exactly the packages that own the
# Debian libraries `ldd lora-worker lora-train liblora_sentencepiece.so` names, less those in
# debian:12.11-slim; the torch-wheel libraries come from the build stage (below).
FROM debian:12.11-slim AS worker-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libabsl20220623 libc-ares2 libgrpc++1.51 libgrpc29 libprotobuf32 libre2-9 libsentencepiece0 \
      libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10002 lora-worker \
 && useradd --uid 10002 --gid 10002 --home-dir /tmp --no-create-home --no-log-init \
      --shell /usr/sbin/nologin lora-worker \
 && install -d -o 10002 -g 10002 -m 0750 /scratch
COPY --from=build /out/worker/ /
# Whatever LibTorch or CUDA write under $HOME (CUDA's JIT cache) goes to /tmp, which deploy/
# mounts writable; the work directory is /scratch.
ENV HOME=/tmp
WORKDIR /scratch
# lora-worker writes its pid into <work-dir>/lora-worker.lock once it holds the work directory
# (after its TLS files and `lora-train version` checked out): healthy while that process is
# lora-worker. deploy/ uses the same command as the workers' liveness probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["sh", "-c", "read -r pid < /scratch/lora-worker.lock && grep -qx lora-worker /proc/$pid/comm"]
ENTRYPOINT []

# worker-cpu: lora-train's start-up closure of the torch wheel (20 libraries, 2.7 GB: the engine
# always links the CUDA build, so the CUDA libraries it names load even where no GPU exists).
FROM worker-base AS worker-cpu
COPY --from=build /out/torch-cpu/ /
RUN ldconfig
USER 10002:10002
CMD ["lora-worker", "--controller", "lorad:50051", "--work-dir", "/scratch", "--device", "cpu"]

# worker-cuda: every library of the torch and nvidia-* wheels (CUDA 13.0.2 runtime, cuBLAS,
# cuDNN 9, NCCL 2.28, ...). The node needs an NVIDIA driver for CUDA 13.0 (R580 or newer) and
# the NVIDIA container toolkit; NVIDIA_REQUIRE_CUDA makes it refuse an older driver at start.
# NVIDIA_VISIBLE_DEVICES is left to the device plugin or `docker run --gpus`: an image default of
# `all` would hand every GPU of a node to a pod that requested none.
FROM worker-base AS worker-cuda
COPY --from=build /out/torch-cuda/ /
RUN ldconfig
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"
USER 10002:10002
CMD ["lora-worker", "--controller", "lorad:50051", "--work-dir", "/scratch", "--device", "cuda"]
