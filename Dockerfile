# lorad, lora-worker, lora-train and loractl on Debian 12 (CPU LibTorch 1.13 from Debian).
# GPU workers use an image built with -DLORA_WITH_CUDA=ON against a CUDA LibTorch instead.
#   docker build -t lorad .
#   docker run -p 50051:50051 -v lorad-data:/data lorad lorad --data-dir /data --listen 0.0.0.0:50051 --local-workers 1
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN LORA_BUILD_DIR=/build scripts/build.sh -DLORA_BUILD_TESTS=OFF -DLORA_BUILD_BENCH=OFF \
 && mkdir -p /out/bin /out/lib \
 && cp /build/server/lorad /build/worker/lora-worker /build/worker/lora-train /build/client/loractl /out/bin/ \
 && cp /build/lib/liblora_sentencepiece.so /out/lib/

# Same base and the same packages (the binaries link Debian's shared libraries), without the
# sources and the build tree.
FROM debian:12
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh \
 && useradd --system --create-home --home-dir /data lorad
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/lib/ /usr/local/lib/
USER lorad
WORKDIR /data
EXPOSE 50051 9464
ENTRYPOINT []
CMD ["lorad", "--data-dir", "/data", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464"]
