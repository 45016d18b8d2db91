//! A query cancelled on a server with `ssl=on`: the client's
//! `CancelRequest`s go through TLS too.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use support::pg_server::PgServer;
use support::policy::quick_redial;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::ResponseTimeout;
use tower_redial::postgres::{MakePostgres, PgClient, Query};
use tower_redial::ReconnectLayer;

use crate::within;
use tower_redial_interop::tls::{provider, Ca};

/// A directory of its own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "tower-redial-pg-cancel-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A server with `ssl=on` and a certificate from `ca`.
async fn tls_server(ca: &Ca) -> PgServer {
    let dir = Dir::new();
    let leaf = ca.server(&["127.0.0.1"]);
    let (cert, key) = (dir.0.join("server.crt"), dir.0.join("server.key"));
    fs::write(&cert, leaf.pem()).unwrap();
    fs::write(&key, leaf.key_pem()).unwrap();
    PgServer::start_with_tls(&cert, &key).await
}

/// Backends of other sessions still running a `pg_sleep`.
async fn sleeping(observer: &tokio_postgres::Client) -> i64 {
    let row = within(
        "pg_stat_activity",
        observer.query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
            &[],
        ),
    )
    .await
    .unwrap();
    row.get(0)
}

/// A query past the response timeout on a TLS session with
/// `sslmode=require` is cancelled on the server: the `CancelRequest` goes
/// through the connector given to `MakePostgres::with_tls` (without TLS,
/// tokio-postgres refuses to send it under `sslmode=require`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_query_over_tls_is_cancelled_on_the_server() {
    let ca = Ca::new("tower-redial test CA");
    let server = tls_server(&ca).await;
    let (observer, connection) = within(
        "observer",
        server
            .conninfo()
            .parse::<tokio_postgres::Config>()
            .unwrap()
            .connect(NoTls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let config: tokio_postgres::Config = format!("{} sslmode=require", server.conninfo())
        .parse()
        .unwrap();
    let policy = quick_redial()
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client: PgClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::with_tls(MakeRustlsConnect::new(tls)))
        .client(config);
    let ssl = within(
        "a query over TLS",
        client.clone().oneshot(Query::new(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )),
    )
    .await
    .unwrap();
    assert!(ssl.first().unwrap().get::<_, bool>(0), "the session is TLS");
    let error = within(
        "a slow query",
        client.clone().oneshot(Query::new("SELECT pg_sleep(60)")),
    )
    .await
    .unwrap_err();
    assert!(error.is::<ResponseTimeout>(), "{error:?}");
    within("the statement is cancelled", async {
        while sleeping(&observer).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
