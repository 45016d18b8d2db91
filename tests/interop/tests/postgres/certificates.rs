//! A real server with `ssl=on` and certificates made
//! at test time (rcgen), and a client built with
//! `MakePostgres::with_tls(MakeRustlsConnect)` (tokio-postgres-rustls, on
//! rustls with the ring provider).
//!
//! One server goes through three certificates: one the client trusts, one
//! it does not (the dial fails, and the rustls error is there under
//! `Unavailable`), and a new trusted one, which the client meets on its
//! own redial after the restart.

use std::error::Error as _;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, RootCertStore};
use support::pg_server::PgServer;
use tokio_postgres_rustls::MakeRustlsConnect;
use tower::ServiceBuilder;
use tower_redial::error::Unavailable;
use tower_redial::postgres::{MakePostgres, PgClient};
use tower_redial::state::Phase;
use tower_redial::{Backoff, ReconnectLayer, ReconnectPolicy};
use tower_redial_interop::tls::{recording_config, Ca, Presented};

use crate::{session_ssl, within, Dir};

/// A certificate for 127.0.0.1 from `ca`, written to `dir` as `name.crt`
/// and `name.key`: its DER, and the two files.
fn server_cert(ca: &Ca, dir: &Dir, name: &str) -> (CertificateDer<'static>, PathBuf, PathBuf) {
    let leaf = ca.server(&["127.0.0.1"]);
    let (cert, key) = (
        dir.0.join(format!("{name}.crt")),
        dir.0.join(format!("{name}.key")),
    );
    fs::write(&cert, leaf.pem()).unwrap();
    fs::write(&key, leaf.key_pem()).unwrap();
    (leaf.der(), cert, key)
}

/// A client that trusts `roots` only, and records the certificate it met.
fn tls_client(server: &PgServer, roots: RootCertStore) -> (PgClient, Presented) {
    let (config, presented) = recording_config(roots);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            2.0,
            Duration::from_millis(100),
        ))
        .wait_limit(Duration::from_millis(500))
        .build()
        .unwrap();
    let target: tokio_postgres::Config = format!("{} sslmode=require", server.conninfo())
        .parse()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::with_tls(MakeRustlsConnect::new(config)))
        .client(target);
    (client, presented)
}

async fn ready(client: &PgClient) {
    let mut state = client.state();
    state.wait_for(|s| s.phase() == Phase::Ready).await.unwrap();
}

/// Queries run over TLS (`pg_stat_ssl` says so for the session); a server
/// restarted with a certificate from an authority the client does not
/// trust fails every dial, and queries fail fast with `Unavailable`, whose
/// `source()` chain holds the `tokio_postgres::Error` of the handshake, and
/// in its `io::Error` the rustls error itself (`UnknownIssuer`); a server
/// restarted again with a new trusted certificate is met on the client's
/// own redial, with the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_are_checked_on_every_dial() {
    let dir = Dir::new();
    let trusted = Ca::new("tower-redial test CA");
    let stranger = Ca::new("a stranger's CA");
    let (first, cert, key) = server_cert(&trusted, &dir, "first");
    let server = PgServer::start_with_tls(&cert, &key).await;
    let (client, presented) = tls_client(&server, trusted.roots());

    assert!(session_ssl(&client).await.unwrap());
    assert_eq!(presented.last(), Some(first));

    // A certificate the client does not trust.
    let (untrusted, cert, key) = server_cert(&stranger, &dir, "untrusted");
    server.replace_tls(&cert, &key).await;
    within("the restart", server.restart()).await;
    let error = session_ssl(&client).await.unwrap_err();
    let unavailable = error
        .downcast_ref::<Unavailable>()
        .unwrap_or_else(|| panic!("Unavailable: {error:?}"));
    let dial = unavailable.source().expect("the dial error");
    let pg = dial
        .downcast_ref::<tokio_postgres::Error>()
        .unwrap_or_else(|| panic!("postgres's error: {dial:?}"));
    // std's `io::Error` keeps the error it wraps out of `source()`; it is
    // its `get_ref()`.
    let io = pg
        .source()
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("the handshake's io::Error: {pg:?}"));
    let tls = io
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("rustls's error: {io:?}"));
    assert_eq!(
        tls,
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_eq!(presented.last(), Some(untrusted));
    // The state's last error is the same dial error.
    let state = client.state().borrow().clone();
    let last = state.last_error().expect("the last dial error");
    let last = last
        .downcast_ref::<tokio_postgres::Error>()
        .unwrap_or_else(|| panic!("postgres's error: {last:?}"));
    assert_eq!(last.to_string(), pg.to_string());
    println!("untrusted: {error}: {dial}: {io}");

    // A new trusted certificate: the client redials by itself and meets it.
    let (second, cert, key) = server_cert(&trusted, &dir, "second");
    server.replace_tls(&cert, &key).await;
    within("the restart", server.restart()).await;
    within("the client's own redial", ready(&client)).await;
    assert!(session_ssl(&client).await.unwrap());
    assert_eq!(presented.last(), Some(second));
    let stats = client.stats();
    println!("{stats:?}");
    assert!(stats.dial_failures >= 1, "{stats:?}");
}
