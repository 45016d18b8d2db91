//! `Query::prepared`: the per-connection statement cache against what a
//! PostgreSQL user does to a session's statements and tables.

use support::pg_server::PgServer;
use support::policy::quick_redial;
use tower::ServiceExt;
use tower_redial::postgres::Query;

use crate::{pg_client, within};

/// `DEALLOCATE ALL` (or `DISCARD ALL`, which a pooler such as PgBouncer
/// sends between clients) drops every prepared statement of the session.
///
/// Observed: the cache still holds the statement, so every later run of
/// the prepared query on this connection fails with `26000` ("prepared
/// statement \"s0\" does not exist"), for as long as the connection lives;
/// nothing evicts it. Expected: the failed statement is dropped from the
/// cache and prepared again (a `26000` at `Bind` ran nothing), or at least
/// the next run prepares it afresh.
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
}

/// A column type change under a kept statement: PostgreSQL refuses the
/// cached plan with `0A000` ("cached plan must not change result type").
/// The docs warn that it "may fail"; but it fails on every run, forever,
/// on this connection, since the cache keeps the stale statement.
///
/// Observed: every run fails with 0A000 until the connection is redialed.
/// Expected: the first failure evicts the statement (it ran nothing:
/// 0A000 comes at `Bind`), so the next run, or a transparent re-prepare,
/// succeeds.
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
    // One failure is what the docs warn of; after it the cache must heal.
    assert_eq!(codes[1..], ["ok", "ok"], "runs after the ALTER: {codes:?}");
}
