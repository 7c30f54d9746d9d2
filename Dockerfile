# icp-gate: multi-stage build. The builder compiles the release binary; the runtime image is
# Debian slim with ca-certificates (https registry sources and upstreams) and the binary,
# running as the non-root user icp-gate (uid/gid 10001). It needs no capability: listen on
# ports above 1024 and map 80/443 to them (docker -p, Kubernetes hostPort:
# deploy/kubernetes/daemonset.yaml).
#
#   docker build -t icp-gate .
#   docker run -d -p 80:8080 -p 127.0.0.1:9090:9090 \
#     -v /etc/icp-gate:/etc/icp-gate:ro -v /var/lib/icp-gate:/var/lib/icp-gate \
#     --stop-timeout 30 icp-gate
#
# See docs/operations.md ("Container") for the configuration the container needs.

FROM rust:1-bookworm AS builder
# Pingora's bundled C libraries need cmake; the image already has a C/C++ compiler and make.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling (about 90 MB): the image gets the binary
# without them (about 19 MB; the symbol table stays, so backtraces keep their names).
RUN cargo build --release --locked \
 && objcopy --strip-debug target/release/icp-gate /usr/local/bin/icp-gate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 icp-gate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/icp-gate --shell /usr/sbin/nologin icp-gate \
 && mkdir -p /etc/icp-gate /var/lib/icp-gate \
 && chown icp-gate:icp-gate /etc/icp-gate /var/lib/icp-gate
COPY --from=builder /usr/local/bin/icp-gate /usr/local/bin/icp-gate
# Numeric, so that runtimes checking "run as non-root" can verify it.
USER 10001:10001
WORKDIR /var/lib/icp-gate
# 8080: gate listener; 9090: admin listener (/metrics, /healthz, /readyz, /registry).
EXPOSE 8080 9090
# Healthy once a registry is loaded (/readyz answers 200). Needs the admin listener on port 9090.
HEALTHCHECK CMD ["icp-gate", "health", "127.0.0.1:9090"]
# The stop signal stays Docker's default, SIGTERM: the gate's graceful shutdown.
ENTRYPOINT ["icp-gate"]
CMD ["-c", "/etc/icp-gate/icp-gate.toml"]
