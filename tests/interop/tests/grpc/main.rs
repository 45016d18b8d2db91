//! tonic: gRPC calls through a reconnecting HTTP/2 client, across server crashes and graceful restarts.

mod client;
mod restart;
