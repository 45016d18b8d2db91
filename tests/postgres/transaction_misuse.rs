//! `PgClient::transaction` under closures that misbehave: panic, stall,
//! swallow errors, query through the client, or race plain queries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::pg_server::PgServer;
use support::policy::quick_redial;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tower::ServiceExt;
use tower_redial::error::Panicked;
use tower_redial::postgres::{postgres_error, Query, RolledBack};
use tower_redial::BoxError;

use crate::{pg_client, within};

/// A plain tokio-postgres session beside the client, to look at the books.
pub(crate) async fn observer(server: &PgServer) -> tokio_postgres::Client {
    let (client, connection) = within(
        "observer",
        server
            .conninfo()
            .parse::<tokio_postgres::Config>()
            .unwrap()
            .connect(NoTls),
    )
    .await
    .expect("observer connects");
    tokio::spawn(connection);
    client
}

pub(crate) async fn create(observer: &tokio_postgres::Client) {
    within(
        "create",
        observer.batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO t VALUES (1, 0);
             CREATE TABLE log (k int PRIMARY KEY)",
        ),
    )
    .await
    .unwrap();
}

/// Sessions other than the observer's that sit inside a transaction.
async fn idle_in_transaction(observer: &tokio_postgres::Client) -> i64 {
    let row = within(
        "pg_stat_activity",
        observer.query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
            &[],
        ),
    )
    .await
    .unwrap();
    row.get(0)
}

/// The row the transactions write, read.
const ROW: &str = "SELECT v FROM t WHERE id = 1";

/// The row's value, as the observer's session sees it.
async fn row_value(observer: &tokio_postgres::Client) -> i32 {
    within("reading the row", observer.query_one(ROW, &[]))
        .await
        .unwrap()
        .get(0)
}

/// Waits (up to the limit) until no other session is inside a transaction.
async fn no_session_in_transaction(observer: &tokio_postgres::Client) {
    within("sessions leave their transactions", async {
        while idle_in_transaction(observer).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A transaction whose caller stops waiting (its own timeout) while the
/// closure stalls, holding a row lock: the crate closes the connection,
/// so the server rolls back and frees the lock, even though no one sends
/// the client another request. Another session can then update the row,
/// and nothing of the abandoned transaction committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transaction_frees_its_locks_with_no_further_request() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create(&observer).await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    let abandoned = tokio::time::timeout(
        Duration::from_millis(500),
        client.transaction(|tx| async move {
            tx.query(Query::new("UPDATE t SET v = 100 WHERE id = 1"))
                .await?;
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        }),
    )
    .await;
    assert!(abandoned.is_err(), "the closure never ends");
    no_session_in_transaction(&observer).await;
    within(
        "the row lock is free",
        observer.batch_execute("SET lock_timeout = '5s'; UPDATE t SET v = v + 1 WHERE id = 1"),
    )
    .await
    .expect("the abandoned transaction's lock was released");
    assert_eq!(
        row_value(&observer).await,
        1,
        "the abandoned UPDATE rolled back"
    );
    drop(client);
}

/// The same, with the policy's response timeout ending the transaction:
/// the caller gets the timeout, the transaction rolled back, and the next
/// request runs on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_the_response_timeout_rolls_back() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create(&observer).await;
    let policy = quick_redial()
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = pg_client(&server, policy);
    let runs = Arc::new(AtomicUsize::new(0));
    let error = within("the slow transaction", {
        let runs = runs.clone();
        client.transaction(move |tx| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tx.query(Query::new("UPDATE t SET v = 100 WHERE id = 1"))
                    .await?;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, BoxError>(())
            }
        })
    })
    .await
    .unwrap_err();
    assert!(
        error.is::<tower_redial::error::ResponseTimeout>(),
        "{error:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a timed-out transaction is not run again"
    );
    no_session_in_transaction(&observer).await;
    let rows = within("a query after", client.clone().oneshot(Query::new(ROW)))
        .await
        .unwrap();
    assert_eq!(
        rows.first().unwrap().get::<_, i32>(0),
        0,
        "nothing committed"
    );
}

/// A closure that panics after a write: the caller gets `Panicked`, the
/// closure ran once, nothing committed, no session stays inside the
/// transaction, and the client goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_closure_rolls_back_and_the_client_goes_on() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create(&observer).await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let error = within("the panicking transaction", {
        let runs = runs.clone();
        client.transaction(move |tx| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tx.query(Query::new("INSERT INTO log VALUES (1)")).await?;
                if runs.load(Ordering::SeqCst) > 0 {
                    panic!("a bug in the closure");
                }
                Ok::<_, BoxError>(())
            }
        })
    })
    .await
    .unwrap_err();
    assert!(
        error.is::<Panicked>() || Panicked::is_in(&*error),
        "{error:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    no_session_in_transaction(&observer).await;
    let logged: i64 = observer
        .query_one("SELECT count(*) FROM log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 0, "nothing of the panicked transaction committed");
    within(
        "a query after",
        client
            .clone()
            .oneshot(Query::new("INSERT INTO log VALUES (2)")),
    )
    .await
    .unwrap();
}

/// A closure that swallows a failed statement (an "insert, ignore a
/// duplicate" written as `tx.query(..).await.ok()`), as a tokio-postgres
/// user might. PostgreSQL aborts the transaction, and its `COMMIT` answers
/// with the tag `ROLLBACK`.
///
/// `transaction` fails with `RolledBack` (carrying the server's 25P02),
/// not `Ok`: a success means a commit. Nothing committed, and the next
/// transaction on the same connection commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_rolled_back_does_not_report_success() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create(&observer).await;
    observer
        .batch_execute("INSERT INTO log VALUES (7)")
        .await
        .unwrap();
    let client = pg_client(&server, quick_redial().build().unwrap());
    let result = within(
        "the transaction",
        client.transaction(|tx| async move {
            tx.query(Query::new("UPDATE t SET v = 42 WHERE id = 1"))
                .await?;
            // A duplicate, ignored: the transaction is now aborted.
            let _ = tx.query(Query::new("INSERT INTO log VALUES (7)")).await;
            Ok::<_, BoxError>("done")
        }),
    )
    .await;
    assert_eq!(
        row_value(&observer).await,
        0,
        "PostgreSQL rolled the transaction back"
    );
    let error = result.expect_err("transaction reported success, but nothing committed");
    assert!(error.is::<RolledBack>(), "{error:?}");
    let code = postgres_error(&*error).and_then(|e| e.code().cloned());
    assert_eq!(code, Some(SqlState::IN_FAILED_SQL_TRANSACTION), "{error:?}");
    // The connection goes on, outside any transaction.
    assert_eq!(client.stats().drops, 0);
    no_session_in_transaction(&observer).await;
    within(
        "a transaction after",
        client.transaction(|tx| async move {
            tx.query(Query::new("UPDATE t SET v = 43 WHERE id = 1"))
                .await?;
            Ok::<_, BoxError>(())
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        row_value(&observer).await,
        43,
        "the next transaction committed"
    );
}

/// A query through the client from inside a closure waits for the
/// transaction to end (the documented deadlock); the caller's timeout
/// ends both, the transaction rolls back, and the client serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_query_inside_the_closure_deadlocks_until_the_timeout_then_recovers() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create(&observer).await;
    let client = pg_client(&server, quick_redial().build().unwrap());
    let inner = client.clone();
    let stuck = tokio::time::timeout(
        Duration::from_millis(500),
        client.transaction(move |tx| {
            let inner = inner.clone();
            async move {
                tx.query(Query::new("UPDATE t SET v = 5 WHERE id = 1"))
                    .await?;
                inner.oneshot(Query::new("SELECT 1")).await?;
                Ok::<_, BoxError>(())
            }
        }),
    )
    .await;
    assert!(
        stuck.is_err(),
        "the nested query waits for its own transaction"
    );
    no_session_in_transaction(&observer).await;
    let rows = within("a query after", client.clone().oneshot(Query::new(ROW)))
        .await
        .unwrap();
    assert_eq!(
        rows.first().unwrap().get::<_, i32>(0),
        0,
        "nothing committed"
    );
}

/// Transactions doing read-then-write race plain queries on the same
/// client: each transaction has the session to itself, so no update is
/// lost and every plain query runs outside every transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_plain_queries_do_not_interleave() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create(&observer).await;
    observer
        .batch_execute("ALTER TABLE t ADD COLUMN w int NOT NULL DEFAULT 0")
        .await
        .unwrap();
    let client = pg_client(&server, quick_redial().build().unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let client = client.clone();
        if i % 2 == 0 {
            tasks.spawn(async move {
                client
                    .transaction(|tx| async move {
                        let rows = tx.query(Query::new(ROW)).await?;
                        let v: i32 = rows.first().expect("row").get(0);
                        tokio::task::yield_now().await;
                        tx.query(Query::new("UPDATE t SET v = $1 WHERE id = 1").bind(v + 1))
                            .await?;
                        Ok::<_, BoxError>(())
                    })
                    .await
            });
        } else {
            tasks.spawn(async move {
                client
                    .oneshot(Query::new(
                        "UPDATE t SET w = w + 1 WHERE id = 1 AND pg_current_xact_id_if_assigned() IS NULL",
                    ))
                    .await
                    .map(|rows| {
                        assert_eq!(
                            rows.rows_affected(),
                            1,
                            "a plain query ran inside a transaction"
                        )
                    })
            });
        }
    }
    within("all requests", async {
        while let Some(done) = tasks.join_next().await {
            done.expect("no panic").expect("request succeeds");
        }
    })
    .await;
    let row = observer
        .query_one("SELECT v, w FROM t WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (10, 10));
}
