# Builds the orchestrator and the four stub services into one small runtime image.
# Each compose service runs one of the binaries.

FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (bundled): it needs a C toolchain, make and
# cmake-free ./configure, all in the rust image.
COPY . .
RUN cargo build --release --locked -p saga-system \
        --bin orchestrator --bin order-service --bin user-service --bin payment-service --bin notification-service \
    && mkdir /out \
    && cp target/release/orchestrator target/release/order-service target/release/user-service \
          target/release/payment-service target/release/notification-service /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 saga \
    && mkdir /data && chown saga /data
COPY --from=build /out/ /usr/local/bin/
COPY topics.json /etc/saga/topics.json
ENV TOPICS_FILE=/etc/saga/topics.json RUST_LOG=info,rdkafka=warn,sqlx=warn
USER saga
WORKDIR /data
CMD ["orchestrator"]
