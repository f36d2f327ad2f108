# syntax=docker/dockerfile:1
# Builds the orchestrator, the four stub services and a tiny health probe into one small
# runtime image; each compose service runs one of the binaries, as a non-root user.

FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka (with OpenSSL, for TLS and SASL) is built from source by rdkafka-sys: it needs a C
# toolchain, make and full perl, all in this image. The cache mounts keep the crates and the
# compiled dependencies between builds, so a code change rebuilds only this workspace.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p saga-system \
        --bin orchestrator --bin order-service --bin user-service --bin payment-service \
        --bin notification-service --bin healthcheck --bin sagactl \
    && mkdir /out \
    && cp target/release/orchestrator target/release/order-service target/release/user-service \
          target/release/payment-service target/release/notification-service \
          target/release/healthcheck target/release/sagactl /out/

FROM debian:bookworm-slim
# ca-certificates: the CAs a managed Kafka or PostgreSQL presents are checked against these.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group saga \
    && mkdir /data && chown saga:saga /data
COPY --from=build /out/ /usr/local/bin/
COPY topics.json /etc/saga/topics.json
# The saga definitions and the message contract, as files an operator can replace (mount a folder
# over /etc/saga/sagas to run other sagas); the binaries carry the same ones built in.
COPY sagas /etc/saga/sagas
COPY messages.toml /etc/saga/messages.toml
ENV TOPICS_FILE=/etc/saga/topics.json SAGAS_DIR=/etc/saga/sagas MESSAGES_FILE=/etc/saga/messages.toml \
    NOTIFICATIONS_DIR=/etc/saga/sagas/notifications \
    RUST_LOG=info,rdkafka=warn,sqlx=warn
USER 10001:10001
WORKDIR /data
CMD ["orchestrator"]
