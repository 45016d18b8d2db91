//! hyper: HTTP/1 and HTTP/2 connections over real servers, the hyper-util connector, abuse, and the HTTP/2 settings on the wire.

mod abuse;
mod conn;
mod connector;
mod grpc_builder;
mod http2_options;
mod raw_peer;
