//! Running one query on a session: prepare (or take the kept statement),
//! bind and execute, and what is left to do when its caller stops waiting.

use std::future::poll_fn;
use std::pin::pin;

use ::tokio_postgres::error::SqlState;
use ::tokio_postgres::types::ToSql;
use futures_core::Stream;

use crate::error::NotSent;
use crate::BoxError;

use super::connection::{ends_session, Shared};
use super::query::{Kind, Param, Query, Rows};

/// Where a query runs: on the shared session, or inside a transaction,
/// which a failed statement aborts (so a failed `Bind` cannot be retried
/// there).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Within {
    Session,
    Transaction,
}

/// Hands `query` back as [`NotSent`], with `cause`.
pub(super) fn not_sent(query: Query, cause: BoxError) -> BoxError {
    tracing::debug!(error = %cause, "postgres query not executed; handing it back");
    Box::new(NotSent::with_request(query, cause))
}

/// Runs one query; see [`PgConnection`](super::PgConnection)'s `# Errors`.
///
/// If the caller stops waiting before it finished (its future is dropped:
/// a response timeout, the caller's own timeout), the connection is given
/// up: marked closed, and its statement cancelled on the server (see
/// [`Shared::abandon`]).
pub(super) async fn run_query(
    shared: &Shared,
    query: Query,
    within: Within,
) -> Result<Rows, BoxError> {
    // Nothing is written to a connection known to be closed.
    if shared.is_closed() {
        return Err(not_sent(query, shared.closed_error()));
    }
    let mut in_flight = InFlight {
        shared,
        armed: true,
    };
    let result = run_statement(shared, query, within).await;
    in_flight.armed = false;
    result
}

/// A query whose future is dropped before it finished gives its
/// connection up (see [`Shared::abandon`]).
struct InFlight<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared
                .abandon("postgres query abandoned before it finished");
        }
    }
}

/// A query comes back [`NotSent`] only when its statement provably never
/// ran: the connection was known to be closed before the statement was
/// handed to it, or the session ended while the statement was being
/// prepared (`Parse` and `Describe` run nothing). Once the statement (or a
/// batch) has been handed to the connection, its bytes may have reached the
/// server, and any failure goes back as it is.
async fn run_statement(shared: &Shared, query: Query, within: Within) -> Result<Rows, BoxError> {
    let client = &shared.client;
    match query.kind {
        Kind::Statement => {}
        Kind::Batch => {
            return match client.batch_execute(&query.sql).await {
                Ok(()) => Ok(Rows::default()),
                Err(error) => Err(shared.failed(error)),
            }
        }
        Kind::Transaction(_) => {
            return Err("a transaction cannot run inside a transaction".into());
        }
    }
    let mut retried = false;
    loop {
        let cached = query
            .prepared
            .then(|| shared.statements.get(&query.sql))
            .flatten();
        let from_cache = cached.is_some();
        let statement = match cached {
            Some(statement) => statement,
            None => match client.prepare(&query.sql).await {
                Ok(statement) => {
                    if query.prepared {
                        shared.statements.keep(&query.sql, &statement);
                    }
                    statement
                }
                Err(error) if ends_session(&error) => {
                    let error = shared.failed(error);
                    return Err(not_sent(query, error));
                }
                Err(error) => return Err(error.into()),
            },
        };
        if shared.is_closed() {
            return Err(not_sent(query, shared.closed_error()));
        }
        // From here on the statement may run. Even `57P01 admin_shutdown`
        // does not say that it did not: the server may have committed it,
        // or an earlier statement of a batch, before it was told to stop.
        match execute(client, &statement, &query.params).await {
            Ok(rows) => return Ok(rows),
            // A kept statement the session no longer has (`26000`, after
            // `DEALLOCATE ALL` or `DISCARD ALL`), or whose plan no longer
            // fits its tables (`0A000`, "cached plan must not change
            // result type"). Both come at `Bind`, before anything ran: the
            // server raises them in `exec_bind_message` (looking the
            // statement up, and revalidating its plan in `GetCachedPlan`),
            // then skips to `Sync`, so the `Execute` after it never runs;
            // and tokio-postgres' `query_raw` returns the error of `Bind`
            // (it waits for `BindComplete` before it hands back the row
            // stream), which is `Failed::Bind` here. So the statement is
            // dropped from the cache and prepared again, once.
            Err(Failed::Bind(error)) if from_cache && is_stale(&error) => {
                shared.statements.evict(&query.sql);
                // In a transaction the failed `Bind` aborted it: the error
                // goes back, for the closure to return.
                if within == Within::Transaction || retried {
                    return Err(shared.failed(error));
                }
                tracing::debug!(%error, "postgres kept statement is stale; preparing it again");
                retried = true;
            }
            Err(Failed::Bind(error) | Failed::Rows(error)) => return Err(shared.failed(error)),
        }
    }
}

/// Where an execute failed.
enum Failed {
    /// At `Bind`, before the statement ran.
    Bind(::tokio_postgres::Error),
    /// While its rows came: it ran, at least in part.
    Rows(::tokio_postgres::Error),
}

/// Whether a kept statement's `Bind` failed because the statement is gone
/// from the session (`26000 invalid_sql_statement_name`) or its plan is
/// stale (`0A000 feature_not_supported`).
fn is_stale(error: &::tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        [
            SqlState::INVALID_SQL_STATEMENT_NAME,
            SqlState::FEATURE_NOT_SUPPORTED,
        ]
        .contains(code)
    })
}

/// Binds and executes a prepared statement, and collects its rows.
async fn execute(
    client: &::tokio_postgres::Client,
    statement: &::tokio_postgres::Statement,
    params: &[Param],
) -> Result<Rows, Failed> {
    let params = params.iter().map(|p| &**p as &(dyn ToSql + Sync));
    let stream = client
        .query_raw(statement, params)
        .await
        .map_err(Failed::Bind)?;
    let mut stream = pin!(stream);
    let mut rows = Vec::new();
    while let Some(row) = poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        rows.push(row.map_err(Failed::Rows)?);
    }
    Ok(Rows {
        rows,
        rows_affected: stream.rows_affected().unwrap_or(0),
        value: None,
    })
}
