//! A query cancelled on a server with `ssl=on`: the client's
//! `CancelRequest`s go through TLS too.

use tokio_postgres_rustls::MakeRustlsConnect;
use tower_redial_interop::tls::{provider, Ca};

use crate::{a_timed_out_query_is_cancelled, tls_server};

/// A query past the response timeout on a TLS session with
/// `sslmode=require` is cancelled on the server: the `CancelRequest` goes
/// through the connector given to `MakePostgres::with_tls` (without TLS,
/// tokio-postgres refuses to send it under `sslmode=require`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_query_over_tls_is_cancelled_on_the_server() {
    let ca = Ca::new("tower-redial test CA");
    let server = tls_server(&ca).await;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    a_timed_out_query_is_cancelled(&server, MakeRustlsConnect::new(tls)).await;
}
