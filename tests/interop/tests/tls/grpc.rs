//! tonic over TLS: a generated gRPC client over the crate's HTTP/2
//! connection over `TlsConnector`.

use std::sync::{Arc, Mutex, PoisonError};

use support::policy::quick_redial;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;
use tower_redial::connect::{Handshake, TcpConnector};
use tower_redial::tls::{TlsConfig, TlsConnector};
use tower_redial::ReconnectLayer;
use tower_redial_interop::tls::{Ca, Seen, TlsServer};

use super::GUARD;

/// A gRPC health check over TLS, ALPN `h2`, against tonic's health service
/// served over rustls; the server saw `h2` and the target's name.
#[tokio::test]
async fn tonic_over_tls() {
    let ca = Ca::new("test ca");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let handshakes: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = handshakes.clone();
    let server = TlsServer::start(ca.server(&["localhost"]).server_config(None), move |seen| {
        record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seen);
        health.clone()
    });
    let port = server.addr().port();

    let tls = TlsConfig::builder()
        .root_der(ca.der())
        .alpn_h2()
        .build()
        .unwrap();
    let transport = ServiceBuilder::new()
        .layer(ReconnectLayer::new(quick_redial().build().unwrap()))
        .service(Handshake::new(
            TlsConnector::new(TcpConnector::new(), tls),
            tower_redial::hyper::http2::<tonic::body::Body>,
        ))
        .multiplexed(format!("localhost:{port}"));
    let origin = format!("https://localhost:{port}").parse().unwrap();
    let mut client = HealthClient::with_origin(transport, origin);

    for _ in 0..3 {
        let reply = tokio::time::timeout(GUARD, client.check(HealthCheckRequest::default()))
            .await
            .expect("the call hung")
            .unwrap();
        assert_eq!(reply.into_inner().status(), ServingStatus::Serving);
    }
    let handshakes = handshakes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(handshakes.len(), 1, "one connection for every call");
    assert_eq!(handshakes[0].alpn.as_deref(), Some("h2"));
    assert_eq!(handshakes[0].sni.as_deref(), Some("localhost"));
}
