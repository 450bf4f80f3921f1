# syntax=docker/dockerfile:1
# One multi-stage file, one target per binary:
#   docker build --target videochat-operator  -t ghcr.io/videochat-dev/videochat-operator:0.1.0 .
#   docker build --target videochat-signaling -t ghcr.io/videochat-dev/videochat-signaling:0.1.0 .
#   docker build --target videochat-turn      -t ghcr.io/videochat-dev/videochat-turn:0.1.0 .
# Runtime images are distroless (glibc, CA certificates, no shell) and run as
# the unprivileged `nonroot` user (uid 65532), the uid the operator's pod
# security contexts expect.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Manifests first so the dependency layer is reused while only sources change.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY turn-server/Cargo.toml turn-server/Cargo.toml
COPY signaling/Cargo.toml signaling/Cargo.toml
COPY operator/Cargo.toml operator/Cargo.toml
# Placeholder targets so cargo can read the manifests; the real sources
# replace them below (only fetched crates are kept from this layer).
RUN for crate in turn-server signaling operator; do \
        mkdir -p "$crate/src" && touch "$crate/src/lib.rs" "$crate/src/main.rs"; \
    done \
 && cargo fetch --locked
COPY turn-server turn-server
COPY signaling signaling
COPY operator operator
RUN --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        --bin videochat-turn --bin videochat-signaling --bin videochat-operator \
 && mkdir -p /out \
 && cp target/release/videochat-turn target/release/videochat-signaling target/release/videochat-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS videochat-turn
COPY --from=build /out/videochat-turn /usr/local/bin/videochat-turn
USER 65532:65532
# TURN on UDP and TCP, admin HTTP (health, metrics, drain).
EXPOSE 3478/udp 3478/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/videochat-turn"]

FROM gcr.io/distroless/cc-debian12:nonroot AS videochat-signaling
COPY --from=build /out/videochat-signaling /usr/local/bin/videochat-signaling
USER 65532:65532
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/videochat-signaling"]

FROM gcr.io/distroless/cc-debian12:nonroot AS videochat-operator
COPY --from=build /out/videochat-operator /usr/local/bin/videochat-operator
USER 65532:65532
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/videochat-operator"]
CMD ["run"]
