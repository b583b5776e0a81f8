# syntax=docker/dockerfile:1
#
# The Kiln worker image, and an image of the bundled example plugins.
#
#   docker build -t kiln:0.1.0 .                               # the worker (last stage)
#   docker build --target plugins -t kiln-plugins:0.1.0 .      # the plugins, for the chart's init container
#
# No Docker engine runs where this repository is developed, so this file is
# not built in CI. What it runs is: `cargo build --release -p kiln --locked`
# and `cargo xtask plugins` are CI's own build commands, and `.ci/k8s` runs
# the same `kiln precompile` with docker/kiln.toml and then loads every
# plugin from the baked cache it wrote. See docs/DEPLOY.md.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG PLUGINS_BASE_IMAGE=busybox:1.37-musl

# ---- build: the worker, the plugins, and the baked component cache ----
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# rust-toolchain.toml is left out of the context (.dockerignore): the base
# image's 1.95 toolchain builds everything, and only the wasm target is added.
RUN rustup target add wasm32-wasip2
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release -p kiln --locked \
 && cargo xtask plugins
# The image's plugins and its read-only baked cache, compiled with the
# image's own config so the cache keys match at run time. The writable
# cache directory is created empty, owned by the runtime user. Baked
# entries stay owned by root and read-only, but readable by the runtime
# user (`kiln precompile` writes them 0644; the chmod also covers files
# an older Kiln wrote 0600), or every pod start would recompile them.
RUN mkdir -p /out/plugins /out/cache /out/writable \
 && cp plugins/*.wasm /out/plugins/ \
 && target/release/kiln --config-file docker/kiln.toml --plugins /out/plugins \
      precompile --out /out/cache \
 && chmod -R a+rX,go-w /out/plugins /out/cache

# ---- the plugins image: busybox (for `cp`) and /plugins/*.wasm ----
FROM ${PLUGINS_BASE_IMAGE} AS plugins
COPY --from=builder /out/plugins/ /plugins/
USER 65532:65532
# The chart's init container runs: cp -R /plugins/. <emptyDir>/
CMD ["ls", "-l", "/plugins"]

# ---- the worker: distroless (glibc, libgcc, no shell), uid 65532 ----
FROM ${RUNTIME_IMAGE} AS worker
COPY --from=builder /src/target/release/kiln /usr/local/bin/kiln
COPY --from=builder /out/plugins/ /opt/kiln/plugins/
COPY --from=builder /out/cache/ /opt/kiln/cache/
COPY --from=builder --chown=65532:65532 /out/writable/ /var/cache/kiln/
COPY docker/kiln.toml /etc/kiln/kiln.toml
USER 65532:65532
WORKDIR /var/cache/kiln
# /metrics, /healthz, /readyz
EXPOSE 9090
# With a read-only root filesystem, mount a writable volume (emptyDir,
# tmpfs) on /var/cache/kiln; everything else the worker reads is baked in.
ENTRYPOINT ["/usr/local/bin/kiln"]
CMD ["worker"]
