//! Adversarial tests: tower-redial's PostgreSQL, redis, TLS and HTTP/2
//! front ends used as their ecosystems' users use them, through the public
//! API only. Tests marked `#[ignore = "defect: ..."]` demonstrate a defect
//! (observed and expected behaviour in their comments); the others pin down
//! behaviour that held up.

mod pg_cancel;
mod pg_prepared;
mod pg_transaction;

use std::future::Future;
use std::time::Duration;

use tower::ServiceBuilder;
use tower_redial::postgres::{MakePostgres, PgClient};
use tower_redial::{ReconnectLayer, ReconnectPolicy};

/// Every await on the crate ends within this, or the test fails.
const LIMIT: Duration = Duration::from_secs(30);

/// Fails the test, rather than hanging it.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

/// A PostgreSQL client on `server` with `policy`.
fn pg_client(server: &support::pg_server::PgServer, policy: ReconnectPolicy) -> PgClient {
    let config: tokio_postgres::Config = server.conninfo().parse().expect("conninfo");
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::new())
        .client(config)
}
