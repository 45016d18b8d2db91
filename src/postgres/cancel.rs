//! Cancelling a statement that no one waits for any more: PostgreSQL's
//! `CancelRequest`, sent on a fresh socket to the same server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ::tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use ::tokio_postgres::{CancelToken, Socket};

/// How long a `CancelRequest` may take (its dial, TLS handshake and write)
/// before it is given up.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one connection's `CancelRequest`s.
///
/// A `CancelRequest` cancels whatever the backend runs when it arrives,
/// not one statement. So it is sent only for a connection that is being
/// given up: the connection is marked closed first, so that no query
/// written later can be its target (see `Shared::abandon`).
pub(super) struct Canceller {
    send: Box<dyn Fn() + Send + Sync>,
    sent: AtomicBool,
}

impl Canceller {
    /// A canceller for the session of `token`, that dials through `tls`
    /// (the connector the session was opened with).
    pub(super) fn new<T>(token: CancelToken, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        // A `Mutex` makes the connector `Sync` without asking it to be.
        let tls = Mutex::new(tls);
        let send = move || {
            let tls = tls.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let token = token.clone();
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::debug!("no tokio runtime to send a postgres CancelRequest on");
                return;
            };
            runtime.spawn(async move {
                match tokio::time::timeout(CANCEL_TIMEOUT, token.cancel_query(tls)).await {
                    Ok(Ok(())) => tracing::debug!("postgres CancelRequest sent"),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "postgres CancelRequest failed");
                    }
                    Err(_) => tracing::debug!(
                        timeout = ?CANCEL_TIMEOUT,
                        "postgres CancelRequest timed out"
                    ),
                }
            });
        };
        Self {
            send: Box::new(send),
            sent: AtomicBool::new(false),
        }
    }

    /// Sends a `CancelRequest` on a spawned task: one for each statement
    /// abandoned, since statements in flight together run one after the
    /// other. Never blocks, never panics; failures are logged at debug.
    pub(super) fn cancel(&self) {
        self.sent.store(true, Ordering::Release);
        (self.send)();
    }

    /// Whether [`cancel`](Self::cancel) was ever called.
    pub(super) fn was_sent(&self) -> bool {
        self.sent.load(Ordering::Acquire)
    }
}
