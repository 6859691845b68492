# Multi-stage build: compile the release binary, run it as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin gbrelay

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/gbrelay --create-home gbrelay
COPY --from=build /src/target/release/gbrelay /usr/local/bin/gbrelay
COPY gateway.toml /etc/gbrelay/gateway.toml
USER gbrelay
WORKDIR /var/lib/gbrelay
# SIP (UDP+TCP), HTTP, shared RTP port (UDP+TCP)
EXPOSE 5060/udp 5060/tcp 8080/tcp 10000/udp 10000/tcp
ENTRYPOINT ["/usr/local/bin/gbrelay"]
CMD ["--config", "/etc/gbrelay/gateway.toml"]
