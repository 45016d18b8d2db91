//! tonic: gRPC calls through a reconnecting HTTP/2 client, across server crashes and graceful restarts; the one-line transport, over TLS too; the crate's failures as gRPC codes; keep-alive pings finding a blackholed server.

mod blackhole;
mod client;
mod one_line;
mod restart;
mod status;
mod streams;
mod tls;
