//! One PostgreSQL session as a tower service.

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use ::tokio_postgres::error::SqlState;
use ::tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use ::tokio_postgres::{NoTls, Socket};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tower::Service;

use crate::boxed::boxed_future;
use crate::classify;
use crate::connect::CloseWatch;
use crate::error::ConnectionLost;
use crate::BoxError;

use super::cancel::Canceller;
use super::driver::{close_kind, drive};
use super::errors::{is_postgres_transport_error, ConnectionClosed};
use super::query::{Kind, Query, Rows};
use super::run::{run_query, Within};
use super::statements::Statements;
use super::transaction;

/// One PostgreSQL connection as a `Service<`[`Query`]`>`.
///
/// It owns a `tokio_postgres::Client`, whose connection runs on a spawned
/// task. Queries from concurrent calls are pipelined on the connection.
///
/// # Readiness
///
/// `poll_ready` is ready while the connection is open, and fails with
/// [`ConnectionClosed`] once it has closed, so that a
/// [`Reconnect`](crate::reconnect::Reconnect) drops it and redials. The connection
/// counts as closed as soon as its IO task ends, a query on it fails with an
/// error that ends the session, or the server's notice says it is ending
/// the session.
///
/// # Errors
///
/// A query on a connection that was already closed, or whose session ended
/// while it was being prepared, fails with [`NotSent`](crate::error::NotSent) carrying the query
/// back; any other failure is the query's `tokio_postgres::Error`. See
/// [What happens when the server restarts](super#what-happens-when-the-server-restarts).
///
/// # Cancellation
///
/// A query whose future is dropped after it started on the session (its
/// statement being prepared, run, or its rows read) and before it finished
/// (the policy's response timeout, the caller's own timeout) gives the
/// connection up. The connection is closed, so that the client redials and
/// nothing more is written to it, and a PostgreSQL `CancelRequest` is sent
/// on a spawned task (a fresh socket to the same server, through the TLS
/// connector of [`with_tls`](Self::with_tls); given up after 5 seconds,
/// its errors logged at debug), so that the statement stops running on the
/// server instead of holding a backend, and locks, to its end.
///
/// A `CancelRequest` stops whatever the backend runs when it arrives.
/// Since every query checks for the close before it writes, that is the
/// abandoned statement or another one already in flight beside it, whose
/// caller then gets [`ConnectionLost`] with the server's
/// `57014 query_canceled` as its source; never a later query. Statements
/// still queued on a given-up connection when it is dropped are cancelled
/// too.
///
/// # Shutdown
///
/// The connection's task ends when the connection closes, or once the
/// service and its in-flight queries are dropped: the connection then sends
/// the server a goodbye (`Terminate`) and closes. A server that does not
/// answer the queries still in flight gets 5 seconds before the task ends
/// anyway.
pub struct PgConnection {
    shared: Arc<Shared>,
    /// Closed when the connection's task ends, waking the client.
    closed: CloseWatch,
}

pub(super) struct Shared {
    pub(super) client: ::tokio_postgres::Client,
    ended: Arc<Ended>,
    /// A copy of the connection's close watch: queries close it when an
    /// error ends the session, and check it before they write anything.
    pub(super) closed: CloseWatch,
    /// Plain queries share the session (read); a transaction has it to
    /// itself (write), so that no other caller's query runs inside it.
    pub(super) turn: tokio::sync::RwLock<()>,
    /// The statements of `Query::prepared` queries.
    pub(super) statements: Statements,
    /// Cancels the session's statement when the connection is given up.
    cancel: Arc<Canceller>,
    /// Dropped with the client: tells the connection's task to wind down.
    _dropped: oneshot::Sender<()>,
}

/// How the connection's task ended.
#[derive(Default)]
pub(super) struct Ended {
    pub(super) error: OnceLock<Arc<::tokio_postgres::Error>>,
}

impl PgConnection {
    /// Takes a connected client and its connection, and spawns the
    /// connection's IO task.
    ///
    /// Use this to connect in your own way (a custom socket, TLS setup or
    /// `connect_raw`); [`MakePostgres`](super::MakePostgres) calls
    /// [`with_tls`](Self::with_tls) for you. A connection made with `new`
    /// sends its [`CancelRequest`](Self#cancellation) without TLS
    /// (`NoTls`): for a session opened through TLS, with `sslmode=require`,
    /// use [`with_tls`](Self::with_tls).
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use tower_redial::postgres::PgConnection;
    ///
    /// # async fn connect() -> Result<PgConnection, tokio_postgres::Error> {
    /// let config: tokio_postgres::Config = "host=127.0.0.1 user=postgres".parse()?;
    /// let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    /// Ok(PgConnection::new(client, connection))
    /// # }
    /// ```
    pub fn new<S, T>(
        client: ::tokio_postgres::Client,
        connection: ::tokio_postgres::Connection<S, T>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::with_tls(client, connection, NoTls)
    }

    /// As [`new`](Self::new), with the TLS connector `tls` that the session
    /// was opened with: its [`CancelRequest`](Self#cancellation) dials the
    /// server through it.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use tower_redial::postgres::PgConnection;
    ///
    /// # async fn connect() -> Result<PgConnection, tokio_postgres::Error> {
    /// let tls = tokio_postgres::NoTls; // or MakeRustlsConnect::new(client_config)
    /// let config: tokio_postgres::Config = "host=db.example.com sslmode=require".parse()?;
    /// let (client, connection) = config.connect(tls).await?;
    /// Ok(PgConnection::with_tls(client, connection, tls))
    /// # }
    /// ```
    pub fn with_tls<S, T, M>(
        client: ::tokio_postgres::Client,
        connection: ::tokio_postgres::Connection<S, T>,
        tls: M,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        M: MakeTlsConnect<Socket> + Clone + Send + 'static,
        M::Stream: Send + 'static,
        M::TlsConnect: Send,
        <M::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let ended = Arc::new(Ended::default());
        let (dropped_tx, dropped) = oneshot::channel();
        let closed = CloseWatch::new();
        let cancel = Arc::new(Canceller::new(client.cancel_token(), tls));
        tokio::spawn(drive(
            connection,
            dropped,
            ended.clone(),
            closed.for_clone(),
            cancel.clone(),
        ));
        Self {
            shared: Arc::new(Shared {
                client,
                ended,
                closed: closed.for_clone(),
                turn: tokio::sync::RwLock::new(()),
                statements: Statements::default(),
                cancel,
                _dropped: dropped_tx,
            }),
            closed,
        }
    }

    /// Whether the connection has closed, or is known to be closing: its
    /// task has ended, or the server has said that it is ending the session
    /// (see [What happens when the server restarts](super#what-happens-when-the-server-restarts)).
    /// A closed connection never opens again: its `poll_ready` fails.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

impl Shared {
    pub(super) fn is_closed(&self) -> bool {
        self.closed.closed().is_some() || self.client.is_closed()
    }

    /// The error for a closed connection, with the reason it closed, if
    /// the connection's task has recorded one.
    pub(super) fn closed_error(&self) -> BoxError {
        Box::new(ConnectionClosed {
            source: self.ended.error.get().cloned(),
        })
    }

    /// Boxes a query's error. An error that ends the session first marks
    /// the connection closed, so that nothing more is written to it, and
    /// comes back as a [`ConnectionLost`], so that the client redials
    /// whatever its classifier. So does a statement cancelled
    /// (`57014 query_canceled`) by this connection's own `CancelRequest`:
    /// it was in flight on a connection being given up.
    pub(super) fn failed(&self, error: ::tokio_postgres::Error) -> BoxError {
        if ends_session(&error) {
            tracing::debug!(%error, "postgres session ended under a query");
            self.closed.close(close_kind(&error));
            return Box::new(ConnectionLost::new(error));
        }
        if self.cancel.was_sent() && error.code() == Some(&SqlState::QUERY_CANCELED) {
            tracing::debug!(%error, "postgres statement cancelled with its connection");
            return Box::new(ConnectionLost::new(error));
        }
        error.into()
    }

    /// Gives the connection up because a caller stopped waiting for its
    /// statement (a dropped future): marks it closed, so that nothing more
    /// is written to it and the client redials, then sends the server a
    /// `CancelRequest`, so that the statement stops running (and a
    /// transaction's statement lets go of its locks). The request cancels
    /// whatever the backend runs when it arrives; since every query checks
    /// the close before it writes, that can only be a statement handed to
    /// this connection before it was given up (the abandoned one, or
    /// another caller's in flight beside it, which then fails with
    /// `ConnectionLost`, see [`failed`](Self::failed)), never a later one.
    pub(super) fn abandon(&self, why: &'static str) {
        tracing::debug!("{why}; closing its connection and cancelling its statement");
        self.closed.close(io::ErrorKind::ConnectionAborted);
        self.cancel.cancel();
    }
}

impl Service<Query> for PgConnection {
    type Response = Rows;
    type Error = BoxError;
    type Future = QueryFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.closed.poll_closed(cx).is_ready() || self.shared.client.is_closed() {
            return Poll::Ready(Err(self.shared.closed_error()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, query: Query) -> QueryFuture {
        QueryFuture::new(run(self.shared.clone(), query))
    }
}

/// Runs one request: a transaction has the session to itself, other
/// queries share it.
async fn run(shared: Arc<Shared>, query: Query) -> Result<Rows, BoxError> {
    if let Kind::Transaction(body) = &query.kind {
        let body = body.clone();
        return transaction::run(shared, query, body).await;
    }
    let _turn = shared.turn.read().await;
    run_query(&shared, query, Within::Session).await
}

/// Whether a query's error means that the session is over: an IO error, or
/// what [`is_postgres_transport_error`] finds.
pub(super) fn ends_session(error: &::tokio_postgres::Error) -> bool {
    is_postgres_transport_error(error) || classify::is_transport_error(error)
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("closed", &self.is_closed())
            .finish()
    }
}

boxed_future! {
    /// The response future of [`PgConnection`].
    pub struct QueryFuture => Result<Rows, BoxError>;
}
