//! PostgreSQL over TLS (what needs this crate's rustls and rcgen): a real
//! server with `ssl=on`, certificates made at test time, and a client built
//! with `MakePostgres::with_tls`, given tokio-postgres-rustls's
//! `MakeRustlsConnect` (on rustls with the ring provider) or the crate's
//! own `PgTls`.

mod cancel;
mod certificates;
mod tls;

use std::fs;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use support::pg_server::PgServer;
use support::policy::quick_redial;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::ResponseTimeout;
use tower_redial::postgres::{MakePostgres, PgClient, Query};
use tower_redial::ReconnectLayer;
use tower_redial_interop::tls::Ca;

/// Every await on the crate ends within this, or the test fails.
const LIMIT: Duration = Duration::from_secs(30);

/// Fails the test, rather than hanging it.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

/// A directory of its own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "tower-redial-pg-tls-server-{}-{nanos}",
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

/// A server with `ssl=on` and a certificate for 127.0.0.1 from `ca`.
async fn tls_server(ca: &Ca) -> PgServer {
    let dir = Dir::new();
    let leaf = ca.server(&["127.0.0.1"]);
    let (cert, key) = (dir.0.join("server.crt"), dir.0.join("server.key"));
    fs::write(&cert, leaf.pem()).unwrap();
    fs::write(&key, leaf.key_pem()).unwrap();
    PgServer::start_with_tls(&cert, &key).await
}

/// The server's config with `sslmode=require`.
fn require_tls(server: &PgServer) -> tokio_postgres::Config {
    format!("{} sslmode=require", server.conninfo())
        .parse()
        .unwrap()
}

/// Whether the client's session is over TLS, as the server sees it.
async fn session_ssl(client: &PgClient) -> Result<bool, tower_redial::BoxError> {
    let query = Query::new("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    let rows = within("a query over TLS", client.clone().oneshot(query)).await?;
    Ok(rows.first().expect("a row").get(0))
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

/// With `tls`, over a TLS session with `sslmode=require` on `server`, a
/// query past the response timeout fails with `ResponseTimeout` and is
/// cancelled on the server.
async fn a_timed_out_query_is_cancelled<T>(server: &PgServer, tls: T)
where
    T: MakeTlsConnect<Socket> + Clone + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
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
    let policy = quick_redial()
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client: PgClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::with_tls(tls))
        .client(require_tls(server));
    assert!(session_ssl(&client).await.unwrap(), "the session is TLS");
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
