//! `Query::prepared`: the per-connection statement cache against what a
//! PostgreSQL user does to a session's statements and tables.

use support::pg_server::PgServer;
use support::policy::quick_redial;
use tokio_postgres::error::SqlState;
use tower::ServiceExt;
use tower_redial::postgres::{postgres_error, Query};
use tower_redial::BoxError;

use crate::{pg_client, within};

/// `DEALLOCATE ALL` (or `DISCARD ALL`, which a pooler such as PgBouncer
/// sends between clients) drops every prepared statement of the session.
/// The cached statement's next run fails with `26000` at `Bind`, having run
/// nothing: it is evicted, prepared again and run once more, so the query
/// succeeds on the same connection (without the eviction, every later run
/// failed for as long as the connection lived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_query_survives_deallocate_all() {
    let server = PgServer::start().await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    let query = || Query::new("SELECT $1::int + 1").prepared().bind(1_i32);
    let rows = within("first run", client.clone().oneshot(query()))
        .await
        .unwrap();
    assert_eq!(rows.first().unwrap().get::<_, i32>(0), 2);
    drop(rows);
    within(
        "deallocate",
        client.clone().oneshot(Query::batch("DEALLOCATE ALL")),
    )
    .await
    .unwrap();
    let mut failures = Vec::new();
    for _ in 0..3 {
        match within("run after DEALLOCATE ALL", client.clone().oneshot(query())).await {
            Ok(rows) => assert_eq!(rows.first().unwrap().get::<_, i32>(0), 2),
            Err(error) => failures.push(format!("{error:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "prepared query failed after DEALLOCATE ALL: {failures:#?}"
    );
    assert_eq!(client.stats().drops, 0, "on the same connection");
}

/// Inside a transaction a stale kept statement cannot be run again: its
/// failed `Bind` aborted the transaction. The error (`26000`) goes to the
/// closure, which returns it (the transaction rolls back); the statement
/// is gone from the cache, so the next transaction prepares it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_statement_in_a_transaction_fails_once_then_is_prepared_again() {
    let server = PgServer::start().await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    let query = || Query::new("SELECT $1::int + 1").prepared().bind(1_i32);
    within("first run", client.clone().oneshot(query()))
        .await
        .unwrap();
    within(
        "deallocate",
        client.clone().oneshot(Query::batch("DEALLOCATE ALL")),
    )
    .await
    .unwrap();
    let run = || {
        client.transaction(move |tx| async move {
            let rows = tx.query(query()).await?;
            Ok::<_, BoxError>(rows.first().expect("a row").get::<_, i32>(0))
        })
    };
    let error = within("in a transaction", run()).await.unwrap_err();
    let code = postgres_error(&*error).and_then(|e| e.code().cloned());
    assert_eq!(
        code,
        Some(SqlState::INVALID_SQL_STATEMENT_NAME),
        "{error:?}"
    );
    assert_eq!(within("again", run()).await.unwrap(), 2);
    assert_eq!(client.stats().drops, 0, "on the same connection");
}

/// A column type change under a kept statement: PostgreSQL refuses the
/// cached plan with `0A000` ("cached plan must not change result type") at
/// `Bind`, having run nothing. The statement is evicted, prepared again and
/// run once more, so every run after the change succeeds on the same
/// connection (without the eviction, every run failed until a redial).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_query_recovers_after_a_schema_change() {
    let server = PgServer::start().await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    within(
        "create",
        client.clone().oneshot(Query::batch(
            "CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
        )),
    )
    .await
    .unwrap();
    let query = || Query::new("SELECT v FROM t").prepared();
    let rows = within("first run", client.clone().oneshot(query()))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    drop(rows);
    within(
        "alter",
        client
            .clone()
            .oneshot(Query::batch("ALTER TABLE t ALTER COLUMN v TYPE bigint")),
    )
    .await
    .unwrap();
    let mut codes = Vec::new();
    for _ in 0..3 {
        match within("run after ALTER", client.clone().oneshot(query())).await {
            Ok(_) => codes.push("ok".to_string()),
            Err(error) => codes.push(
                tower_redial::postgres::postgres_error(&*error)
                    .and_then(|e| e.code().map(|c| c.code().to_string()))
                    .unwrap_or_else(|| format!("{error}")),
            ),
        }
    }
    // The stale statement is prepared again, and the run goes through.
    assert_eq!(codes, ["ok", "ok", "ok"], "runs after the ALTER: {codes:?}");
    assert_eq!(client.stats().drops, 0, "on the same connection");
}
