//! PostgreSQL through `tokio-postgres`: a client that stays connected while
//! the server restarts.
//!
//! [`MakePostgres`] is the connection factory. Given a
//! [`Config`](::tokio_postgres::Config), it connects (without TLS by
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
//!    [`CloseWatch`](crate::connect::CloseWatch), so its next `poll_ready` fails with
//!    [`ConnectionClosed`], and the [`Reconnect`](crate::reconnect::Reconnect) inside
//!    the client drops it and redials at once. This holds with any
//!    [`Classifier`](crate::classify::Classifier), the default included.
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
//!   handed back as [`NotSent`](crate::error::NotSent), and the client re-sends it on the next
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
//! open transaction (which the server rolled back). The statements of
//! [`Query::prepared`] queries are prepared again on the new session (see
//! [Prepared statements](self#prepared-statements)), and a
//! [transaction](self#transactions) cut before its `COMMIT` runs again.
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
//! [`ConnectionLost`](crate::error::ConnectionLost), which the default
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
//! [`PgClient::transaction`](crate::Client::transaction) runs a closure in a
//! transaction on one connection: `BEGIN`, the queries the closure runs
//! through its [`Transaction`], then `COMMIT`. While it runs, the
//! transaction has the connection to itself: other callers' queries wait,
//! and run after it, never inside it.
//!
//! ```no_run
//! use tower::ServiceBuilder;
//! use tower_redial::postgres::{MakePostgres, PgClient, Query};
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # let config: tokio_postgres::Config = "host=127.0.0.1 user=postgres".parse()?;
//! let client: PgClient = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(MakePostgres::new())
//!     .client(config);
//!
//! let order: i64 = client
//!     .transaction(|tx| async move {
//!         let rows = tx
//!             .query(Query::new("INSERT INTO orders (item) VALUES ($1) RETURNING id").bind("tea"))
//!             .await?;
//!         let id: i64 = rows.first().expect("one row").get(0);
//!         tx.query(Query::new("UPDATE stock SET count = count - 1 WHERE item = $1").bind("tea"))
//!             .await?;
//!         Ok::<_, BoxError>(id)
//!     })
//!     .await?;
//! # let _ = order;
//! # Ok(())
//! # }
//! ```
//!
//! What a caller is told depends on when the transaction stopped:
//!
//! | the transaction stopped | on the server | `transaction` returns |
//! |---|---|---|
//! | the connection died before `COMMIT` was sent (in `BEGIN`, in the closure, or between) | the session ended inside the transaction, which the server rolled back: nothing of it committed | nothing yet: the connection hands the whole transaction back as [`NotSent`](crate::error::NotSent), and the client runs it again, from `BEGIN`, closure and all, on the next connection, within the policy's attempts and retry budget (once those are spent, the `NotSent`) |
//! | the connection died while `COMMIT` was in flight | it may have committed, or not | [`ConnectionLost`](crate::error::ConnectionLost), with PostgreSQL's error as its source; not run again |
//! | the closure returned an error | rolled back (`ROLLBACK`) | the closure's error, as it is; not run again |
//! | `COMMIT` failed with the server's own error (a deferred constraint, `40001 serialization_failure`) | rolled back | that `tokio_postgres::Error` |
//! | the closure returned `Ok`, but a statement in it had failed (its error ignored), which aborted the transaction | rolled back (`ROLLBACK`): nothing of it committed | [`RolledBack`]; not run again |
//!
//! So the closure may run more than once, but what it does in the database
//! commits at most once: keep effects outside the database out of it, or
//! make them safe to repeat. An ambiguous `ConnectionLost` is like a lost
//! reply to an insert (see [At most once](self#at-most-once)): check for
//! the transaction's effect before running it again.
//!
//! Inside the closure:
//!
//! - Query through the [`Transaction`], never through the client, whose
//!   queries wait for the transaction to end (a deadlock, until the
//!   caller's timeout).
//! - Return the errors of its queries (with `?`). A failed statement aborts
//!   a PostgreSQL transaction, whose `COMMIT` then rolls back: the
//!   transaction fails with [`RolledBack`] instead of returning the
//!   closure's value.
//! - Leave `COMMIT` and `ROLLBACK` to the crate.
//! - A [`Transaction`] handle moved into a task that the closure spawns
//!   still queries inside the transaction: a query started before the
//!   closure returns is waited for, before `COMMIT` or `ROLLBACK`; one
//!   started later fails without being sent.
//!
//! A transaction whose future is dropped half way (a caller's timeout, the
//! policy's response timeout) gives its connection up, whatever the
//! policy's [`cancel_safe`](crate::ReconnectPolicyBuilder::cancel_safe):
//! the connection is closed, a statement of the transaction still running
//! is cancelled on the server (see [Queries no one waits
//! for](self#queries-no-one-waits-for)), the server rolls the transaction
//! back as the session ends, freeing its locks, and the client redials.
//!
//! A [`Query::batch`] such as `"BEGIN; UPDATE ...; COMMIT"` still works,
//! as one simple-query message: if the connection breaks before the reply,
//! it committed as a whole or not at all, and it is not sent again.
//!
//! # Prepared statements
//!
//! A query is prepared, then executed. By default its statement is closed
//! once its rows are dropped, so each run prepares it again: one more round
//! trip. [`Query::prepared`] keeps the statement on the connection, by SQL
//! text: the first run on a connection prepares it, later runs execute it
//! at once. The statements live and die with their connection: after a
//! redial the new connection prepares each one again the first time it
//! runs, with nothing to do for the caller.
//!
//! ```
//! use tower_redial::postgres::Query;
//!
//! let by_id = |id: i64| Query::new("SELECT name FROM users WHERE id = $1").prepared().bind(id);
//! assert!(by_id(7).is_prepared());
//! ```
//!
//! A connection keeps every statement it was asked to keep, until it
//! closes: mark the queries whose text is fixed, not SQL built from values.
//!
//! A kept statement can go stale under the connection: `DEALLOCATE ALL` or
//! `DISCARD ALL` (which a pooler such as PgBouncer sends between clients)
//! drops it from the session (`26000 invalid_sql_statement_name`), and a
//! change to its tables' column types makes the server refuse its plan
//! (`0A000 feature_not_supported`, "cached plan must not change result
//! type"). Both come when the statement is bound, before anything ran: the
//! connection then drops the statement from its cache, prepares it again
//! and runs the query once more, and the caller sees only the result.
//! Inside a [transaction](self#transactions) the failed statement has
//! aborted the transaction, so the error goes to the closure (return it,
//! with `?`); the next run prepares the statement again.
//!
//! # Queries no one waits for
//!
//! A statement keeps running on the server after its caller stops waiting
//! (and, in a transaction, keeps its locks): PostgreSQL does not notice a
//! closed socket while it runs a statement. So a query whose future is
//! dropped after it started on the session and before it finished (the
//! policy's
//! [`response_timeout`](crate::ReconnectPolicyBuilder::response_timeout),
//! the caller's own timeout) gives its connection up, whatever the policy's
//! [`cancel_safe`](crate::ReconnectPolicyBuilder::cancel_safe): the
//! connection is closed, and the client redials; and the server is sent a
//! `CancelRequest` for it (through the factory's TLS connector, on a
//! socket of its own), so the statement stops at once. As a
//! `CancelRequest` stops whatever the backend runs when it arrives, it may
//! hit another caller's statement in flight on the same connection
//! instead, which then fails with
//! [`ConnectionLost`](crate::error::ConnectionLost) (its `source` is the
//! server's `57014 query_canceled`); the abandoned statement is then
//! cancelled as the connection is dropped. A query sent after the give-up
//! is never cancelled: it goes to the next connection. See
//! [`PgConnection`]'s [Cancellation](PgConnection#cancellation).
//!
//! ```
//! use std::time::Duration;
//!
//! use tower::ServiceBuilder;
//! use tower_redial::postgres::{MakePostgres, PgClient};
//! use tower_redial::{ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_redial::BoxError> {
//! # let config = tokio_postgres::Config::new();
//! // A query still running after 5 s fails with `ResponseTimeout`, and is
//! // cancelled on the server; the client redials for the next one.
//! let policy = ReconnectPolicy::builder()
//!     .response_timeout(Duration::from_secs(5))
//!     .build()?;
//! let client: PgClient = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(policy))
//!     .service(MakePostgres::new())
//!     .client(config);
//! # drop(client);
//! # Ok(())
//! # }
//! ```
//!
//! # TLS
//!
//! [`MakePostgres::with_tls`] takes any `tokio-postgres` TLS connector
//! (`MakeTlsConnect`): `tokio-postgres-rustls`' `MakeRustlsConnect` (on
//! rustls's ring provider, for example), `postgres-native-tls` or
//! `postgres-openssl`. Set `sslmode=require` in the config so that a server
//! without TLS is refused. Each dial runs a fresh handshake, so a server
//! restarted with a new certificate is met with it on the redial. A
//! certificate the connector rejects fails the dial: the
//! `tokio_postgres::Error` ("error performing TLS handshake") is the
//! [`source()`](std::error::Error::source) of the
//! [`Unavailable`](crate::error::Unavailable) that queries fail with past
//! the wait limit, and of the state's last error. Its own source is the
//! connector's `io::Error`, and the TLS library's error (such as rustls's
//! `InvalidCertificate(UnknownIssuer)`) is that `io::Error`'s
//! [`get_ref()`](std::io::Error::get_ref), since `io::Error` does not list
//! the error it wraps as its `source()`.
//!
//! With the `tls` feature too, `PgTls` is such a connector on rustls that
//! takes this crate's `tls::TlsConfig`, the settings a
//! hyper or tonic client over TLS takes: `MakePostgres::with_tls(PgTls::new(config))`.
//! Its handshake failure is a `tls::HandshakeError`
//! under the `tokio_postgres::Error`, and its `source()` is the
//! `rustls::Error` itself, so walking `source()` from the `Unavailable`
//! reaches it.
//!
//! # Errors
//!
//! A query fails with:
//!
//! - the [`tokio_postgres::Error`] of the query, as a [`BoxError`](crate::BoxError): the
//!   server's answer (a [`DbError`](::tokio_postgres::error::DbError) such as
//!   a unique violation);
//! - [`ConnectionLost`](crate::error::ConnectionLost), with the
//!   `tokio_postgres::Error` as its source, when the session ended after
//!   the query may have been sent: the connection broke, or the server
//!   ended the session (what [`is_postgres_transport_error`] finds, such as
//!   `57P01 admin_shutdown` or a `FATAL` error). The default classifier
//!   calls it dead, so no classifier needs to be set;
//! - [`NotSent`](crate::error::NotSent), with a [`ConnectionClosed`] or a `tokio_postgres::Error` as
//!   its source, only once the client's re-send attempts or budget are
//!   spent;
//! - for a [transaction](crate::Client::transaction) whose `COMMIT` rolled
//!   back (a statement in it had failed), [`RolledBack`];
//! - the client's own errors: [`Unavailable`](crate::error::Unavailable) and
//!   [`Closed`](crate::error::Closed); see [`error`](crate::error).

/// A reconnecting PostgreSQL client: what
/// `ServiceBuilder::new().layer(ReconnectLayer::new(policy)).service(MakePostgres::new()).client(config)`
/// returns. See the [module docs](self).
pub type PgClient = crate::Client<Query, Rows>;

mod cancel;
mod connection;
mod driver;
mod errors;
mod make;
mod query;
mod run;
mod statements;
#[cfg(feature = "tls")]
mod tls;
mod transaction;

pub use connection::{PgConnection, QueryFuture};
pub use errors::{
    classifier, is_postgres_transport_error, postgres_error, ConnectionClosed, RolledBack,
};
pub use make::{Connecting, MakePostgres};
pub use query::{Query, Rows};
#[cfg(feature = "tls")]
pub use tls::{PgTls, PgTlsConnect, PgTlsStream};
pub use transaction::{Transaction, TransactionFuture};
