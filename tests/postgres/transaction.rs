//! `PgClient::transaction` against a real server whose backend is killed
//! at each point of a transaction: before `COMMIT` was sent (the whole
//! transaction runs again, once), and while `COMMIT` is in flight (held up
//! by a deferred trigger waiting on an advisory lock the test holds: the
//! outcome is ambiguous). Each committed transaction adds one row to a
//! table, and the rows are held against what each caller was told.
#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::pg_server::PgServer;
use tokio::sync::{mpsc, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::{ConnectionLost, NotSent};
use tower_redial::postgres::{self, MakePostgres, PgClient, Query, Transaction};
use tower_redial::{Backoff, BoxError, ReconnectLayer, ReconnectPolicy};

use crate::{within, Config as _};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(crate) fn client(server: &PgServer, cancel_safe: bool) -> PgClient {
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(10), 2.0, ms(200)))
        .wait_limit(Duration::from_secs(20))
        .cancel_safe(cancel_safe)
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::new())
        .client(server.config())
}

/// A plain tokio-postgres session, to look at (and kill) from the side.
pub(crate) async fn observer(server: &PgServer) -> tokio_postgres::Client {
    let (client, connection) = server.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The books: one row per committed transaction. `COMMIT` runs a deferred
/// trigger that takes advisory lock 42 shared: free unless the test holds
/// it, when it holds `COMMIT` up.
pub(crate) async fn create_books(observer: &tokio_postgres::Client) {
    observer
        .batch_execute(
            "CREATE TABLE books (txn bigint NOT NULL);
             CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_advisory_xact_lock_shared(42); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER gate AFTER INSERT ON books
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gate();",
        )
        .await
        .unwrap();
}

/// How many rows each transaction left.
pub(crate) async fn books(observer: &tokio_postgres::Client) -> HashMap<i64, i64> {
    observer
        .query("SELECT txn, count(*) FROM books GROUP BY txn", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

pub(crate) fn add(txn: i64) -> Query {
    Query::new("INSERT INTO books (txn) VALUES ($1)").bind(txn)
}

/// The backend's pid, through the transaction.
async fn pid(tx: &Transaction) -> Result<i32, BoxError> {
    let rows = tx.query(Query::new("SELECT pg_backend_pid()")).await?;
    Ok(rows.first().expect("a row").get(0))
}

/// Ends backend `pid` with `pg_terminate_backend`, and waits until it is
/// gone.
async fn kill(observer: &tokio_postgres::Client, pid: i32) {
    let row = observer
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "backend {pid} was there to kill");
    loop {
        let row = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            return;
        }
        tokio::time::sleep(ms(10)).await;
    }
}

/// The closure's own error.
#[derive(Debug)]
pub(crate) struct Overdrawn;

impl fmt::Display for Overdrawn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("overdrawn")
    }
}

impl std::error::Error for Overdrawn {}

/// A backend killed before `COMMIT` was sent: the server rolled the
/// transaction back, the connection hands the whole of it back as
/// `NotSent`, and the client runs it again on a new session, where it
/// commits; its row is there once. A transaction whose closure fails is
/// rolled back, its error comes back as it is, and it runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_commit_runs_again_whole_and_commits_once() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create_books(&observer).await;
    let client = client(&server, false);

    // A plain transaction.
    let value = within("a transaction", async {
        client
            .transaction(|tx| async move {
                tx.query(add(1)).await?;
                Ok::<_, BoxError>("one")
            })
            .await
    })
    .await
    .unwrap();
    assert_eq!(value, "one");

    // Killed half way, on its first run only.
    let runs = Arc::new(AtomicUsize::new(0));
    let (pids, mut killable) = mpsc::unbounded_channel::<i32>();
    let go = Arc::new(Semaphore::new(0));
    let txn = tokio::spawn({
        let (client, runs, go) = (client.clone(), runs.clone(), go.clone());
        async move {
            client
                .transaction(move |tx| {
                    let (runs, pids, go) = (runs.clone(), pids.clone(), go.clone());
                    async move {
                        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                        tx.query(add(2)).await?;
                        let pid = pid(&tx).await?;
                        if run == 1 {
                            pids.send(pid).unwrap();
                            go.acquire().await.unwrap().forget();
                        }
                        // On the killed session: fails.
                        tx.query(Query::new("SELECT 1")).await?;
                        Ok::<_, BoxError>(pid)
                    }
                })
                .await
        }
    });
    let killed = within("the first run's pid", killable.recv())
        .await
        .unwrap();
    within("killing the backend", kill(&observer, killed)).await;
    go.add_permits(1);
    let committed_on = within("the re-run", txn).await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "run again, once");
    assert_ne!(committed_on, killed, "re-run on a new session");

    // The closure's own error: rolled back, returned as is, run once.
    let runs_3 = Arc::new(AtomicUsize::new(0));
    let error = within("a failing transaction", {
        let runs_3 = runs_3.clone();
        client.transaction(move |tx| {
            let runs_3 = runs_3.clone();
            async move {
                runs_3.fetch_add(1, Ordering::SeqCst);
                tx.query(add(3)).await?;
                Err::<(), BoxError>(Box::new(Overdrawn))
            }
        })
    })
    .await
    .unwrap_err();
    assert!(error.is::<Overdrawn>(), "{error:?}");
    assert_eq!(runs_3.load(Ordering::SeqCst), 1);

    // The books: each Ok exactly once, the re-run never twice, the
    // rolled-back one absent.
    let books = within("the books", books(&observer)).await;
    println!("books: {books:?}; {:?}", client.stats());
    assert_eq!(books.get(&1), Some(&1));
    assert_eq!(books.get(&2), Some(&1), "run twice, committed once");
    assert_eq!(books.get(&3), None);
    let stats = client.stats();
    assert_eq!(stats.drops, 1, "{stats:?}");
    assert_eq!(stats.retries, 1, "{stats:?}");
}

/// A backend killed while `COMMIT` is in flight (held up by a deferred
/// trigger waiting on an advisory lock the test holds): the transaction
/// fails with `ConnectionLost`, PostgreSQL's `57P01` inside, and is not
/// run again, since it may have committed. Its row is there at most once,
/// and the client goes on, on a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_commit_is_in_flight_is_ambiguous_and_not_rerun() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create_books(&observer).await;
    let client = client(&server, false);

    observer
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let txn = tokio::spawn({
        let (client, runs) = (client.clone(), runs.clone());
        async move {
            client
                .transaction(move |tx| {
                    let runs = runs.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tx.query(add(1)).await?;
                        Ok::<_, BoxError>(())
                    }
                })
                .await
        }
    });
    // `COMMIT` waits for the lock.
    let committing: i32 = within("COMMIT waiting on the lock", async {
        loop {
            let rows = observer
                .query(
                    "SELECT pid FROM pg_stat_activity \
                     WHERE application_name = 'tower-redial-test' AND query LIKE '%COMMIT' \
                       AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                    &[],
                )
                .await
                .unwrap();
            if let Some(row) = rows.first() {
                return row.get(0);
            }
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    within("killing the backend", kill(&observer, committing)).await;
    let error = within("the transaction", txn).await.unwrap().unwrap_err();
    assert!(error.is::<ConnectionLost>(), "{error:?}");
    assert!(!NotSent::is_in(&*error));
    let pg = postgres::postgres_error(&*error).expect("postgres's error inside");
    assert_eq!(pg.code(), Some(&SqlState::ADMIN_SHUTDOWN));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "not run again");
    observer
        .batch_execute("SELECT pg_advisory_unlock(42)")
        .await
        .unwrap();

    // The client goes on.
    within("a transaction after", async {
        client
            .transaction(|tx| async move { tx.query(add(2)).await.map(drop) })
            .await
    })
    .await
    .unwrap();
    let books = within("the books", books(&observer)).await;
    println!(
        "books: {books:?} (ambiguous txn 1 committed: {}); {:?}",
        books.contains_key(&1),
        client.stats()
    );
    assert!(books.get(&1).copied().unwrap_or(0) <= 1, "at most once");
    assert_eq!(books.get(&2), Some(&1));
    assert_eq!(client.stats().retries, 0);
}

/// A transaction has its connection to itself: a plain insert from another
/// clone of the client, issued while the transaction is open, runs after
/// it, not inside it, so the transaction's rollback does not take it along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_callers_queries_wait_outside_the_transaction() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create_books(&observer).await;
    let client = client(&server, false);
    // Connected, so that the insert below meets the open transaction.
    client.connected().await.unwrap();

    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let go = Arc::new(Semaphore::new(0));
    let txn = tokio::spawn({
        let (client, go) = (client.clone(), go.clone());
        client.transaction(move |tx| {
            let (started_tx, go) = (started_tx.clone(), go.clone());
            async move {
                tx.query(add(1)).await?;
                started_tx.send(()).unwrap();
                go.acquire().await.unwrap().forget();
                Err::<(), BoxError>(Box::new(Overdrawn))
            }
        })
    });
    within("the transaction to start", started.recv())
        .await
        .unwrap();
    let plain = tokio::spawn(client.clone().oneshot(add(2)));
    // Time for the insert to reach the connection; it must wait there.
    tokio::time::sleep(ms(200)).await;
    assert!(!plain.is_finished(), "the insert waits for the transaction");
    go.add_permits(1);
    let error = within("the transaction", txn).await.unwrap().unwrap_err();
    assert!(error.is::<Overdrawn>(), "{error:?}");
    within("the plain insert", plain).await.unwrap().unwrap();
    let books = within("the books", books(&observer)).await;
    assert_eq!(books.get(&1), None, "rolled back");
    assert_eq!(books.get(&2), Some(&1), "not rolled back with it");
}

/// A transaction whose caller stops waiting half way closes its
/// connection, even on a cancel-safe policy: the server rolls it back as
/// the session ends, and the next query runs on a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transaction_closes_its_connection() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    create_books(&observer).await;
    let client = client(&server, true);
    let session = Query::new("SELECT pg_backend_pid()");
    let before: i32 = within("a query", client.clone().oneshot(session.clone()))
        .await
        .unwrap()
        .first()
        .unwrap()
        .get(0);

    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let abandoned = tokio::spawn({
        let client = client.clone();
        client.transaction(move |tx| {
            let started_tx = started_tx.clone();
            async move {
                tx.query(add(1)).await?;
                started_tx.send(()).unwrap();
                std::future::pending::<Result<(), BoxError>>().await
            }
        })
    });
    within("the transaction to start", started.recv())
        .await
        .unwrap();
    abandoned.abort();
    let _ = abandoned.await;

    let after: i32 = within("a query after", client.clone().oneshot(session))
        .await
        .unwrap()
        .first()
        .unwrap()
        .get(0);
    assert_ne!(after, before, "a new session");
    let books = within("the books", books(&observer)).await;
    assert_eq!(books.get(&1), None, "rolled back");
}
