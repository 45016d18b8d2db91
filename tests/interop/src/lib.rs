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
use tower_redial::hyper::Grpc;
use tower_redial::ReconnectPolicy;

/// The reconnecting HTTP/2 client that carries gRPC calls: `Grpc`'s, which
/// answers the crate's own failures with gRPC codes.
pub type Transport = tower_redial::hyper::GrpcClient<tonic::body::Body>;

/// A generated tonic client over a [`Transport`].
pub type GrpcClient = HealthClient<Transport>;

/// A generated tonic client whose transport is a reconnecting HTTP/2
/// client bound to `addr` with `policy` ([`Grpc`], over plain TCP), and
/// that transport.
pub fn grpc_client(addr: SocketAddr, policy: ReconnectPolicy) -> (GrpcClient, Transport) {
    let transport = Grpc::builder(format!("http://{addr}"))
        .policy(policy)
        .build()
        .expect("a valid origin");
    (HealthClient::new(transport.clone()), transport)
}

/// Which of the crate's errors failed a call, as the `Grpc` transport
/// names it in the `Status`'s metadata (`tower-redial-error`), if one did.
pub fn redial_error(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get("tower-redial-error")
        .and_then(|kind| kind.to_str().ok())
}

/// The README's code blocks, compiled and run as doc tests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
