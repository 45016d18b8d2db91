//! Adversarial tests: tower-redial's redis, TLS and HTTP/2 front ends
//! used as their ecosystems' users use them, through the public API only. Tests marked `#[ignore = "defect: ..."]` demonstrate a defect
//! (observed and expected behaviour in their comments); the others pin down
//! behaviour that held up.

mod grpc;
mod redis_manager;
mod tls;

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
