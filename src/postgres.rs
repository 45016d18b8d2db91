//! PostgreSQL through `tokio-postgres`: a client that stays connected while
//! the server restarts.
//!
//! [`MakePostgres`] is the connection factory. Given a
//! [`Config`], it connects (without TLS by
//! default) and spawns the connection's IO task. Each connection is a
//! [`PgConnection`]: a `Service<`[`Query`]`>` that answers with [`Rows`].
//! Wrap the factory in a [`ReconnectLayer`](crate::ReconnectLayer) and bind
//! it to a config to get a [`PgClient`]: one connection, redialed with backoff
//! when it breaks, shared by every clone of the client.
//!
//! # Example
//!
//! ```no_run
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_redial::postgres::{MakePostgres, PgClient, Query};
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let config: tokio_postgres::Config = "host=127.0.0.1 user=postgres dbname=postgres".parse()?;
//! let client: PgClient = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(MakePostgres::new())
//!     .client(config);
//!
//! client
//!     .clone()
//!     .oneshot(Query::batch("CREATE TABLE IF NOT EXISTS visits (id bigint PRIMARY KEY)"))
//!     .await?;
//! let inserted = client
//!     .clone()
//!     .oneshot(Query::new("INSERT INTO visits (id) VALUES ($1)").bind(7_i64))
//!     .await?;
//! assert_eq!(inserted.rows_affected(), 1);
//!
//! let rows = client
//!     .oneshot(Query::new("SELECT count(*) FROM visits").idempotent())
//!     .await?;
//! let count: i64 = rows.first().expect("one row").get(0);
//! println!("{count} visits");
//! # Ok(())
//! # }
//! ```
//!
//! # What happens when the server restarts
//!
//! What a session sees depends on how the server is stopped. The connection
//! tells the cases apart by SQLSTATE, never by message text:
//!
//! | how | what the session sees | what the connection does |
//! |---|---|---|
//! | `pg_ctl -m fast` (the default), `pg_terminate_backend` | `FATAL 57P01 admin_shutdown`, as the answer to the query in progress or on its own, then the end of the stream | closes |
//! | `pg_ctl -m immediate` | a `WARNING` notice `57P01 admin_shutdown`, then the end of the stream | closes, on the notice |
//! | another server process crashed | a `WARNING` notice `57P02 crash_shutdown`, then the end of the stream | closes, on the notice |
//! | `pg_ctl -m smart` | nothing: the session goes on | stays open (see below) |
//! | a server shutting down, starting up or in recovery | every new connection is refused with `FATAL 57P03 cannot_connect_now` | a dial failure |
//!
//! 1. The connection closes as soon as it sees one of these: its IO task
//!    ends, or a query on it fails with an error that ends the session (a
//!    `FATAL` or `PANIC` error, class `08`, `57P01`, `57P02`, `57P03`, an
//!    IO error, or a closed connection), or a notice says the server is
//!    ending it. It marks itself closed through its
//!    [`CloseWatch`], so its next `poll_ready` fails with
//!    [`ConnectionClosed`], and the [`Reconnect`](crate::reconnect::Reconnect) inside
//!    the client drops it and redials at once. This holds with any
//!    [`Classifier`], the default included.
//! 2. While the server is down or not yet accepting connections (the dial is
//!    refused, or answered with `57P03`), dials fail and are retried with the
//!    policy's backoff. Requests wait in the client's queue, for up to the
//!    policy's wait limit; past it they fail fast with
//!    [`Unavailable`](crate::error::Unavailable).
//! 3. Once a dial succeeds, the queued requests run on the new connection.
//!
//! Requests caught by the restart itself end in one of two ways:
//!
//! - **Not executed.** A query is run in two steps: the statement is
//!   prepared, then executed. A query handed to a connection already known
//!   to be closed is not written at all; a query whose session ended while
//!   it was being prepared never ran, since preparing runs nothing. It is
//!   handed back as [`NotSent`], and the client re-sends it on the next
//!   connection without being asked to.
//! - **Maybe executed.** A query whose execute step, or a
//!   [`batch`](Query::batch), had been handed to the connection when the
//!   session ended fails with the connection's [`tokio_postgres::Error`]:
//!   `57P01`, or [`is_closed`](::tokio_postgres::Error::is_closed). The
//!   server may have run it, and committed it, before it went away: only the
//!   reply was lost. Even `57P01` does not say otherwise: a batch
//!   `"BEGIN; INSERT ...; COMMIT; SELECT ..."` that is stopped in its last
//!   statement fails with it after its insert committed. Such a query is
//!   **not** re-sent (see below). Check for its effect before you do it
//!   again, or make the statement safe to repeat (`INSERT ... ON CONFLICT
//!   DO NOTHING`). (A query that tokio-postgres still held unwritten when
//!   the connection ended fails the same way: tokio-postgres does not tell
//!   the two apart, so neither can this crate.)
//!
//! **A smart shutdown waits for the client.** `pg_ctl stop -m smart` (or
//! `restart -m smart`) refuses new connections with `57P03` and waits for
//! every session to end. A client keeps its connection for as long as it
//! lives, and queries on that connection go on working, so a smart shutdown
//! waits until every clone of the client is dropped. `pg_ctl` gives up
//! after its timeout (`-t`, 60 s by default) with "server does not shut
//! down", and leaves the server refusing new connections; once the last
//! session ends, the server stops and does not start again. To restart a
//! server under long-lived clients, use `-m fast`: the client redials and
//! its queued requests wait. Or drop the clients first.
//!
//! Everything tied to the old session is gone: prepared statements, `SET`
//! parameters, temporary tables, advisory locks, `LISTEN` channels and any
//! open transaction (which the server rolled back).
//!
//! # At most once
//!
//! By default a query that may have reached the server is never sent again:
//! an `INSERT` whose reply was lost may well have committed, and sending it
//! again would insert twice (or fail on a unique key, and hide that the first
//! one worked). Reads, and writes that are safe to repeat, can opt in: mark
//! them with [`Query::idempotent`], and build the layer with
//! `.resend_if(Query::is_idempotent)`. Such queries are re-sent when their
//! connection breaks under them: [`PgConnection`] reports that as a
//! [`ConnectionLost`], which the default
//! classifier calls dead (see [Errors](self#errors)).
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_redial::postgres::{MakePostgres, PgClient, Query};
//! use tower_redial::{ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_redial::BoxError> {
//! # let config = tokio_postgres::Config::new();
//! let policy = ReconnectPolicy::default();
//! let client: PgClient = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(policy).resend_if(Query::is_idempotent))
//!     .service(MakePostgres::new())
//!     .client(config);
//! # Ok(())
//! # }
//! ```
//!
//! # Transactions
//!
//! A transaction lives on one connection, and the layer does not carry one
//! across a redial: if the connection breaks mid-transaction, the server
//! rolls it back, and the rest of it must not run on the next connection as
//! if nothing happened. Clones of a client also share one connection and
//! pipeline their queries on it, so a `BEGIN` sent as one request and a
//! `COMMIT` sent as another could wrap other callers' queries, or be split
//! by a redial. Never do that. Send a whole transaction as one request
//! instead:
//!
//! - one statement (each statement is its own transaction), or a
//!   data-modifying `WITH` query;
//! - a [`Query::batch`] such as
//!   `"BEGIN; UPDATE ...; INSERT ...; COMMIT"`, which runs as one
//!   simple-query message. If the connection breaks before the reply, the
//!   batch either committed as a whole or not at all.
//!
//! For interactive transactions, take a plain `tokio_postgres::Client` of
//! your own.
//!
//! # Errors
//!
//! A query fails with:
//!
//! - the [`tokio_postgres::Error`] of the query, as a [`BoxError`]: the
//!   server's answer (a [`DbError`](::tokio_postgres::error::DbError) such as
//!   a unique violation);
//! - [`ConnectionLost`], with the
//!   `tokio_postgres::Error` as its source, when the session ended after
//!   the query may have been sent: the connection broke, or the server
//!   ended the session (what [`is_postgres_transport_error`] finds, such as
//!   `57P01 admin_shutdown` or a `FATAL` error). The default classifier
//!   calls it dead, so no classifier needs to be set;
//! - [`NotSent`], with a [`ConnectionClosed`] or a `tokio_postgres::Error` as
//!   its source, only once the client's re-send attempts or budget are
//!   spent;
//! - the client's own errors: [`Unavailable`](crate::error::Unavailable) and
//!   [`Closed`](crate::error::Closed); see [`error`](crate::error).

use std::error::Error;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::tokio_postgres::error::{Severity, SqlState};
use ::tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use ::tokio_postgres::types::ToSql;
use ::tokio_postgres::{AsyncMessage, Config, NoTls, Row, Socket};
use futures_core::Stream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tower::Service;

use crate::classify::{self, chain, Classifier};
use crate::connect::CloseWatch;
use crate::error::{ConnectionLost, NotSent};
use crate::BoxError;

/// A reconnecting PostgreSQL client: what
/// `ServiceBuilder::new().layer(ReconnectLayer::new(policy)).service(MakePostgres::new()).client(config)`
/// returns. See the [module docs](self).
pub type PgClient = crate::Client<Query, Rows>;

/// How long a dropped connection may take to finish its in-flight replies
/// and say goodbye to the server before its IO task is ended anyway.
const GOODBYE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------

/// One request: a SQL statement and its parameters, owned, so that it can
/// wait in a queue and be re-sent.
///
/// [`Query::new`] runs one statement with the extended protocol: it is
/// prepared, then executed with the parameters bound with [`Query::bind`]
/// (`$1`, `$2`, ...). [`Query::batch`] runs one or more statements, with no
/// parameters, in one simple-query message.
///
/// # Clone
///
/// Cloning is cheap: the text and the parameters are shared.
///
/// # Example
///
/// ```
/// use tower_redial::postgres::Query;
///
/// let insert = Query::new("INSERT INTO users (id, name) VALUES ($1, $2)")
///     .bind(7_i64)
///     .bind("ada");
/// assert!(!insert.is_idempotent());
///
/// let read = Query::new("SELECT name FROM users WHERE id = $1").bind(7_i64).idempotent();
/// assert!(read.is_idempotent());
/// ```
#[derive(Clone)]
pub struct Query {
    sql: Arc<str>,
    params: Vec<Param>,
    kind: Kind,
    idempotent: bool,
}

type Param = Arc<dyn ToSql + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Prepare, then bind and execute.
    Statement,
    /// The simple-query protocol: one or more statements, no parameters.
    Batch,
}

impl Query {
    /// One SQL statement, with parameters `$1`, `$2`, ... to be bound in
    /// order with [`bind`](Query::bind).
    pub fn new(sql: impl Into<Arc<str>>) -> Self {
        Self {
            sql: sql.into(),
            params: Vec::new(),
            kind: Kind::Statement,
            idempotent: false,
        }
    }

    /// One or more SQL statements separated by `;`, sent as one simple-query
    /// message: for DDL, and for a whole transaction
    /// (`"BEGIN; ...; COMMIT"`). A batch takes no parameters and returns no
    /// rows.
    pub fn batch(sql: impl Into<Arc<str>>) -> Self {
        Self {
            kind: Kind::Batch,
            ..Self::new(sql)
        }
    }

    /// Binds the next parameter: the first call binds `$1`, the next `$2`.
    ///
    /// # Panics
    ///
    /// If the query is a [`batch`](Query::batch), which takes no parameters.
    pub fn bind<T>(mut self, value: T) -> Self
    where
        T: ToSql + Send + Sync + 'static,
    {
        assert!(
            self.kind == Kind::Statement,
            "Query::bind: a batch takes no parameters"
        );
        self.params.push(Arc::new(value));
        self
    }

    /// Marks the query as safe to run twice, such as a read. Only a client
    /// built with `.resend_if(Query::is_idempotent)` acts on it; see
    /// [At most once](self#at-most-once).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Whether the query was marked [`idempotent`](Query::idempotent). Pass
    /// it to [`ReconnectLayer::resend_if`](crate::ReconnectLayer::resend_if).
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// How many parameters are bound.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }
}

/// Shows the SQL text and how many parameters are bound, never their values,
/// which may be secrets.
impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query")
            .field("sql", &self.sql)
            .field("params", &self.params.len())
            .field("batch", &(self.kind == Kind::Batch))
            .field("idempotent", &self.idempotent)
            .finish()
    }
}

/// The answer to a [`Query`]: the rows it returned, and the count from its
/// command tag.
#[derive(Debug, Default)]
pub struct Rows {
    rows: Vec<Row>,
    rows_affected: u64,
}

impl Rows {
    /// The number of rows the statement inserted, updated, deleted, copied or
    /// returned, as reported by the server. 0 for a [`batch`](Query::batch).
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }

    /// The rows returned.
    pub fn as_slice(&self) -> &[Row] {
        &self.rows
    }

    /// The first row returned, if any.
    pub fn first(&self) -> Option<&Row> {
        self.rows.first()
    }

    /// How many rows were returned.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no rows were returned.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Iterates over the rows returned.
    pub fn iter(&self) -> std::slice::Iter<'_, Row> {
        self.rows.iter()
    }

    /// The rows returned, by value.
    pub fn into_vec(self) -> Vec<Row> {
        self.rows
    }
}

impl IntoIterator for Rows {
    type Item = Row;
    type IntoIter = std::vec::IntoIter<Row>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.into_iter()
    }
}

impl<'a> IntoIterator for &'a Rows {
    type Item = &'a Row;
    type IntoIter = std::slice::Iter<'a, Row>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

// ---------------------------------------------------------------------------
// The connection service
// ---------------------------------------------------------------------------

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
/// while it was being prepared, fails with [`NotSent`] carrying the query
/// back; any other failure is the query's `tokio_postgres::Error`. See
/// [What happens when the server restarts](self#what-happens-when-the-server-restarts).
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

struct Shared {
    client: ::tokio_postgres::Client,
    ended: Arc<Ended>,
    /// A copy of the connection's close watch: queries close it when an
    /// error ends the session, and check it before they write anything.
    closed: CloseWatch,
    /// Dropped with the client: tells the connection's task to wind down.
    _dropped: oneshot::Sender<()>,
}

/// How the connection's task ended.
#[derive(Default)]
struct Ended {
    error: OnceLock<Arc<::tokio_postgres::Error>>,
}

impl PgConnection {
    /// Takes a connected client and its connection, and spawns the
    /// connection's IO task.
    ///
    /// Use this to connect in your own way (a custom socket, TLS setup or
    /// `connect_raw`); [`MakePostgres`] calls it for you.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn new<S, T>(
        client: ::tokio_postgres::Client,
        connection: ::tokio_postgres::Connection<S, T>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ended = Arc::new(Ended::default());
        let (dropped_tx, dropped) = oneshot::channel();
        let closed = CloseWatch::new();
        tokio::spawn(drive(
            connection,
            dropped,
            ended.clone(),
            closed.for_clone(),
        ));
        Self {
            shared: Arc::new(Shared {
                client,
                ended,
                closed: closed.for_clone(),
                _dropped: dropped_tx,
            }),
            closed,
        }
    }

    /// Whether the connection has closed, or is known to be closing: its
    /// task has ended, or the server has said that it is ending the session
    /// (see [What happens when the server restarts](self#what-happens-when-the-server-restarts)).
    /// A closed connection never opens again: its `poll_ready` fails.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }
}

impl Shared {
    fn is_closed(&self) -> bool {
        self.closed.closed().is_some() || self.client.is_closed()
    }

    /// The error for a closed connection, with the reason it closed, if
    /// the connection's task has recorded one.
    fn closed_error(&self) -> BoxError {
        Box::new(ConnectionClosed {
            source: self.ended.error.get().cloned(),
        })
    }

    /// Boxes a query's error. An error that ends the session first marks
    /// the connection closed, so that nothing more is written to it, and
    /// comes back as a [`ConnectionLost`], so that the client redials
    /// whatever its classifier.
    fn failed(&self, error: ::tokio_postgres::Error) -> BoxError {
        if ends_session(&error) {
            tracing::debug!(%error, "postgres session ended under a query");
            self.closed.close(close_kind(&error));
            return Box::new(ConnectionLost::new(error));
        }
        error.into()
    }
}

/// Runs the connection until it closes, or until the client is dropped and
/// the connection has said goodbye (or [`GOODBYE`] has passed).
async fn drive<S, T>(
    mut connection: ::tokio_postgres::Connection<S, T>,
    dropped: oneshot::Receiver<()>,
    ended: Arc<Ended>,
    closed: CloseWatch,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut dropped = dropped;
    let finished = poll_fn(|cx| {
        if let Poll::Ready(result) = poll_connection(&mut connection, &closed, cx) {
            return Poll::Ready(Some(result));
        }
        Pin::new(&mut dropped).poll(cx).map(|_| None)
    })
    .await;
    let result = match finished {
        Some(result) => result,
        // The client is gone: the connection finishes the replies in flight,
        // sends `Terminate` and closes, unless the server hangs.
        None => {
            let goodbye = poll_fn(|cx| poll_connection(&mut connection, &closed, cx));
            match tokio::time::timeout(GOODBYE, goodbye).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!("postgres connection did not close in time; dropping it");
                    Ok(())
                }
            }
        }
    };
    match result {
        Ok(()) => {
            tracing::debug!("postgres connection closed");
            closed.close(io::ErrorKind::UnexpectedEof);
        }
        Err(error) => {
            tracing::debug!(%error, "postgres connection ended");
            let kind = close_kind(&error);
            let _ = ended.error.set(Arc::new(error));
            closed.close(kind);
        }
    }
}

/// Drives the connection until it ends, as its own `Future` does, and reads
/// the server's notices on the way: a notice that the server is ending the
/// session closes `closed` at once, before the stream ends.
fn poll_connection<S, T>(
    connection: &mut ::tokio_postgres::Connection<S, T>,
    closed: &CloseWatch,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ::tokio_postgres::Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ready!(connection.poll_message(cx)) {
            None => return Poll::Ready(Ok(())),
            Some(Err(error)) => return Poll::Ready(Err(error)),
            Some(Ok(AsyncMessage::Notice(notice))) if ends_session_notice(&notice) => {
                tracing::debug!(
                    code = notice.code().code(),
                    message = notice.message(),
                    "postgres server is ending the session"
                );
                closed.close(io::ErrorKind::ConnectionAborted);
            }
            Some(Ok(AsyncMessage::Notice(notice))) => tracing::debug!(
                severity = notice.severity(),
                code = notice.code().code(),
                message = notice.message(),
                "postgres notice"
            ),
            // Notifications: nothing here listens for them.
            Some(Ok(_)) => {}
        }
    }
}

/// The IO error kind to close a connection's watch with, for the error that
/// ended it.
fn close_kind(error: &::tokio_postgres::Error) -> io::ErrorKind {
    chain(error)
        .find_map(|e| e.downcast_ref::<io::Error>())
        .map_or(io::ErrorKind::ConnectionAborted, io::Error::kind)
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
        QueryFuture {
            inner: Box::pin(run(self.shared.clone(), query)),
        }
    }
}

/// Runs one query; see [`PgConnection`]'s `# Errors`.
///
/// A query comes back [`NotSent`] only when its statement provably never
/// ran: the connection was known to be closed before the statement was
/// handed to it, or the session ended while the statement was being
/// prepared (`Parse` and `Describe` run nothing). Once the statement (or a
/// batch) has been handed to the connection, its bytes may have reached the
/// server, and any failure goes back as it is.
async fn run(shared: Arc<Shared>, query: Query) -> Result<Rows, BoxError> {
    let client = &shared.client;
    let not_sent = |query: Query, cause: BoxError| -> BoxError {
        tracing::debug!(error = %cause, "postgres query not executed; handing it back");
        Box::new(NotSent::with_request(query, cause))
    };
    // Nothing is written to a connection known to be closed.
    if shared.is_closed() {
        return Err(not_sent(query, shared.closed_error()));
    }
    if query.kind == Kind::Batch {
        return match client.batch_execute(&query.sql).await {
            Ok(()) => Ok(Rows::default()),
            Err(error) => Err(shared.failed(error)),
        };
    }
    let statement = match client.prepare(&query.sql).await {
        Ok(statement) => statement,
        Err(error) if ends_session(&error) => {
            let error = shared.failed(error);
            return Err(not_sent(query, error));
        }
        Err(error) => return Err(error.into()),
    };
    if shared.is_closed() {
        return Err(not_sent(query, shared.closed_error()));
    }
    // From here on the statement may run. Even `57P01 admin_shutdown` does
    // not say that it did not: the server may have committed it, or an
    // earlier statement of a batch, before it was told to stop.
    execute(client, &statement, &query.params)
        .await
        .map_err(|error| shared.failed(error))
}

/// Binds and executes a prepared statement, and collects its rows.
async fn execute(
    client: &::tokio_postgres::Client,
    statement: &::tokio_postgres::Statement,
    params: &[Param],
) -> Result<Rows, ::tokio_postgres::Error> {
    let params = params.iter().map(|p| &**p as &(dyn ToSql + Sync));
    let stream = client.query_raw(statement, params).await?;
    let mut stream = pin!(stream);
    let mut rows = Vec::new();
    while let Some(row) = poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        rows.push(row?);
    }
    Ok(Rows {
        rows,
        rows_affected: stream.rows_affected().unwrap_or(0),
    })
}

/// Whether a query's error means that the session is over: an IO error, or
/// what [`is_postgres_transport_error`] finds.
fn ends_session(error: &::tokio_postgres::Error) -> bool {
    is_postgres_transport_error(error) || classify::is_transport_error(error)
}

/// Whether a notice says that the server is ending the session at once:
/// `57P01 admin_shutdown` (an immediate shutdown) or `57P02 crash_shutdown`
/// (another server process crashed). PostgreSQL sends these as `WARNING`s,
/// and the server process exits right after.
fn ends_session_notice(notice: &::tokio_postgres::error::DbError) -> bool {
    [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN].contains(notice.code())
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The response future of [`PgConnection`].
pub struct QueryFuture {
    inner: Pin<Box<dyn Future<Output = Result<Rows, BoxError>> + Send>>,
}

impl Future for QueryFuture {
    type Output = Result<Rows, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for QueryFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryFuture").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// The connection factory
// ---------------------------------------------------------------------------

/// The connection factory: a `Service<`[`Config`]`>`
/// that connects and returns a [`PgConnection`].
///
/// Wrap it in a [`ReconnectLayer`](crate::ReconnectLayer); see the
/// [module docs](self). Every dial connects with a fresh clone of the config,
/// so host names are resolved afresh. The config names the connection in
/// logs; its `Debug` form never shows the password.
///
/// The dial error is the `tokio_postgres::Error` of the connect: a refused
/// or reset connection, an authentication failure, or the server's
/// `57P03 cannot_connect_now` while it starts up or shuts down.
///
/// # TLS
///
/// [`MakePostgres::new`] connects without TLS (`NoTls`).
/// [`MakePostgres::with_tls`] takes any `tokio-postgres` TLS connector, such
/// as `postgres-native-tls`' or `postgres-openssl`'s.
#[derive(Clone, Debug)]
pub struct MakePostgres<T = NoTls> {
    tls: T,
}

impl MakePostgres {
    /// A factory that connects without TLS.
    pub fn new() -> Self {
        Self { tls: NoTls }
    }
}

impl Default for MakePostgres {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> MakePostgres<T> {
    /// A factory that connects through the TLS connector `tls`.
    pub fn with_tls(tls: T) -> Self {
        Self { tls }
    }
}

impl<T> Service<Config> for MakePostgres<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Response = PgConnection;
    type Error = ::tokio_postgres::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, config: Config) -> Connecting {
        let tls = self.tls.clone();
        Connecting {
            inner: Box::pin(async move {
                let (client, connection) = config.connect(tls).await?;
                Ok(PgConnection::new(client, connection))
            }),
        }
    }
}

/// The future of [`MakePostgres`]: a connect in progress.
pub struct Connecting {
    inner: Pin<Box<dyn Future<Output = Result<PgConnection, ::tokio_postgres::Error>> + Send>>,
}

impl Future for Connecting {
    type Output = Result<PgConnection, ::tokio_postgres::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for Connecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connecting").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Errors and their classification
// ---------------------------------------------------------------------------

/// The PostgreSQL connection has closed.
///
/// [`PgConnection`]'s `poll_ready` fails with it once the connection has
/// closed, and a query sent to a closed connection is handed back as
/// [`NotSent`] with it as the cause. Its [`source()`](Error::source) is the
/// error that ended the connection, if one did: the `tokio_postgres::Error` of a reset, of an unexpected end of
/// the stream, or of a `FATAL` message from the server.
#[derive(Clone)]
pub struct ConnectionClosed {
    source: Option<Arc<::tokio_postgres::Error>>,
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
///   [`io::Error`], so the default classifier misses them);
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
/// [`NotSent`], [`ConnectionLost`], connect timeouts), or
/// [`is_postgres_transport_error`]. The same as
///
/// ```
/// # use tower_redial::classify::Classifier;
/// # use tower_redial::{classify, postgres};
/// Classifier::new(|e| classify::is_transport_error(e) || postgres::is_postgres_transport_error(e))
/// # ;
/// ```
///
/// [`PgConnection`] needs none: it already reports a query whose session
/// ended as a [`ConnectionLost`], which the default classifier calls dead.
/// Set it on the policy with
/// [`ReconnectPolicyBuilder::classifier`](crate::ReconnectPolicyBuilder::classifier).
pub fn classifier() -> Classifier {
    Classifier::new(|e| classify::is_transport_error(e) || is_postgres_transport_error(e))
}

/// The [`tokio_postgres::Error`] in `error`'s
/// `source()` chain, if there is one: whether it is the error itself or
/// wrapped in a [`ConnectionLost`] or a [`NotSent`]. Its
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
