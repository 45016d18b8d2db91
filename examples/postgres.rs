//! PostgreSQL restarted under load: inserts keep flowing through a
//! `tower-redial` client while the server is killed and started again.
//!
//! The example starts its own PostgreSQL server (`initdb` and `pg_ctl` in a
//! temporary directory, on `127.0.0.1` only) and lets four tasks insert rows
//! with unique ids through one [`PgClient`], built with [`ReconnectLayer`]
//! over [`MakePostgres`]. Every fourth insert is a transaction
//! ([`PgClient::transaction`](tower_redial::Client::transaction)) that also
//! counts the row in a `totals` table, with a prepared statement. Meanwhile
//! it restarts the server twice with `pg_ctl restart -m immediate`, which
//! cuts every connection. A timeline shows the client losing its connection
//! and redialing. At the end it checks the tables: every insert that
//! returned `Ok` is there, no id is there twice, each committed transaction
//! did both of its writes, and it tells what became of the inserts the
//! restarts caught.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example postgres --features postgres
//! ```
//!
//! It takes about 6 seconds. It needs the PostgreSQL server binaries in
//! `/usr/lib/postgresql/*/bin` (`apt-get install postgresql`), or in
//! `$PG_BIN_DIR`. PostgreSQL refuses to run as root, so as root the example
//! runs them as the `postgres` user, with `runuser`. The server and its
//! directory are removed at the end.

use support::pg_server;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant, MissedTickBehavior};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::ConnectionLost;
use tower_redial::error::NotSent;
use tower_redial::postgres::{MakePostgres, PgClient, Query};
use tower_redial::state::{Phase, Snapshot};
use tower_redial::{Backoff, BoxError, ReconnectLayer, ReconnectPolicy};

use pg_server::PgServer;

/// Tasks sharing the client (each holds a clone).
const WORKERS: usize = 4;
/// How often each task inserts a row.
const PACE: Duration = Duration::from_millis(10);
/// How long the load runs between restarts.
const STEADY: Duration = Duration::from_millis(1200);
/// How many times the server is restarted.
const RESTARTS: usize = 2;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if let Some(why) = pg_server::unavailable() {
        eprintln!("This example starts a PostgreSQL server of its own, and cannot: {why}.");
        std::process::exit(1);
    }
    println!("tower-redial + PostgreSQL: inserts while the server restarts\n");
    let setup = Instant::now();
    let server = PgServer::start().await;
    println!(
        "  server  a fresh PostgreSQL on 127.0.0.1:{} (initdb and start took {:.1} s)",
        server.port(),
        setup.elapsed().as_secs_f64()
    );

    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(20),
            2.0,
            Duration::from_millis(500),
        ))
        .wait_limit(Duration::from_secs(10))
        .build()?;
    let client: PgClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::new())
        .client(server.conninfo().parse::<tokio_postgres::Config>()?);
    println!(
        "  load    {WORKERS} tasks share one client; each inserts a row with a new id every 10 ms"
    );
    println!(
        "  policy  redial with backoff from 20 ms, capped at 500 ms; requests wait up to 10 s"
    );
    println!("\ntimeline   ▶ what the example does   · the client's state, from client.state()\n");

    let start = Instant::now();
    let timeline = tokio::spawn(watch_state(client.state(), start));
    step(
        start,
        "CREATE TABLE t (id bigint PRIMARY KEY); CREATE TABLE totals (n bigint)",
    );
    client
        .clone()
        .oneshot(Query::batch(
            "CREATE TABLE t (id bigint PRIMARY KEY); \
             CREATE TABLE totals (n bigint); INSERT INTO totals VALUES (0)",
        ))
        .await?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next_id = Arc::new(AtomicI64::new(1));
    // Bumped as each restart starts and ends: odd while restarting.
    let epoch = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        workers.spawn(work(
            client.clone(),
            next_id.clone(),
            epoch.clone(),
            stop.clone(),
            tally.clone(),
        ));
    }

    step(start, "inserting");
    sleep(STEADY).await;
    for _ in 0..RESTARTS {
        step(
            start,
            "pg_ctl restart -m immediate: the server is killed and started again",
        );
        epoch.fetch_add(1, Ordering::SeqCst);
        let began = Instant::now();
        server.restart().await;
        epoch.fetch_add(1, Ordering::SeqCst);
        step(
            start,
            &format!(
                "pg_ctl restart returned after {:.2} s: the server accepts connections",
                began.elapsed().as_secs_f64()
            ),
        );
        sleep(STEADY).await;
    }
    step(start, "the tasks stop inserting");
    stop.store(true, Ordering::SeqCst);
    while let Some(joined) = workers.join_next().await {
        joined?;
    }

    // The books.
    let present: HashSet<i64> = client
        .clone()
        .oneshot(Query::new("SELECT id FROM t"))
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let rows = client
        .clone()
        .oneshot(Query::new("SELECT count(*), count(DISTINCT id) FROM t"))
        .await?;
    let row = rows.first().expect("one row");
    let (count, distinct): (i64, i64) = (row.get(0), row.get(1));
    // Each committed transaction inserted a row with an id divisible by 4
    // and counted it: the two agree.
    let rows = client
        .clone()
        .oneshot(Query::new(
            "SELECT (SELECT n FROM totals), (SELECT count(*) FROM t WHERE id % 4 = 0)",
        ))
        .await?;
    let row = rows.first().expect("one row");
    let (counted, transacted): (i64, i64) = (row.get(0), row.get(1));
    let stats = client.stats();
    drop(client);
    // The state watch closes once the client's worker task has ended.
    let _ = tokio::time::timeout(Duration::from_secs(1), timeline).await;

    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    let lost: Vec<_> = tally.ok.iter().filter(|id| !present.contains(id)).collect();
    let maybe_committed = tally.maybe.iter().filter(|id| present.contains(id)).count();
    let not_run_present = tally
        .not_run
        .iter()
        .filter(|id| present.contains(id))
        .count();

    println!("\nwhat happened to the inserts\n");
    println!(
        "  {:>5} issued, {} ok, {} maybe (the connection broke after they were sent), {} not run",
        tally.issued(),
        tally.ok.len(),
        tally.maybe.len(),
        tally.not_run.len()
    );
    println!(
        "  {:>5} re-sent by the client: they were handed back unsent (NotSent), so never ran twice",
        stats.retries
    );
    println!(
        "  {:>5} issued while a restart was in progress: {} ok, {} of them after waiting in the queue",
        tally.during, tally.during_ok, tally.waited_ok
    );
    println!("\nthe table\n");
    println!(
        "  {:>5} rows, {} distinct ids: {}",
        count,
        distinct,
        if count == distinct {
            "no id is there twice"
        } else {
            "AN ID IS THERE TWICE"
        }
    );
    println!(
        "  {:>5} of the ok inserts are missing{}",
        lost.len(),
        if lost.is_empty() {
            ": every insert that returned Ok is there"
        } else {
            ""
        }
    );
    println!(
        "  {:>5} of the {} maybe inserts committed before their connection broke (at most once: \
         the client does not send them again)",
        maybe_committed,
        tally.maybe.len()
    );
    println!(
        "  {:>5} rows written by transactions, {} counted in totals: {}",
        transacted,
        counted,
        if counted == transacted {
            "each transaction did both writes or neither"
        } else {
            "A TRANSACTION WAS TORN"
        }
    );
    println!(
        "\nclient: {} dials ({} failed), {} connections lost, {} requests failed fast",
        stats.dials, stats.dial_failures, stats.drops, stats.fail_fast
    );

    drop(server);
    println!("\nserver stopped and removed");
    if !lost.is_empty()
        || count != distinct
        || counted != transacted
        || not_run_present > 0
        || !tally.other.is_empty()
    {
        for error in &tally.other {
            eprintln!("unexpected error: {error}");
        }
        return Err("the books do not add up".into());
    }
    Ok(())
}

/// What became of the inserts, by id.
#[derive(Default)]
struct Tally {
    ok: Vec<i64>,
    /// The connection broke after the insert may have been sent.
    maybe: Vec<i64>,
    /// Provably never ran (`NotSent` past the re-send limit, `Unavailable`).
    not_run: Vec<i64>,
    other: Vec<String>,
    /// Issued while a restart was in progress...
    during: usize,
    /// ...and succeeded...
    during_ok: usize,
    /// ...after the restart was over.
    waited_ok: usize,
}

impl Tally {
    fn issued(&self) -> usize {
        self.ok.len() + self.maybe.len() + self.not_run.len() + self.other.len()
    }
}

/// One task: inserts a row with a new id every `PACE`, until told to stop.
async fn work(
    client: PgClient,
    next_id: Arc<AtomicI64>,
    epoch: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let id = next_id.fetch_add(1, Ordering::SeqCst);
        let issued = epoch.load(Ordering::SeqCst);
        let result = if id % 4 == 0 {
            transaction(&client, id).await
        } else {
            let insert = Query::new("INSERT INTO t (id) VALUES ($1)").bind(id);
            client.clone().oneshot(insert).await.map(drop)
        };
        let finished = epoch.load(Ordering::SeqCst);
        let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
        let during = issued % 2 == 1;
        tally.during += usize::from(during);
        match result {
            Ok(_) => {
                tally.ok.push(id);
                tally.during_ok += usize::from(during);
                tally.waited_ok += usize::from(during && finished > issued);
            }
            Err(error)
                if NotSent::is_in(&*error) || error.is::<tower_redial::error::Unavailable>() =>
            {
                tally.not_run.push(id)
            }
            Err(error) if error.is::<ConnectionLost>() => tally.maybe.push(id),
            Err(error) => tally.other.push(format!("insert {id}: {error:?}")),
        }
    }
}

/// Inserts row `id` and counts it, in one transaction. If the connection
/// dies before `COMMIT` is sent, the client runs the whole closure again on
/// the next connection; if it dies while `COMMIT` is in flight, the error
/// is a `ConnectionLost`: it may have committed.
async fn transaction(client: &PgClient, id: i64) -> Result<(), BoxError> {
    client
        .transaction(move |tx| async move {
            tx.query(Query::new("INSERT INTO t (id) VALUES ($1)").bind(id))
                .await?;
            tx.query(Query::new("UPDATE totals SET n = n + 1").prepared())
                .await?;
            Ok::<_, BoxError>(())
        })
        .await
}

/// Prints when the client loses its connection, and when it has one again
/// with what its failed dials ran into.
async fn watch_state(mut state: watch::Receiver<Snapshot>, start: Instant) {
    let mut was_ready = false;
    let mut dial_errors: Vec<String> = Vec::new();
    loop {
        let snapshot = state.borrow_and_update().clone();
        let at = snapshot.since().saturating_duration_since(start);
        match snapshot.phase() {
            Phase::Ready if !was_ready => {
                was_ready = true;
                let dials = match snapshot.attempt() {
                    0 | 1 => "1 dial".to_string(),
                    n => format!("{n} dials"),
                };
                println!("  {}  · connected ({dials})", stamp(at));
                for error in dial_errors.drain(..) {
                    println!("{:12}(a dial failed with: {error})", "");
                }
            }
            Phase::Connecting | Phase::Backoff | Phase::FailFast => {
                let error = snapshot.last_error().map(|e| describe(e));
                if was_ready {
                    was_ready = false;
                    let why = error
                        .as_ref()
                        .map_or_else(String::new, |e| format!(" ({e})"));
                    println!("  {}  · connection lost{why}; redialing", stamp(at));
                } else if let Some(error) = error.filter(|_| snapshot.phase() == Phase::Backoff) {
                    // Backing off: the last error is the failed dial's.
                    if !dial_errors.contains(&error) {
                        dial_errors.push(error);
                    }
                }
            }
            _ => {}
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// An error and its sources, on one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string().replace('\n', "; ");
    let mut source = error.source();
    while let Some(error) = source {
        let more = error.to_string().replace('\n', "; ");
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = error.source();
    }
    text
}

fn step(start: Instant, what: &str) {
    println!("  {}  ▶ {what}", stamp(start.elapsed()));
}

fn stamp(at: Duration) -> String {
    format!("{:>6.2}s", at.as_secs_f64())
}
