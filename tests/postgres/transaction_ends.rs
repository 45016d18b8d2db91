//! More ways a `PgClient::transaction` ends: a session that dies before
//! `COMMIT` on every run, a `COMMIT` the server refuses, and a handle used
//! after its closure.
#![cfg(feature = "postgres")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::pg_server::PgServer;
use tokio_postgres::error::SqlState;
use tower_redial::error::{ConnectionLost, NotSent};
use tower_redial::postgres::{self, Query};
use tower_redial::BoxError;

use crate::transaction::{add, books, client, create_books, observer};
use crate::within;

/// A transaction whose session dies before `COMMIT` on every run (it ends
/// its own backend) runs again until the policy's attempts are spent
/// (three runs), then fails with `NotSent`: nothing of it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cut_before_commit_every_time_runs_three_times_then_fails_not_sent() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create_books(&observer).await;
    let client = client(&server, false);
    let runs = Arc::new(AtomicUsize::new(0));
    let error = within("the transaction", {
        let runs = runs.clone();
        client.transaction(move |tx| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tx.query(add(1)).await?;
                tx.query(Query::new("SELECT pg_terminate_backend(pg_backend_pid())"))
                    .await?;
                Ok::<_, BoxError>(())
            }
        })
    })
    .await
    .unwrap_err();
    assert!(NotSent::is_in(&*error), "{error:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let books = within("the books", books(&observer)).await;
    assert_eq!(books.get(&1), None, "nothing committed");
    let stats = client.stats();
    assert_eq!((stats.drops, stats.retries), (3, 2), "{stats:?}");
}

/// A `COMMIT` the server refuses (a deferred unique constraint) fails with
/// the server's error, not `ConnectionLost`: the transaction rolled back,
/// ran once, and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_server_refuses_fails_with_its_error() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create_books(&observer).await;
    observer
        .batch_execute("CREATE TABLE once (k bigint, UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)")
        .await
        .unwrap();
    let client = client(&server, false);
    let runs = Arc::new(AtomicUsize::new(0));
    let error = within("the transaction", {
        let runs = runs.clone();
        client.transaction(move |tx| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tx.query(add(1)).await?;
                // Deferred: both inserts pass, and COMMIT fails.
                tx.query(Query::new("INSERT INTO once VALUES (1), (1)"))
                    .await?;
                Ok::<_, BoxError>(())
            }
        })
    })
    .await
    .unwrap_err();
    assert!(!ConnectionLost::is_in(&*error), "{error:?}");
    let pg = error
        .downcast_ref::<tokio_postgres::Error>()
        .unwrap_or_else(|| panic!("postgres's error: {error:?}"));
    assert_eq!(pg.code(), Some(&SqlState::UNIQUE_VIOLATION));
    assert!(postgres::postgres_error(&*error).is_some());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let books = within("the books", books(&observer)).await;
    assert_eq!(books.get(&1), None, "rolled back");
    assert_eq!(client.stats().drops, 0);
}

/// The handle is good for one run of the closure: once the closure has
/// finished, its queries fail, and run nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_handle_fails_after_its_closure() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create_books(&observer).await;
    let client = client(&server, false);
    let kept = within("the transaction", async {
        client
            .transaction(|tx| async move { Ok::<_, BoxError>(tx) })
            .await
    })
    .await
    .unwrap();
    let error = within("a query after", kept.query(add(1)))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "the transaction has ended");
    let books = within("the books", books(&observer)).await;
    assert!(books.is_empty(), "{books:?}");
}

/// A handle moved into a task that the closure spawns, whose query starts
/// before the closure returns: the transaction waits for that query before
/// it ends, so it runs inside the transaction (and rolls back with it here),
/// never after `ROLLBACK`, on its own. On this current-thread runtime the
/// closure's `yield_now` lets the task check the handle and send its
/// `Parse` before the closure returns: without the wait, its `Bind` and
/// `Execute` followed the `ROLLBACK`, and its insert committed.
#[tokio::test]
async fn a_query_started_from_a_spawned_task_runs_inside_the_transaction() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create_books(&observer).await;
    within(
        "create",
        observer.batch_execute("CREATE TABLE late (k int)"),
    )
    .await
    .unwrap();
    let client = client(&server, false);
    let task = Arc::new(std::sync::Mutex::new(None));
    let error = within("the transaction", {
        let task = task.clone();
        client.transaction(move |tx| {
            let task = task.clone();
            async move {
                let late = tokio::spawn(async move {
                    tx.query(Query::new("INSERT INTO late VALUES (1)"))
                        .await
                        .map(|rows| rows.rows_affected())
                });
                *task.lock().unwrap() = Some(late);
                tokio::task::yield_now().await;
                Err::<(), BoxError>("give up".into())
            }
        })
    })
    .await
    .unwrap_err();
    assert_eq!(error.to_string(), "give up");
    let late = task.lock().unwrap().take().expect("the task");
    let inserted = within("the task", late).await.expect("no panic");
    assert_eq!(
        inserted.expect("the query ran before the transaction ended"),
        1
    );
    let rows: i64 = within(
        "count",
        observer.query_one("SELECT count(*) FROM late", &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(rows, 0, "the insert ran outside the transaction");
}
