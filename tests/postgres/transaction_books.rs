//! Transactions from several tasks through one client while the server is
//! restarted (`pg_ctl restart -m immediate`): each committed transaction
//! adds one row to `books` and counts it in `totals`, and the rows are held
//! against what each caller was told.
#![cfg(feature = "postgres")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use support::outcome::Outcome;
use support::pg_server::PgServer;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_redial::postgres::{PgClient, Query, Rows};
use tower_redial::BoxError;

use crate::outcome;
use crate::transaction::{add, books, client, create_books, observer};
use crate::within;

const TASKS: usize = 4;
const RESTARTS: usize = 3;
/// Committed transactions to see before each restart, and after the last.
const STEADY: usize = 30;

struct Record {
    txn: i64,
    outcome: Outcome,
    /// How many times its closure ran.
    runs: usize,
    error: Option<String>,
}

/// One transaction: its row, and the count.
async fn transfer(client: &PgClient, txn: i64, runs: Arc<AtomicUsize>) -> Result<(), BoxError> {
    client
        .transaction(move |tx| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tx.query(add(txn)).await?;
                tx.query(Query::new("UPDATE totals SET n = n + 1").prepared())
                    .await?;
                Ok::<_, BoxError>(())
            }
        })
        .await
}

/// Every transaction that returned `Ok` committed once; none committed
/// twice, whatever its re-runs; none that came back `NotSent` or
/// `Unavailable` committed; an ambiguous one committed at most once; no
/// other error; and `totals` agrees with `books`, so each transaction did
/// both of its writes or neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_through_immediate_restarts_keep_the_books() {
    let server = PgServer::start().await;
    {
        let observer = observer(&server).await;
        create_books(&observer).await;
        observer
            .batch_execute("CREATE TABLE totals (n bigint); INSERT INTO totals VALUES (0)")
            .await
            .unwrap();
    }
    let client = client(&server, false);
    let next = Arc::new(AtomicI64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let (oks_tx, mut oks) = watch::channel(0_usize);
    let oks_tx = Arc::new(oks_tx);
    let mut tasks = JoinSet::new();
    for _ in 0..TASKS {
        let (client, next, stop, oks_tx) =
            (client.clone(), next.clone(), stop.clone(), oks_tx.clone());
        tasks.spawn(async move {
            let mut records = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let txn = next.fetch_add(1, Ordering::SeqCst);
                let runs = Arc::new(AtomicUsize::new(0));
                let result = transfer(&client, txn, runs.clone())
                    .await
                    .map(|()| Rows::default());
                let outcome = outcome(&result);
                if outcome == Outcome::Ok {
                    oks_tx.send_modify(|n| *n += 1);
                }
                records.push(Record {
                    txn,
                    outcome,
                    runs: runs.load(Ordering::SeqCst),
                    error: result.err().map(|e| format!("{e:?}")),
                });
            }
            records
        });
    }

    let mut target = STEADY;
    for _ in 0..RESTARTS {
        within("transactions", oks.wait_for(|n| *n >= target))
            .await
            .unwrap();
        within("the restart", server.restart()).await;
        target = *oks.borrow() + STEADY;
    }
    within("transactions after", oks.wait_for(|n| *n >= target))
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let mut records = Vec::new();
    while let Some(joined) = within("the tasks", tasks.join_next()).await {
        records.extend(joined.unwrap());
    }

    let observer = observer(&server).await;
    let books: HashMap<i64, i64> = within("the books", books(&observer)).await;
    let totals: i64 = observer
        .query_one("SELECT n FROM totals", &[])
        .await
        .unwrap()
        .get(0);
    let count = |outcome: Outcome| records.iter().filter(|r| r.outcome == outcome).count();
    let rerun = records.iter().filter(|r| r.runs > 1).count();
    let ambiguous_committed = records
        .iter()
        .filter(|r| r.outcome == Outcome::Ambiguous && books.contains_key(&r.txn))
        .count();
    println!(
        "transactions: {} issued, {} ok ({} of them run more than once), {} ambiguous \
         ({} committed), {} not run; {} rows, totals {}; {:?}",
        records.len(),
        count(Outcome::Ok),
        rerun,
        count(Outcome::Ambiguous),
        ambiguous_committed,
        count(Outcome::NotSent) + count(Outcome::Unavailable),
        books.values().sum::<i64>(),
        totals,
        client.stats()
    );
    for record in &records {
        let rows = books.get(&record.txn).copied().unwrap_or(0);
        assert!(rows <= 1, "txn {} committed {rows} times", record.txn);
        match record.outcome {
            Outcome::Ok => assert_eq!(rows, 1, "Ok txn {} is missing", record.txn),
            Outcome::NotSent | Outcome::Unavailable => {
                assert_eq!(rows, 0, "txn {} ran: {:?}", record.txn, record.error)
            }
            Outcome::Ambiguous => {}
            other => panic!("txn {} ended {other:?}: {:?}", record.txn, record.error),
        }
    }
    let issued: std::collections::HashSet<i64> = records.iter().map(|r| r.txn).collect();
    assert!(books.keys().all(|txn| issued.contains(txn)));
    assert_eq!(
        totals,
        books.values().sum::<i64>(),
        "a transaction was torn"
    );
    assert!(client.stats().drops >= RESTARTS as u64);
}
