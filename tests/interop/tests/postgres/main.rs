//! PostgreSQL over TLS (what needs this crate's rustls and rcgen): a real
//! server with `ssl=on`, certificates made at test time, and a client built
//! with `MakePostgres::with_tls(MakeRustlsConnect)` (tokio-postgres-rustls,
//! on rustls with the ring provider).

mod cancel;
mod certificates;

use std::future::Future;
use std::time::Duration;

/// Every await on the crate ends within this, or the test fails.
const LIMIT: Duration = Duration::from_secs(30);

/// Fails the test, rather than hanging it.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}
