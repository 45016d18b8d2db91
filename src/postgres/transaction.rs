//! Transactions: a closure run between `BEGIN` and `COMMIT` on one
//! connection, and run again whole if the connection dies before `COMMIT`.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use ::tokio_postgres::error::SqlState;
use pin_project_lite::pin_project;
use tokio::sync::RwLock;
use tower::util::Oneshot;
use tower::ServiceExt;

use crate::BoxError;

use super::connection::{ends_session, Shared};
use super::errors::{postgres_error, RolledBack};
use super::query::{Kind, Query, Rows};
use super::run::{not_sent, run_query, Within};

/// What a transaction's closure hands back, with its value's type erased
/// so that it can travel as a [`Query`].
type Finished = Result<Box<dyn Any + Send>, BoxError>;

/// The closure of a transaction, type-erased: callable again for a re-run.
pub(super) type Body =
    Arc<dyn Fn(Transaction) -> Pin<Box<dyn Future<Output = Finished> + Send>> + Send + Sync>;

impl crate::Client<Query, Rows> {
    /// Runs `body` in a transaction on one connection: `BEGIN`, the queries
    /// `body` runs through its [`Transaction`], then `COMMIT`, with no other
    /// caller's query in between. Returns what `body` returned, once the
    /// transaction has committed.
    ///
    /// `body` may run more than once: if the connection dies before
    /// `COMMIT` is sent, the server has rolled the transaction back, and
    /// the whole transaction goes again on the next connection (see
    /// [Transactions](crate::postgres#transactions) for the three ways it
    /// can end). Keep effects outside the database out of it.
    ///
    /// # Errors
    ///
    /// - the error `body` returned, as it is (boxed), after a `ROLLBACK`;
    /// - [`ConnectionLost`](crate::error::ConnectionLost) if the connection
    ///   died while `COMMIT` was in flight: it may or may not have
    ///   committed;
    /// - the server's error for `BEGIN` or `COMMIT` (such as a deferred
    ///   constraint's violation, or `40001 serialization_failure`): the
    ///   transaction did not commit;
    /// - [`RolledBack`] if `body` returned `Ok`
    ///   but a statement in it had failed (its error ignored), so that
    ///   `COMMIT` rolled back: nothing committed, and it is not run again;
    /// - [`NotSent`](crate::error::NotSent) if the connection died before
    ///   `COMMIT` on every attempt the policy allows, and the client's own
    ///   errors ([`Unavailable`](crate::error::Unavailable),
    ///   [`Closed`](crate::error::Closed)).
    ///
    /// # Deadlocks
    ///
    /// The transaction has the connection to itself until it ends: inside
    /// `body`, query through the [`Transaction`], never through the client,
    /// whose queries wait for the transaction to end.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_redial::postgres::{MakePostgres, PgClient, Query};
    /// use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// # let server = support::pg_server::PgServer::start().await;
    /// # let config: tokio_postgres::Config = server.conninfo().parse()?;
    /// let client: PgClient = ServiceBuilder::new()
    ///     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
    ///     .service(MakePostgres::new())
    ///     .client(config);
    /// # use tower::ServiceExt;
    /// # client.clone().oneshot(Query::batch(
    /// #     "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint);
    /// #      INSERT INTO accounts VALUES (1, 100), (2, 0)",
    /// # )).await?;
    ///
    /// let move_10 = Query::new("UPDATE accounts SET balance = balance + $2 WHERE id = $1");
    /// let balance: i64 = client
    ///     .transaction(move |tx| {
    ///         let move_10 = move_10.clone();
    ///         async move {
    ///             tx.query(move_10.clone().bind(1_i64).bind(-10_i64)).await?;
    ///             tx.query(move_10.bind(2_i64).bind(10_i64)).await?;
    ///             let rows = tx
    ///                 .query(Query::new("SELECT balance FROM accounts WHERE id = $1").bind(2_i64))
    ///                 .await?;
    ///             Ok::<_, BoxError>(rows.first().expect("account 2").get(0))
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(balance, 10);
    /// # Ok(())
    /// # }
    /// ```
    pub fn transaction<F, Fut, T, E>(&self, body: F) -> TransactionFuture<T>
    where
        F: Fn(Transaction) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Into<BoxError>,
    {
        let body: Body = Arc::new(move |tx| {
            let future = body(tx);
            Box::pin(async move {
                match future.await {
                    Ok(value) => Ok(Box::new(value) as Box<dyn Any + Send>),
                    Err(error) => Err(error.into()),
                }
            })
        });
        let mut query = Query::new("");
        query.kind = Kind::Transaction(body);
        TransactionFuture {
            inner: self.clone().oneshot(query),
            _value: PhantomData,
        }
    }
}

pin_project! {
    /// The future of [`Client::transaction`](crate::Client::transaction):
    /// what the closure returned, once the transaction has committed. It
    /// holds a clone of the client, so it can be spawned, as in
    /// `tokio::spawn(client.transaction(body))`.
    pub struct TransactionFuture<T> {
        #[pin]
        inner: Oneshot<crate::Client<Query, Rows>, Query>,
        _value: PhantomData<fn() -> T>,
    }
}

impl<T: 'static> Future for TransactionFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rows = ready!(self.project().inner.poll(cx))?;
        Poll::Ready(match rows.value.map(|value| value.downcast::<T>()) {
            Some(Ok(value)) => Ok(*value),
            _ => Err("transaction: the connection returned no value".into()),
        })
    }
}

impl<T> fmt::Debug for TransactionFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionFuture").finish_non_exhaustive()
    }
}

/// The handle a [transaction](crate::Client::transaction)'s closure runs
/// its queries through: they run on the transaction's connection, inside
/// the transaction.
///
/// It is good for one run of the closure. Moved into a task that the
/// closure spawns, it still queries inside the transaction: the
/// transaction waits for the handle's queries started before the closure
/// returned, before its `COMMIT` or `ROLLBACK`. Once the closure has
/// finished, new queries fail without being sent.
///
/// # Example
///
/// A closure that reads and writes through its handle:
///
/// ```
/// use tower_redial::postgres::{PgClient, Query, Transaction};
/// use tower_redial::BoxError;
///
/// async fn next_ticket(tx: Transaction) -> Result<i64, BoxError> {
///     let rows = tx
///         .query(Query::new("UPDATE counters SET n = n + 1 WHERE name = $1 RETURNING n").bind("tickets"))
///         .await?;
///     Ok(rows.first().expect("the counter").get(0))
/// }
///
/// async fn ticket(client: PgClient) -> Result<i64, BoxError> {
///     client.transaction(next_ticket).await
/// }
/// # let _ = ticket;
/// ```
pub struct Transaction {
    shared: Arc<Shared>,
    /// Cleared once the closure has finished. Each query holds it (read)
    /// from its check to its end, and the transaction clears it (write)
    /// before `COMMIT` or `ROLLBACK`: so a query through a handle that
    /// outlived the closure (moved into a spawned task) either ran whole
    /// before that, inside the transaction, or fails without being sent.
    open: Arc<RwLock<bool>>,
}

impl Transaction {
    /// Runs `query` in the transaction. Query errors are as for a query on
    /// the client (see [Errors](crate::postgres#errors)), except that
    /// nothing is re-sent: should the connection die, the whole transaction
    /// runs again. Return the error from the closure (with `?`): a failed
    /// statement aborts a PostgreSQL transaction, whose `COMMIT` then rolls
    /// back, and the transaction fails with
    /// [`RolledBack`].
    pub async fn query(&self, query: Query) -> Result<Rows, BoxError> {
        let open = self.open.read().await;
        if !*open {
            return Err("the transaction has ended".into());
        }
        run_query(&self.shared, query, Within::Transaction).await
    }
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("open", &self.open.try_read().map(|open| *open).ok())
            .finish_non_exhaustive()
    }
}

/// Gives the connection up if a transaction is abandoned half way (its
/// future dropped): it is closed, so that no other query runs inside the
/// transaction, and its running statement, if any, is cancelled (see
/// `Shared::abandon`); the server rolls the transaction back as the
/// session ends.
struct Abandoned<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Abandoned<'_> {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.abandon("postgres transaction abandoned");
        }
    }
}

/// Runs one transaction; see [Transactions](crate::postgres#transactions).
pub(super) async fn run(shared: Arc<Shared>, query: Query, body: Body) -> Result<Rows, BoxError> {
    let _turn = shared.turn.write().await;
    if shared.is_closed() {
        return Err(not_sent(query, shared.closed_error()));
    }
    let mut abandoned = Abandoned {
        shared: &shared,
        armed: true,
    };
    if let Err(error) = shared.client.batch_execute("BEGIN").await {
        abandoned.disarm();
        if ends_session(&error) {
            let error = shared.failed(error);
            return Err(not_sent(query, error));
        }
        return Err(error.into());
    }
    let open = Arc::new(RwLock::new(true));
    let tx = Transaction {
        shared: shared.clone(),
        open: open.clone(),
    };
    let finished = body(tx).await;
    // Waits for the handle's queries still running (from a task the
    // closure spawned), and fails the later ones.
    *open.write().await = false;
    // The session ended before `COMMIT` was sent: the server rolled the
    // transaction back, and the whole of it may run again.
    if session_ended(&shared, &finished) {
        abandoned.disarm();
        let cause = match finished {
            Err(error) => error,
            Ok(_) => shared.closed_error(),
        };
        return Err(not_sent(query, cause));
    }
    let result = match finished {
        Err(error) => {
            rollback(&shared).await;
            Err(error)
        }
        // From here on it may commit: a session that ends now leaves it
        // unknown whether it did.
        Ok(value) => commit(&shared).await.map(|()| Rows {
            value: Some(value),
            ..Rows::default()
        }),
    };
    abandoned.disarm();
    result
}

/// Sends `COMMIT`, and tells a commit from a rollback.
///
/// PostgreSQL answers the `COMMIT` of an aborted transaction (a statement
/// in it failed) with the command tag `ROLLBACK`, and no error; but
/// tokio-postgres reports a command tag only as its row count (0 for both).
/// So a probe goes first, in the same simple-query message (the same round
/// trip): in an aborted transaction `SELECT 1` fails with
/// `25P02 in_failed_sql_transaction`, and the server skips the rest of the
/// message, `COMMIT` included; otherwise `COMMIT` runs right after it.
async fn commit(shared: &Shared) -> Result<(), BoxError> {
    match shared.client.batch_execute("SELECT 1; COMMIT").await {
        Ok(()) => Ok(()),
        Err(error) if error.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
            tracing::debug!("postgres transaction was aborted; rolling it back");
            rollback(shared).await;
            Err(Box::new(RolledBack { source: error }))
        }
        Err(error) => Err(shared.failed(error)),
    }
}

/// Sends `ROLLBACK`. Whatever goes wrong, the session must not stay inside
/// the transaction: if it fails, the connection is closed, and the server
/// rolls back as the session ends.
async fn rollback(shared: &Shared) {
    if let Err(error) = shared.client.batch_execute("ROLLBACK").await {
        tracing::debug!(%error, "postgres ROLLBACK failed; closing the connection");
        shared.closed.close(io::ErrorKind::ConnectionAborted);
    }
}

/// Whether the session ended before `COMMIT`: the connection is closed, or
/// the closure failed with an error that ends the session (which then
/// closes the connection).
fn session_ended(shared: &Shared, finished: &Finished) -> bool {
    let ends = finished
        .as_ref()
        .err()
        .and_then(|e| postgres_error(&**e))
        .is_some_and(ends_session);
    if ends {
        shared.closed.close(io::ErrorKind::ConnectionAborted);
    }
    ends || shared.is_closed()
}
