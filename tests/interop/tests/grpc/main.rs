//! tonic: gRPC calls through a reconnecting HTTP/2 client, across server crashes and graceful restarts.

mod client;
mod one_line;
mod restart;
