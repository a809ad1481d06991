# syntax=docker/dockerfile:1
# The paystream binary (one binary, a subcommand per process) on Debian bookworm.
#   docker build -t paystream .        or: docker compose build
# Only what the build needs is copied (no .git, no target/, no local state), so there is no
# .dockerignore to keep in step. A new workspace member needs a COPY line below.

FROM rust:1-bookworm AS builder

# rdkafka-sys (default features) builds its bundled librdkafka with librdkafka's own
# configure + make; libz-sys links the system zlib through pkg-config; openssl-sys (reqwest's
# native-tls) links the system OpenSSL; librocksdb-sys compiles RocksDB's C++ (g++) and generates
# its bindings with bindgen, which loads libclang.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc g++ perl python3 zlib1g-dev libssl-dev pkg-config libclang-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY topology/ topology/
COPY schemas/ schemas/
COPY processors/ processors/
COPY api/ api/
COPY stack/ stack/
COPY cli/ cli/
COPY bench/ bench/
COPY provider-sim/ provider-sim/
COPY audit/ audit/
COPY wallet/ wallet/
COPY monitor/ monitor/
# Embedded into the binary at compile time by sqlx::migrate!.
COPY migrations/ migrations/

# Registry, git checkouts and target/ are cache mounts: rebuilds only recompile what changed.
# The binary is copied out of the cache mount, which is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin paystream \
 && install -m 0755 target/release/paystream /usr/local/bin/paystream

FROM debian:bookworm-slim

# Shared libraries the binary links besides libc: zlib (in the base image) and OpenSSL 3.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home paystream

COPY --from=builder /usr/local/bin/paystream /usr/local/bin/paystream
# Connector definitions for `paystream connect apply` (its default --dir is ./connect).
# They hold no secrets: passwords are ${env:...} references resolved by Kafka Connect.
COPY connect/ /app/connect/
# Local state of the topology processes (saga, timers): RocksDB stores and checkpoints, on a
# volume owned by the service user.
RUN mkdir -p /var/lib/paystream/state && chown -R paystream:paystream /var/lib/paystream

WORKDIR /app
USER paystream
# The paystream API and /metrics.
EXPOSE 8080
ENTRYPOINT ["paystream"]
CMD ["--help"]
