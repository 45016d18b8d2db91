//! The crate's own `PgTls`: PostgreSQL over TLS with a `TlsConfig`, the
//! settings a hyper or tonic client takes.

use std::error::Error;
use std::time::Duration;

use rustls::CertificateError;
use tower::ServiceBuilder;
use tower_redial::error::Unavailable;
use tower_redial::postgres::{MakePostgres, PgClient, PgTls};
use tower_redial::tls::{HandshakeError, InvalidServerName, TlsConfig};
use tower_redial::{Backoff, ReconnectLayer, ReconnectPolicy};
use tower_redial_interop::tls::Ca;

use crate::{a_timed_out_query_is_cancelled, require_tls, session_ssl, tls_server, within};

/// A `TlsConfig` that trusts `ca` alone.
fn trusting(ca: &Ca) -> TlsConfig {
    TlsConfig::builder().root_der(ca.der()).build().unwrap()
}

fn client(server: &support::pg_server::PgServer, tls: PgTls) -> PgClient {
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            2.0,
            Duration::from_millis(100),
        ))
        .wait_limit(Duration::from_millis(500))
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::with_tls(tls))
        .client(require_tls(server))
}

/// What `MakePostgres::with_tls` and the cancel path need of a connector.
#[test]
fn pg_tls_is_clone_send_sync_static() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<PgTls>();
}

/// Queries run over TLS with `PgTls` (`pg_stat_ssl` says so for the
/// session), with the certificate checked against the config's host, an
/// IP address here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_run_over_tls_with_a_tls_config() {
    let ca = Ca::new("tower-redial test CA");
    let server = tls_server(&ca).await;
    let client = client(&server, PgTls::new(trusting(&ca)));
    assert!(session_ssl(&client).await.unwrap(), "the session is TLS");
}

/// A certificate the client does not trust fails the dial; queries fail
/// fast with `Unavailable`, and walking `source()` alone from it reaches
/// the `HandshakeError`, then the `rustls::Error` itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_reaches_unavailable_as_rustls_error() {
    let trusted = Ca::new("tower-redial test CA");
    let stranger = Ca::new("a stranger's CA");
    let server = tls_server(&stranger).await;
    let client = client(&server, PgTls::new(trusting(&trusted)));
    let error = session_ssl(&client).await.unwrap_err();
    let unavailable = error
        .downcast_ref::<Unavailable>()
        .unwrap_or_else(|| panic!("Unavailable: {error:?}"));

    let mut chain = unavailable.source();
    let mut handshake = None;
    let mut tls = None;
    while let Some(error) = chain {
        if let Some(found) = error.downcast_ref::<HandshakeError>() {
            handshake = Some(found);
        }
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            assert!(handshake.is_some(), "rustls's error under HandshakeError");
            tls = Some(found);
        }
        chain = error.source();
    }
    let handshake = handshake.unwrap_or_else(|| panic!("HandshakeError: {error:?}"));
    assert_eq!(handshake.server_name(), "127.0.0.1");
    assert_eq!(
        tls.unwrap_or_else(|| panic!("rustls::Error: {error:?}")),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    let dial = unavailable.source().unwrap();
    assert!(
        dial.is::<tokio_postgres::Error>(),
        "the dial error: {dial:?}"
    );
}

/// A query past the response timeout over `PgTls` is cancelled on the
/// server: the `CancelRequest` goes through `PgTls` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_query_over_pg_tls_is_cancelled_on_the_server() {
    let ca = Ca::new("tower-redial test CA");
    let server = tls_server(&ca).await;
    a_timed_out_query_is_cancelled(&server, PgTls::new(trusting(&ca))).await;
}

/// A `host` that is no DNS name or IP address fails the dial before any
/// handshake, with `InvalidServerName` as the source of the
/// `tokio_postgres::Error` (`hostaddr` is where it connects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_no_server_name_fails_the_dial() {
    let ca = Ca::new("tower-redial test CA");
    let server = tls_server(&ca).await;
    let conninfo = server
        .conninfo()
        .replace("host=127.0.0.1", "host=bad_name! hostaddr=127.0.0.1");
    let config: tokio_postgres::Config = format!("{conninfo} sslmode=require").parse().unwrap();
    let error = within("the dial", config.connect(PgTls::new(trusting(&ca))))
        .await
        .err()
        .expect("the dial fails");
    let name = error
        .source()
        .and_then(|e| e.downcast_ref::<InvalidServerName>())
        .unwrap_or_else(|| panic!("InvalidServerName: {error:?}"));
    assert_eq!(name.name(), "bad_name!");
}
