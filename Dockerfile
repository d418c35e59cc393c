# syntax=docker/dockerfile:1
# The exportd image: a release build on the Rust image, then the binary alone on a distroless
# base (glibc and CA certificates, no shell, no package manager), run as a non-root user.
#   docker build -t exportd .
#   docker run -p 50051:50051 exportd serve --dev --listen 0.0.0.0:50051
# The Helm chart (helm/exportd) runs this image: `exportd migrate` in an init container, then
# `exportd serve --listen 0.0.0.0:50051` with its settings from a ConfigMap and Secrets.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Everything the build reads: the manifest and lock file, the protos build.rs compiles, the
# sources, and the benches that Cargo.toml declares.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
# Cache mounts keep the crate registry and the build between image builds; the binary is
# copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin exportd \
    && cp target/release/exportd /usr/local/bin/exportd

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/exportd /usr/local/bin/exportd
# distroless' nonroot user (65532), the uid the Helm chart runs as. `serve --dev` keeps its data
# under ./exportd-data, the user's home.
USER 65532:65532
WORKDIR /home/nonroot
# gRPC, and Prometheus metrics when metrics_listen is set (the chart uses 9090).
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/exportd"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
