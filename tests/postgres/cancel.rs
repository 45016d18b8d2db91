//! What is left on the server: a statement whose caller stopped waiting
//! (the policy's response timeout, or the caller's own timeout around a
//! transaction), and the session of a client that is dropped.

use std::time::Duration;

use support::pg_server::PgServer;
use support::policy::quick_redial;
use tokio::time::error::Elapsed;
use tokio_postgres::error::SqlState;
use tower::ServiceExt;
use tower_redial::error::{ConnectionLost, ResponseTimeout};
use tower_redial::postgres::{self, PgClient, Query, Rows};
use tower_redial::BoxError;

use crate::transaction_misuse::{create, observer};
use crate::{pg_client, within, LIMIT};

/// Backends of other sessions still running a `pg_sleep`.
async fn sleeping(observer: &tokio_postgres::Client) -> i64 {
    let row = within(
        "pg_stat_activity",
        observer.query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
            &[],
        ),
    )
    .await
    .unwrap();
    row.get(0)
}

/// Waits up to 8 s (past the connection's 5 s goodbye) for no backend to
/// be running a `pg_sleep`; returns how many still are.
async fn still_sleeping_after_8s(observer: &tokio_postgres::Client) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let n = sleeping(observer).await;
        if n == 0 || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A query past the policy's response timeout fails with
/// `ResponseTimeout`, its connection is dropped and redialed, and its
/// statement is cancelled on the server (a `CancelRequest`): 8 s later none
/// of three timed-out `SELECT pg_sleep(60)` still runs. PostgreSQL does not
/// notice a closed socket while a statement runs, so without the cancel
/// each timeout held a backend for the full 60 s, and a caller retrying a
/// slow query piled them up until `max_connections` refused everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_query_is_cancelled_on_the_server() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    let policy = quick_redial()
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = pg_client(&server, policy);
    for _ in 0..3 {
        let error = within(
            "a slow query",
            client.clone().oneshot(Query::new("SELECT pg_sleep(60)")),
        )
        .await
        .unwrap_err();
        assert!(error.is::<ResponseTimeout>(), "{error:?}");
    }
    assert_eq!(
        still_sleeping_after_8s(&observer).await,
        0,
        "timed-out statements still run on the server; {:?}",
        client.stats()
    );
}

/// Waits until `n` other sessions run a `pg_sleep`.
async fn until_sleeping(observer: &tokio_postgres::Client, n: i64) {
    within("statements start", async {
        while sleeping(observer).await < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A `SELECT pg_sleep(60)` on `client`, on a task of its own, whose caller
/// gives up after `after`.
fn slow(
    client: &PgClient,
    after: Duration,
) -> tokio::task::JoinHandle<Result<Result<Rows, BoxError>, Elapsed>> {
    let client = client.clone();
    tokio::spawn(async move {
        tokio::time::timeout(after, client.oneshot(Query::new("SELECT pg_sleep(60)"))).await
    })
}

/// Queries whose callers stop waiting (their own timeouts, no response
/// timeout in the policy), two of them in flight together on the one
/// connection: each one abandoned is cancelled on the server, the second
/// too (a `CancelRequest` stops one statement, and they run one after the
/// other), and the client goes on, on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_dropped_by_their_callers_timeouts_are_cancelled_on_the_server() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    within(
        "a first query",
        client.clone().oneshot(Query::new("SELECT 1")),
    )
    .await
    .unwrap();
    let first = slow(&client, Duration::from_millis(300));
    until_sleeping(&observer, 1).await;
    let second = slow(&client, Duration::from_millis(600));
    let first = within("the first caller", first).await.unwrap();
    let second = within("the second caller", second).await.unwrap();
    assert!(first.is_err(), "the first caller gave up: {first:?}");
    assert!(second.is_err(), "the second caller gave up: {second:?}");
    assert_eq!(
        still_sleeping_after_8s(&observer).await,
        0,
        "abandoned statements still run on the server"
    );
    let rows = within(
        "a query after",
        client.clone().oneshot(Query::new("SELECT 2")),
    )
    .await
    .unwrap();
    assert_eq!(rows.first().unwrap().get::<_, i32>(0), 2);
}

/// The `CancelRequest` for an abandoned statement stops whatever the
/// backend runs: here another caller's statement, sent before it on the
/// same connection. That caller gets `ConnectionLost` (its statement ran in
/// part, on a connection given up), and the abandoned statement, which
/// would then run, is cancelled in turn once the connection is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_cancelled_in_place_of_an_abandoned_one_is_connection_lost() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    within(
        "a first query",
        client.clone().oneshot(Query::new("SELECT 1")),
    )
    .await
    .unwrap();
    let waiting = slow(&client, LIMIT);
    until_sleeping(&observer, 1).await;
    let abandoned = slow(&client, Duration::from_millis(300));
    assert!(within("the abandoned caller", abandoned)
        .await
        .unwrap()
        .is_err());
    let error = within("the waiting caller", waiting)
        .await
        .unwrap()
        .expect("not the caller's timeout")
        .expect_err("its statement was cancelled");
    assert!(error.is::<ConnectionLost>(), "{error:?}");
    let code = postgres::postgres_error(&*error).and_then(|e| e.code().cloned());
    assert_eq!(code, Some(SqlState::QUERY_CANCELED), "{error:?}");
    assert_eq!(
        still_sleeping_after_8s(&observer).await,
        0,
        "the abandoned statement still runs on the server"
    );
}

/// A transaction abandoned (the caller's timeout) while one of its
/// statements runs: the statement is cancelled (a `CancelRequest`), the
/// session ends, the transaction rolls back and its row locks go, so
/// another session's `UPDATE` of the row succeeds within its 8 s
/// `lock_timeout`. (The server does not read the socket while a statement
/// runs: closing the connection alone left the locks held until the
/// statement finished.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transaction_with_a_running_statement_frees_its_locks() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create(&observer).await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    let abandoned = tokio::time::timeout(
        Duration::from_millis(500),
        client.transaction(|tx| async move {
            tx.query(Query::new("UPDATE t SET v = 100 WHERE id = 1"))
                .await?;
            tx.query(Query::new("SELECT pg_sleep(60)")).await?;
            Ok::<_, BoxError>(())
        }),
    )
    .await;
    assert!(abandoned.is_err(), "the caller's timeout ends it");
    let update = within(
        "another session's update",
        observer.batch_execute("SET lock_timeout = '8s'; UPDATE t SET v = v + 1 WHERE id = 1"),
    )
    .await;
    assert!(
        update.is_ok(),
        "the abandoned transaction still holds its row lock: {update:?}"
    );
}

/// Sessions other than the observer's.
async fn other_sessions(observer: &tokio_postgres::Client) -> i64 {
    let row = within(
        "pg_stat_activity",
        observer.query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        ),
    )
    .await
    .unwrap();
    row.get(0)
}

/// Dropping every clone of the client ends its session on the server: no
/// backend is left behind, after plain queries, a prepared one and a
/// transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_client_ends_its_backend() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create(&observer).await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    within("a query", client.clone().oneshot(Query::new("SELECT 1")))
        .await
        .unwrap();
    within(
        "a prepared query",
        client.clone().oneshot(Query::new("SELECT 2").prepared()),
    )
    .await
    .unwrap();
    within(
        "a transaction",
        client.transaction(|tx| async move {
            tx.query(Query::new("UPDATE t SET v = 1 WHERE id = 1"))
                .await?;
            Ok::<_, BoxError>(())
        }),
    )
    .await
    .unwrap();
    assert_eq!(other_sessions(&observer).await, 1);
    drop(client);
    within("the backend ends", async {
        while other_sessions(&observer).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
