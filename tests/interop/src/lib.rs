//! tower-redial against real peers, kept apart so that the crate's own
//! build stays lean: tests against tonic, redis-rs and hyper's HTTP/2
//! server, the benchmarks (criterion, tower-resilience, redis-rs's
//! `ConnectionManager`), the tonic example, and the README's code blocks,
//! compiled and run as doc tests here with every feature on. The library
//! holds what those tests and the benchmarks share: the redis books, and
//! the benchmarks' report (`report`: the machine, the sections and goals of
//! `docs/BENCHMARKS.md`) and recovery plot (`plot`), and the certificates
//! and TLS servers of the TLS tests and example (`tls`).

pub mod plot;
pub mod redis_books;
pub mod report;
pub mod tls;

use std::net::SocketAddr;

use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;
use tower_redial::connect::{Handshake, TcpConnector};
use tower_redial::hyper::http2;
use tower_redial::{Client, ReconnectLayer, ReconnectPolicy};

/// The reconnecting HTTP/2 client that carries gRPC calls.
pub type Transport =
    Client<http::Request<tonic::body::Body>, http::Response<hyper::body::Incoming>>;

/// A generated tonic client over a [`Transport`].
pub type GrpcClient = HealthClient<Transport>;

/// A generated tonic client whose transport is a reconnecting HTTP/2
/// client bound to `addr` with `policy`, and that transport.
pub fn grpc_client(addr: SocketAddr, policy: ReconnectPolicy) -> (GrpcClient, Transport) {
    let transport = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(Handshake::new(
            TcpConnector::new(),
            http2::<tonic::body::Body>,
        ))
        .multiplexed(addr);
    // HTTP/2 requests carry the scheme and authority: give tonic the origin.
    let origin = format!("http://{addr}").parse().expect("a valid origin");
    (
        HealthClient::with_origin(transport.clone(), origin),
        transport,
    )
}

/// The README's code blocks, compiled and run as doc tests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
