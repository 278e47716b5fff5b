# im-connect container image.
#
#   docker build -t im-connect .
#   docker run --rm -p 19000:19000 -p 9000:9000 \
#     -e IM_CONNECT_PROFILES=lucky -e IM_CONNECT_AUTH__JWT__SECRET=... \
#     -v "$PWD/my-config:/app/config:ro" im-connect
#
# Configuration: the binary runs in /app and reads config/application.yml relative to its
# working directory, that is /app/config/application.yml, and looks for each profile's
# application-{profile}.yml beside it. The image ships the repository's config/ there; mount
# a directory over /app/config to replace it (it must hold application.yml, or the built-in
# defaults apply), or override single keys with IM_CONNECT_<SECTION>__<KEY> variables.
# As shipped, the active profile is dev, which runs without a JWT key on a built-in
# development secret: set IM_CONNECT_PROFILES and a real key for anything but a trial.
# docs/operations.md has the rest.

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Everything the build reads: the manifest and lock file, the build script with the proto
# files it compiles (protoc comes vendored from a crate), and the sources.
COPY . .
RUN cargo build --release --locked --bin im-connect \
    && cp target/release/im-connect /usr/local/bin/im-connect

# --- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for TLS to managed backends; curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 im \
    && useradd --system --uid 10001 --gid im --home-dir /app --shell /usr/sbin/nologin im

WORKDIR /app
COPY --from=build /usr/local/bin/im-connect /usr/local/bin/im-connect
COPY config/ /app/config/

USER im:im

# WebSocket 19000-19002, TCP 9000-9002 (netty.config.*.port); admin 19100 (admin.port).
# The admin server binds 127.0.0.1 unless admin.host says otherwise (which requires
# admin.token): publishing 19100 only helps once it listens on 0.0.0.0.
EXPOSE 19000-19002 9000-9002 19100

# The admin server's liveness endpoint, from inside the container, where 127.0.0.1 reaches
# it whatever admin.host is. Follows IM_CONNECT_ADMIN__PORT when that moves it.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${IM_CONNECT_ADMIN__PORT:-19100}/health" > /dev/null || exit 1

# SIGTERM starts the graceful shutdown: leave discovery, stop accepting, close every
# connection with 1001 and wait up to 10 s for them. Give `docker stop` more than that
# (`--stop-timeout 20`, compose `stop_grace_period: 20s`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/im-connect"]
CMD ["serve"]
