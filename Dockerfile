# Builds the eddy binary and ships it on a slim base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin eddy

FROM debian:bookworm-slim
COPY --from=build /src/target/release/eddy /usr/local/bin/eddy
EXPOSE 4566
VOLUME /var/lib/eddy
ENTRYPOINT ["eddy", "--listen", "0.0.0.0:4566", "--data-dir", "/var/lib/eddy"]
