# lorad, lora-worker, lora-train and loractl on Debian 12. lora-train links the torch 2.11.0
# wheel from PyPI (CUDA 13.0 build, requirements.txt): one image for CPU and GPU workers.
#   docker build -t lorad .
#   docker run -p 50051:50051 -v lorad-data:/data lorad lorad --data-dir /data --listen 0.0.0.0:50051 --local-workers 1
# Not built in CI (no Docker engine on the project's machines); issue 14 owns production images.
FROM debian:12 AS build
WORKDIR /src
# The CUDA 13.0 toolkit (nvcc, cuBLAS, NCCL headers): CMake's LibTorch config needs it to build.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates wget \
 && wget -q https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
 && dpkg -i cuda-keyring_1.1-1_all.deb && rm cuda-keyring_1.1-1_all.deb \
 && apt-get update && apt-get install -y --no-install-recommends cuda-toolkit-13-0 libnccl-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:$PATH
COPY requirements.txt requirements.txt
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh && rm -rf /var/lib/apt/lists/* /root/.cache/pip
COPY . .
RUN LORA_BUILD_DIR=/build scripts/build.sh -DLORA_BUILD_TESTS=OFF -DLORA_BUILD_BENCH=OFF \
 && mkdir -p /out/bin /out/lib \
 && cp /build/server/lorad /build/worker/lora-worker /build/worker/lora-train /build/client/loractl /out/bin/ \
 && cp /build/lib/liblora_sentencepiece.so /out/lib/

# Same base and packages (the binaries link Debian's shared libraries and the torch wheel at
# the same path), without the toolkit, the sources and the build tree. The NVIDIA driver comes
# from the node (nvidia-container-toolkit); the CUDA runtime, cuBLAS, cuDNN and NCCL from the
# wheel's nvidia-* dependencies.
FROM debian:12
COPY requirements.txt /tmp/requirements.txt
COPY scripts/install-deps.sh /tmp/scripts/install-deps.sh
RUN /tmp/scripts/install-deps.sh && rm -rf /var/lib/apt/lists/* /tmp/scripts /tmp/requirements.txt /root/.cache/pip \
 && useradd --system --create-home --home-dir /data lorad
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/lib/ /usr/local/lib/
USER lorad
WORKDIR /data
EXPOSE 50051 9464
ENTRYPOINT []
CMD ["lorad", "--data-dir", "/data", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464"]
