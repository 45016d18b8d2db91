//! A TLS failure is a dial failure: it is retried by the backoff, and once
//! past the wait limit, requests fail with `Unavailable` whose `source()`
//! is the `HandshakeError`, whose own `source()` is rustls's error.

use std::error::Error;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::{AlertDescription, CertificateError, ServerConfig};
use support::policy::quick_redial;
use tokio::net::TcpListener;
use tower_redial::error::{Closed, Unavailable};
use tower_redial::tls::{HandshakeError, InvalidServerName, TlsConfig};
use tower_redial::{Backoff, ReconnectPolicy};
use tower_redial_interop::tls::{Ca, TlsServer};

use super::{connector, get, http1, HttpClient, GUARD};

/// Short enough to fail fast within the test.
fn policy() -> ReconnectPolicy {
    quick_redial()
        .wait_limit(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// Requests until one fails with an `Unavailable` after at least
/// `attempts` dials, and that error: more than one dial shows the backoff
/// retried the failure.
async fn unavailable(client: &HttpClient, uri: &str, attempts: u32) -> Unavailable {
    tokio::time::timeout(GUARD, async {
        loop {
            let error = get(client, uri).await.expect_err("the dial must fail");
            let unavailable = error
                .downcast_ref::<Unavailable>()
                .unwrap_or_else(|| panic!("not Unavailable: {error:?}"))
                .clone();
            if unavailable.attempts() >= attempts {
                return unavailable;
            }
        }
    })
    .await
    .expect("the dials were not retried")
}

/// The certificate problem under an `Unavailable`, reached by `source()`
/// alone and downcast verbatim.
fn certificate_error(unavailable: &Unavailable) -> &CertificateError {
    let handshake = unavailable
        .source()
        .and_then(|e| e.downcast_ref::<HandshakeError>())
        .expect("the source is the HandshakeError");
    match handshake
        .source()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(problem)) => problem,
        other => panic!("not a certificate error: {other:?}"),
    }
}

/// A certificate from a CA the client does not trust fails every dial; the
/// dial is retried, and the requests fail fast with rustls's `UnknownIssuer`
/// under `Unavailable`.
#[tokio::test]
async fn an_untrusted_certificate_is_a_dial_failure_under_unavailable() {
    let theirs = Ca::new("their ca");
    let server = TlsServer::hello(theirs.server(&["localhost"]).server_config(None), "one");
    let port = server.addr().port();
    let ours = Ca::new("our ca");
    let tls = TlsConfig::builder().root_der(ours.der()).build().unwrap();
    let client = http1(connector(tls), format!("localhost:{port}"), policy());

    let unavailable = unavailable(&client, &format!("http://localhost:{port}/"), 3).await;
    assert_eq!(
        certificate_error(&unavailable),
        &CertificateError::UnknownIssuer
    );
    let handshake = unavailable
        .source()
        .unwrap()
        .downcast_ref::<HandshakeError>()
        .unwrap();
    assert_eq!(handshake.server_name(), "localhost");
    assert_eq!(handshake.to_string(), "tls handshake with localhost failed");
}

/// A trusted certificate for another name fails the dial with rustls's
/// name mismatch.
#[tokio::test]
async fn a_certificate_for_another_host_is_a_dial_failure() {
    let ca = Ca::new("test ca");
    let server = TlsServer::hello(ca.server(&["other.test"]).server_config(None), "one");
    let port = server.addr().port();
    let tls = TlsConfig::builder().root_der(ca.der()).build().unwrap();
    let client = http1(connector(tls), format!("localhost:{port}"), policy());

    let unavailable = unavailable(&client, &format!("http://localhost:{port}/"), 2).await;
    let problem = certificate_error(&unavailable);
    assert!(
        matches!(
            problem,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "{problem:?}"
    );
}

/// A target with no valid server name fails the dial with
/// `InvalidServerName`, before anything is dialed.
#[tokio::test]
async fn a_target_with_no_server_name_is_a_dial_failure() {
    let ca = Ca::new("test ca");
    let tls = TlsConfig::builder().root_der(ca.der()).build().unwrap();
    let client = http1(connector(tls), ("bad_name!", 1), policy());

    let unavailable = unavailable(&client, "http://localhost:1/", 1).await;
    let invalid = unavailable
        .source()
        .and_then(|e| e.downcast_ref::<InvalidServerName>())
        .expect("the source is the InvalidServerName");
    assert_eq!(invalid.name(), "bad_name!");
}

/// An expired certificate fails the dial with rustls's `Expired`.
#[tokio::test]
async fn an_expired_certificate_is_a_dial_failure() {
    let ca = Ca::new("test ca");
    let server = TlsServer::hello(ca.expired_server(&["localhost"]).server_config(None), "one");
    let port = server.addr().port();
    let tls = TlsConfig::builder().root_der(ca.der()).build().unwrap();
    let client = http1(connector(tls), format!("localhost:{port}"), policy());

    let unavailable = unavailable(&client, &format!("http://localhost:{port}/"), 2).await;
    let problem = certificate_error(&unavailable);
    assert!(
        matches!(
            problem,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{problem:?}"
    );
}

/// An alert the server sends during the handshake (here: no protocol in
/// common by ALPN) is rustls's `AlertReceived` under the `HandshakeError`.
#[tokio::test]
async fn an_alert_from_the_server_is_a_dial_failure() {
    let ca = Ca::new("test ca");
    let mut config = ServerConfig::clone(&ca.server(&["localhost"]).server_config(None));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server = TlsServer::hello(Arc::new(config), "one");
    let port = server.addr().port();
    let tls = TlsConfig::builder()
        .root_der(ca.der())
        .alpn_h2()
        .build()
        .unwrap();
    let client = http1(connector(tls), format!("localhost:{port}"), policy());

    let unavailable = unavailable(&client, &format!("http://localhost:{port}/"), 2).await;
    let handshake = unavailable
        .source()
        .unwrap()
        .downcast_ref::<HandshakeError>()
        .unwrap();
    assert_eq!(
        handshake.source().unwrap().downcast_ref::<rustls::Error>(),
        Some(&rustls::Error::AlertReceived(
            AlertDescription::NoApplicationProtocol
        ))
    );
}

/// A connection that breaks during the handshake: the `HandshakeError`'s
/// `source()` is the `io::Error`.
#[tokio::test]
async fn a_connection_closed_during_the_handshake_is_a_dial_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closer = AbortOnDrop(tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            drop(io);
        }
    }));
    let ca = Ca::new("test ca");
    let tls = TlsConfig::builder().root_der(ca.der()).build().unwrap();
    let client = http1(connector(tls), addr, policy());

    let unavailable = unavailable(&client, &format!("http://{addr}/"), 2).await;
    let handshake = unavailable
        .source()
        .unwrap()
        .downcast_ref::<HandshakeError>()
        .unwrap();
    let io = handshake.source().unwrap().downcast_ref::<io::Error>();
    assert!(io.is_some(), "{handshake:?}");
    drop(closer);
}

/// The inner connector's error is the dial's error, unchanged: a refused
/// TCP connection is the `io::Error` itself under `Unavailable`.
#[tokio::test]
async fn the_inner_connectors_error_is_the_dial_failure_unchanged() {
    // A port nobody listens on: bound, then closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let ca = Ca::new("test ca");
    let tls = TlsConfig::builder().root_der(ca.der()).build().unwrap();
    let client = http1(connector(tls), addr, policy());

    let unavailable = unavailable(&client, &format!("http://{addr}/"), 2).await;
    let io = unavailable
        .source()
        .and_then(|e| e.downcast_ref::<io::Error>())
        .expect("the source is the connector's io::Error");
    assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
}

/// Aborts a task when dropped, so a failed test leaves no server behind.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// With an attempt limit, a certificate error closes the client once the
/// limit is reached: `Closed`, with the `HandshakeError` as its `source()`.
#[tokio::test]
async fn an_attempt_limit_closes_the_client_on_certificate_errors() {
    let theirs = Ca::new("their ca");
    let server = TlsServer::hello(theirs.server(&["localhost"]).server_config(None), "one");
    let port = server.addr().port();
    let ours = Ca::new("our ca");
    let tls = TlsConfig::builder().root_der(ours.der()).build().unwrap();
    let policy = quick_redial()
        .backoff(
            Backoff::exponential(Duration::from_millis(1), 2.0, Duration::from_millis(4))
                .max_attempts(3),
        )
        .build()
        .unwrap();
    let client = http1(connector(tls), format!("localhost:{port}"), policy);

    let error = get(&client, &format!("http://localhost:{port}/"))
        .await
        .unwrap_err();
    let closed = error
        .downcast_ref::<Closed>()
        .unwrap_or_else(|| panic!("not Closed: {error:?}"));
    assert_eq!(closed.attempts(), 3);
    let handshake = closed
        .source()
        .unwrap()
        .downcast_ref::<HandshakeError>()
        .unwrap();
    assert!(matches!(
        handshake.source().unwrap().downcast_ref::<rustls::Error>(),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    ));
}
