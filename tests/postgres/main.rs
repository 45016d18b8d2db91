//! PostgreSQL: a real server, its restarts, and the books of every insert.
#![cfg(feature = "postgres")]

mod cancel;
mod client;
mod prepared;
mod prepared_stale;
mod restart;
mod transaction;
mod transaction_books;
mod transaction_ends;
mod transaction_misuse;

use std::future::Future;
use std::time::Duration;

use support::outcome::Outcome;
use support::pg_server::PgServer;
use tower::ServiceBuilder;
use tower_redial::error::ConnectionLost;
use tower_redial::postgres::{self, MakePostgres, PgClient, Rows};
use tower_redial::{classify, BoxError, ReconnectLayer, ReconnectPolicy};

/// Every await on the crate ends within this, or the test fails.
const LIMIT: Duration = Duration::from_secs(30);

/// Fails the test, rather than hanging it.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

/// A PostgreSQL client on `server` with `policy`.
fn pg_client(server: &PgServer, policy: ReconnectPolicy) -> PgClient {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::new())
        .client(server.config())
}

/// The test server's connection settings as tokio-postgres reads them.
trait Config {
    fn config(&self) -> tokio_postgres::Config;
}

impl Config for PgServer {
    fn config(&self) -> tokio_postgres::Config {
        self.conninfo().parse().expect("a valid connection string")
    }
}

/// How a query ended: the shared reading, except that a broken connection
/// is ambiguous only as the connection's own verdict (see
/// [`session_ended`]). Anything else the shared reading calls ambiguous is
/// unexpected here.
fn outcome(result: &Result<Rows, BoxError>) -> Outcome {
    match (Outcome::of(result), result) {
        (Outcome::Ambiguous, Err(error)) if !session_ended(error) => Outcome::Unexpected,
        (outcome, _) => outcome,
    }
}

/// Whether `error` is a [`ConnectionLost`] around the PostgreSQL error that
/// ended the session.
fn session_ended(error: &BoxError) -> bool {
    error.is::<ConnectionLost>()
        && postgres::postgres_error(&**error).is_some_and(|e| {
            postgres::is_postgres_transport_error(e) || classify::is_transport_error(e)
        })
}
