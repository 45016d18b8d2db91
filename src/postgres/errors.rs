//! PostgreSQL errors, and which of them end a session.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use ::tokio_postgres::error::{Severity, SqlState};

use crate::classify::{self, Classifier};
use crate::error::chain;

/// The PostgreSQL connection has closed.
///
/// [`PgConnection`](super::PgConnection)'s `poll_ready` fails with it once the connection has
/// closed, and a query sent to a closed connection is handed back as
/// [`NotSent`](crate::error::NotSent) with it as the cause. Its [`source()`](Error::source) is the
/// error that ended the connection, if one did: the `tokio_postgres::Error` of a reset, of an unexpected end of
/// the stream, or of a `FATAL` message from the server.
#[derive(Clone)]
pub struct ConnectionClosed {
    pub(super) source: Option<Arc<::tokio_postgres::Error>>,
}

impl fmt::Debug for ConnectionClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionClosed")
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ConnectionClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("postgres connection closed")
    }
}

impl Error for ConnectionClosed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// Whether any error in `error`'s `source()` chain means that a PostgreSQL
/// connection is dead:
///
/// - a [`ConnectionClosed`];
/// - a `tokio_postgres::Error` that [`is_closed`](::tokio_postgres::Error::is_closed):
///   the connection ended before the reply came (such errors carry no
///   [`io::Error`](std::io::Error), so the default classifier misses them);
/// - a server error of severity `FATAL` or `PANIC`, after which the server
///   ends the session, or of class `08` (connection exception), or
///   `57P01 admin_shutdown`, `57P02 crash_shutdown` or
///   `57P03 cannot_connect_now`.
///
/// It looks at types and SQLSTATE codes only, never at message text. An
/// IO error in the chain is left to
/// [`classify::is_transport_error`];
/// [`classifier`] combines the two.
pub fn is_postgres_transport_error(error: &(dyn Error + 'static)) -> bool {
    chain(error).any(|e| {
        if e.is::<ConnectionClosed>() {
            return true;
        }
        if let Some(error) = e.downcast_ref::<::tokio_postgres::Error>() {
            if error.is_closed() {
                return true;
            }
        }
        e.downcast_ref::<::tokio_postgres::error::DbError>()
            .is_some_and(|db| {
                matches!(
                    db.parsed_severity(),
                    Some(Severity::Fatal | Severity::Panic)
                ) || db.code().code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                    ]
                    .contains(db.code())
            })
    })
}

/// The classifier for a PostgreSQL connection of your own: the default
/// [`is_transport_error`](crate::classify::is_transport_error) (IO errors,
/// [`NotSent`](crate::error::NotSent), [`ConnectionLost`](crate::error::ConnectionLost), connect timeouts), or
/// [`is_postgres_transport_error`]. The same as
///
/// ```
/// # use tower_redial::classify::Classifier;
/// # use tower_redial::{classify, postgres};
/// Classifier::new(|e| classify::is_transport_error(e) || postgres::is_postgres_transport_error(e))
/// # ;
/// ```
///
/// [`PgConnection`](super::PgConnection) needs none: it already reports a query whose session
/// ended as a [`ConnectionLost`](crate::error::ConnectionLost), which the default classifier calls dead.
/// Set it on the policy with
/// [`ReconnectPolicyBuilder::classifier`](crate::ReconnectPolicyBuilder::classifier).
pub fn classifier() -> Classifier {
    Classifier::new(|e| classify::is_transport_error(e) || is_postgres_transport_error(e))
}

/// The [`tokio_postgres::Error`] in `error`'s
/// `source()` chain, if there is one: whether it is the error itself or
/// wrapped in a [`ConnectionLost`](crate::error::ConnectionLost) or a [`NotSent`](crate::error::NotSent). Its
/// [`code()`](::tokio_postgres::Error::code) is the SQLSTATE.
///
/// # Example
///
/// ```
/// use tower_redial::postgres::postgres_error;
/// use tower_redial::BoxError;
///
/// let other: BoxError = "not from postgres".into();
/// assert!(postgres_error(&*other).is_none());
/// ```
pub fn postgres_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a ::tokio_postgres::Error> {
    chain(error).find_map(|e| e.downcast_ref::<::tokio_postgres::Error>())
}

/// A [transaction](crate::Client::transaction) whose closure returned `Ok`
/// rolled back at `COMMIT`: a statement in it had failed, which aborts a
/// PostgreSQL transaction, and the closure did not return that error (it
/// ignored it, as in `tx.query(..).await.ok()`).
///
/// Nothing of the transaction committed, and it is not run again: the
/// crate rolled it back (`ROLLBACK`) and the connection goes on serving.
/// Its [`source()`](Error::source) is the server's
/// `25P02 in_failed_sql_transaction` error that gave the abort away.
///
/// # Example
///
/// ```
/// use tower_redial::postgres::{PgClient, Query, RolledBack};
/// use tower_redial::BoxError;
///
/// async fn save(client: PgClient) -> Result<(), BoxError> {
///     let saved = client
///         .transaction(|tx| async move {
///             // A failure ignored here aborts the transaction...
///             let _ = tx.query(Query::new("INSERT INTO log VALUES (1)")).await;
///             Ok::<_, BoxError>(())
///         })
///         .await;
///     match saved {
///         // ...and `transaction` says so, instead of `Ok`.
///         Err(error) if error.is::<RolledBack>() => Err("not saved: it rolled back".into()),
///         other => other,
///     }
/// }
/// # let _ = save;
/// ```
#[derive(Debug)]
pub struct RolledBack {
    pub(super) source: ::tokio_postgres::Error,
}

impl fmt::Display for RolledBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "postgres transaction rolled back at COMMIT: a statement in it failed \
             and the closure did not return the error; nothing of it committed",
        )
    }
}

impl Error for RolledBack {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.source)
    }
}
