//! PostgreSQL through `tower_redial::postgres`, against a real server
//! (`initdb` + `pg_ctl` in a temporary directory, see
//! `support/pg_server.rs`) that is restarted mid-run.
#![cfg(feature = "postgres")]

use support::outcome::Outcome;
use support::pg_server;

use crate::{outcome, Config as _};

use support::redial_watch;

use redial_watch::{assert_one_drop_and_one_redial, ready_after_a_drop, record_phases};
use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pg_server::PgServer;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::{ConnectionLost, Unavailable};
use tower_redial::postgres::{self, MakePostgres, PgClient, Query, Rows};
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, ReconnectLayer, ReconnectPolicy, ReconnectPolicyBuilder};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Quick redials, and a wait limit far longer than any restart, so that
/// nothing fails fast.
fn policy() -> ReconnectPolicyBuilder {
    ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(10), 2.0, ms(200)))
        .connect_timeout(Duration::from_secs(5))
        .wait_limit(Duration::from_secs(30))
}

/// The default client: no query that may have reached the server is re-sent.
fn client(server: &PgServer) -> PgClient {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy().build().unwrap()))
        .service(MakePostgres::new())
        .client(server.config())
}

/// A client that also re-sends queries marked idempotent (the reads).
fn client_resending_reads(server: &PgServer) -> PgClient {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy().build().unwrap()).resend_if(Query::is_idempotent))
        .service(MakePostgres::new())
        .client(server.config())
}

async fn run(client: &PgClient, query: Query) -> Result<Rows, BoxError> {
    client.clone().oneshot(query).await
}

/// Runs a query that must succeed and returns the first column of the first
/// row.
async fn one<T>(client: &PgClient, query: Query) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let sql = query.sql().to_string();
    let rows = run(client, query)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.first().expect("a row").get(0)
}

async fn create_table(client: &PgClient) {
    run(
        client,
        Query::batch("CREATE TABLE t (id bigint PRIMARY KEY)"),
    )
    .await
    .unwrap();
}

fn insert(id: i64) -> Query {
    Query::new("INSERT INTO t (id) VALUES ($1)").bind(id)
}

/// Fails the test, rather than hanging it, if `future` takes far longer than
/// it should on any machine. (The server is still stopped and removed: its
/// guard drops as the panic unwinds.)
async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

// ---------------------------------------------------------------------------
// What happened to each insert
// ---------------------------------------------------------------------------

struct Record {
    id: i64,
    outcome: Outcome,
    /// The error, if it failed.
    error: Option<String>,
    /// The restart epoch when the insert was issued and when it finished:
    /// odd while a restart is in progress.
    issued: u64,
    finished: u64,
}

impl Record {
    /// The insert provably never ran: it came back `NotSent` with no
    /// re-send left, `Unavailable`, or `Closed`.
    fn not_run(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::NotSent | Outcome::Unavailable | Outcome::Closed
        )
    }
}

/// Issue 3: eight tasks insert rows with unique ids while the server is
/// restarted three times with `pg_ctl restart -m immediate`. Every insert
/// that returned `Ok` is present, no id is present twice, no insert that
/// provably never ran is present, none failed for any other reason (a unique
/// violation would mean one ran twice), and inserts issued during a restart
/// waited for the server and succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inserts_during_immediate_restarts_are_never_lost_or_doubled() {
    const WORKERS: usize = 8;
    const RESTARTS: usize = 3;
    /// Successful inserts to wait for between restarts.
    const STEADY: usize = 40;

    let server = PgServer::start().await;
    let client = client(&server);
    create_table(&client).await;

    let next_id = Arc::new(AtomicI64::new(1));
    // Bumped as each restart starts and as it ends: odd while restarting.
    let epoch = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_tx, mut oks) = tokio::sync::watch::channel(0_usize);
    let ok_tx = Arc::new(ok_tx);

    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        let (client, next_id, epoch, stop, ok_tx) = (
            client.clone(),
            next_id.clone(),
            epoch.clone(),
            stop.clone(),
            ok_tx.clone(),
        );
        workers.spawn(async move {
            let mut records = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let id = next_id.fetch_add(1, Ordering::SeqCst);
                let issued = epoch.load(Ordering::SeqCst);
                let result = run(&client, insert(id)).await;
                let finished = epoch.load(Ordering::SeqCst);
                let outcome = outcome(&result);
                if outcome == Outcome::Ok {
                    ok_tx.send_modify(|n| *n += 1);
                }
                records.push(Record {
                    id,
                    outcome,
                    error: result.err().map(|e| format!("{e:?}")),
                    issued,
                    finished,
                });
            }
            records
        });
    }

    let limit = Duration::from_secs(30);
    let mut target = STEADY;
    within(limit, "the first inserts", oks.wait_for(|n| *n >= target))
        .await
        .unwrap();
    for _ in 0..RESTARTS {
        epoch.fetch_add(1, Ordering::SeqCst);
        within(limit, "pg_ctl restart", server.restart()).await;
        epoch.fetch_add(1, Ordering::SeqCst);
        // Progress on the new server before the next restart.
        target = *oks.borrow() + STEADY;
        within(
            limit,
            "inserts after a restart",
            oks.wait_for(|n| *n >= target),
        )
        .await
        .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let mut records = Vec::new();
    while let Some(joined) = workers.join_next().await {
        records.extend(joined.unwrap());
    }

    // The books.
    let reader = self::client(&server);
    let present: HashSet<i64> = run(&reader, Query::new("SELECT id FROM t"))
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let (count, distinct): (i64, i64) = {
        let rows = run(
            &reader,
            Query::new("SELECT count(*), count(DISTINCT id) FROM t"),
        )
        .await
        .unwrap();
        let row = rows.first().unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(count, distinct, "an id is present twice");

    let ok: Vec<_> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .collect();
    let ambiguous: Vec<_> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Ambiguous)
        .collect();
    let not_run: Vec<_> = records.iter().filter(|r| r.not_run()).collect();
    // Anything else, such as a unique violation: a bug.
    let other: Vec<_> = records
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Ok | Outcome::Ambiguous) && !r.not_run())
        .map(|r| (r.id, r.outcome, &r.error))
        .collect();
    assert!(other.is_empty(), "inserts failed unexpectedly: {other:?}");
    for record in &ok {
        assert!(present.contains(&record.id), "Ok insert {} lost", record.id);
    }
    for record in &not_run {
        assert!(
            !present.contains(&record.id),
            "insert {} ran although it failed with {:?}",
            record.id,
            record.error,
        );
    }
    let issued: HashSet<i64> = records.iter().map(|r| r.id).collect();
    assert!(present.is_subset(&issued), "a row nobody inserted");
    assert_eq!(count as usize, present.len());
    let ambiguous_present = ambiguous.iter().filter(|r| present.contains(&r.id)).count();

    // Inserts issued while a restart was in progress.
    let during: Vec<_> = records.iter().filter(|r| r.issued % 2 == 1).collect();
    let during_ok = during.iter().filter(|r| r.outcome == Outcome::Ok).count();
    let waited_ok = during
        .iter()
        .filter(|r| r.outcome == Outcome::Ok && r.finished > r.issued)
        .count();
    assert!(
        during_ok >= 1,
        "no insert issued during a restart succeeded"
    );

    let stats = client.stats();
    println!(
        "inserts: {} issued, {} ok, {} ambiguous ({} of them committed), {} not run; \
         {} rows present, {} distinct",
        records.len(),
        ok.len(),
        ambiguous.len(),
        ambiguous_present,
        not_run.len(),
        count,
        distinct
    );
    println!(
        "during the {RESTARTS} restarts: {} issued, {} ok ({} finished after the restart \
         they were issued in), {} ambiguous",
        during.len(),
        during_ok,
        waited_ok,
        during
            .iter()
            .filter(|r| r.outcome == Outcome::Ambiguous)
            .count()
    );
    println!("client stats: {stats:?}");
    assert!(stats.drops >= RESTARTS as u64, "{stats:?}");
    assert_eq!(stats.fail_fast, 0, "{stats:?}");
}

/// Queries succeed before and after a `pg_ctl restart -m immediate`: the
/// client finds its connection closed, redials, and runs later queries on a
/// new server session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_succeed_across_a_restart() {
    let server = PgServer::start().await;
    let client = client_resending_reads(&server);
    let limit = Duration::from_secs(30);
    within(limit, "queries before the restart", async {
        create_table(&client).await;
        for id in 1..=3 {
            let rows = run(&client, insert(id)).await.unwrap();
            assert_eq!(rows.rows_affected(), 1);
        }
    })
    .await;
    let session = Query::new("SELECT pg_backend_pid()").idempotent();
    let pid_before: i32 = one(&client, session.clone()).await;

    within(limit, "pg_ctl restart", server.restart()).await;

    within(limit, "queries after the restart", async {
        // A read, marked idempotent: should it race the client noticing
        // that the old connection is gone, it is re-sent.
        let count: i64 = one(&client, Query::new("SELECT count(*) FROM t").idempotent()).await;
        assert_eq!(count, 3, "committed rows survive the restart");
        // Now on a new connection: the insert is sent once.
        let rows = run(&client, insert(4)).await.unwrap();
        assert_eq!(rows.rows_affected(), 1);
        let pid_after: i32 = one(&client, session).await;
        assert_ne!(pid_before, pid_after, "a new server session");
    })
    .await;

    let stats = client.stats();
    assert!(stats.drops >= 1, "{stats:?}");
    assert!(stats.dials >= 2, "{stats:?}");
    assert_eq!(stats.fail_fast, 0, "{stats:?}");
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
}

/// How long the client may take to be ready again after a restart: a hang
/// guard, not a speed assumption.
const NOTICE_GUARD: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A `pg_ctl restart -m immediate` under an idle connection, with no query
/// sent: the client notices, counts the drop, redials and is ready again,
/// with a session on the new server; the next query then goes out once, in
/// that session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_death_is_noticed_without_traffic() {
    let server = PgServer::start().await;
    let client = client(&server);
    let phases = record_phases(client.state());
    let limit = Duration::from_secs(30);
    let session = Query::new("SELECT pg_backend_pid()");

    let pid_before: i32 = within(limit, "the first query", one(&client, session.clone())).await;
    let mut state = client.state();
    within(
        NOTICE_GUARD,
        "ready after a query",
        state.wait_for(|s| s.phase() == Phase::Ready),
    )
    .await
    .unwrap();
    let before = client.stats();
    assert_eq!((before.dials, before.drops), (1, 0), "{before:?}");

    // Every session is cut and the server starts again; no query.
    let restarted = Instant::now();
    let (back, ready_at) = tokio::join!(
        async {
            within(limit, "pg_ctl restart", server.restart()).await;
            restarted.elapsed()
        },
        ready_after_a_drop(&client, &phases, NOTICE_GUARD),
    );
    let took = ready_at - restarted;
    let stats = client.stats();
    println!(
        "ready {took:?} after the restart began (pg_ctl restart returned after {back:?}); \
         {stats:?}; states seen: {:#?}",
        lock(&phases)
    );
    assert_one_drop_and_one_redial(&stats);

    // The client's new session is on the new server, made while nothing was
    // sent: seen from another session.
    let (observer, connection) = within(limit, "an observer session", async {
        server.config().connect(NoTls).await.unwrap()
    })
    .await;
    tokio::spawn(connection);
    let sessions: Vec<i32> = within(
        limit,
        "the observer's query",
        observer.query(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = 'tower-redial-test' AND pid <> pg_backend_pid()",
            &[],
        ),
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    assert_eq!(sessions.len(), 1, "one session of ours: {sessions:?}");

    let pid_after: i32 = within(limit, "the query after the restart", one(&client, session)).await;
    assert_ne!(pid_after, pid_before, "a new session");
    assert_eq!(pid_after, sessions[0], "in the session made while idle");
    let after = client.stats();
    assert_eq!(after.retries, 0, "not a re-send: {after:?}");
    assert_eq!(after, stats, "sent once, in the session made while idle");
    println!("states seen by the end: {:#?}", lock(&phases));
}

/// Queries issued while the server is down wait in the queue through
/// refused dials, and run once it is back: an insert queued behind a refused
/// dial runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_wait_while_the_server_is_down() {
    let server = PgServer::start().await;
    let client = client_resending_reads(&server);
    let limit = Duration::from_secs(30);
    create_table(&client).await;
    run(&client, insert(1)).await.unwrap();

    within(limit, "pg_ctl stop", server.stop()).await;
    let mut state = client.state();
    let read = tokio::spawn({
        let client = client.clone();
        async move { run(&client, Query::new("SELECT count(*) FROM t").idempotent()).await }
    });
    // The read makes the client find the connection gone and redial: the
    // dial is refused.
    within(
        limit,
        "a refused dial",
        state.wait_for(|s| s.phase() == Phase::Backoff),
    )
    .await
    .unwrap();
    let refused = state.borrow().attempt();
    let last_error = state.borrow().last_error().map(|e| e.to_string());
    assert!(last_error.is_some(), "the dial error is kept");

    // No connection now: this insert waits in the queue, unsent.
    let insert = tokio::spawn({
        let client = client.clone();
        async move { run(&client, insert(2)).await }
    });
    within(
        limit,
        "another refused dial",
        state.wait_for(|s| s.phase() == Phase::Backoff && s.attempt() > refused),
    )
    .await
    .unwrap();
    assert!(!read.is_finished(), "the read waits");
    assert!(!insert.is_finished(), "the insert waits");

    within(limit, "pg_ctl start", server.start_again()).await;
    let read = within(limit, "the queued read", read).await.unwrap();
    assert!(read.is_ok(), "{read:?}");
    let inserted = within(limit, "the queued insert", insert).await.unwrap();
    assert_eq!(inserted.unwrap().rows_affected(), 1);

    let copies: i64 = one(&client, Query::new("SELECT count(*) FROM t WHERE id = 2")).await;
    assert_eq!(copies, 1, "the queued insert ran once");
    let stats = client.stats();
    assert_eq!(stats.fail_fast, 0, "{stats:?}");
    assert!(stats.dial_failures >= 2, "{stats:?}");
}

/// The server's own answers (a unique violation) keep the connection; a
/// session killed with `pg_terminate_backend` (`FATAL 57P01`) is redialed,
/// and a read caught by it is re-sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_keep_the_connection_and_fatal_ones_redial() {
    let server = PgServer::start().await;
    let client = client_resending_reads(&server);
    let limit = Duration::from_secs(30);
    within(limit, "the test", async {
        create_table(&client).await;
        run(&client, insert(1)).await.unwrap();
        let session = Query::new("SELECT pg_backend_pid()").idempotent();
        let pid: i32 = one(&client, session.clone()).await;

        // An answer from the server: not a transport error, same session.
        let error = run(&client, insert(1)).await.unwrap_err();
        let pg = error.downcast_ref::<tokio_postgres::Error>().unwrap();
        assert_eq!(pg.code(), Some(&SqlState::UNIQUE_VIOLATION));
        assert!(!postgres::classifier().is_dead(&*error));
        assert!(!postgres::is_postgres_transport_error(&*error));
        assert_eq!(one::<i32>(&client, session.clone()).await, pid);
        assert_eq!(client.stats().drops, 0);

        // Another session kills ours.
        let (killer, connection) = server.config().connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        let killed: bool = killer
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(killed);

        let new_pid: i32 = one(&client, session).await;
        assert_ne!(new_pid, pid, "a new session");
        assert!(client.stats().drops >= 1);
    })
    .await;
}

/// A query whose session the server ends under it (`pg_terminate_backend`,
/// `57P01 admin_shutdown`) comes back as `ConnectionLost`, with
/// PostgreSQL's error and its SQLSTATE as the source. No classifier is set:
/// the connection's own verdict is enough for the default one, so the
/// client redials, and an idempotent read caught the same way is re-sent
/// on the new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_under_a_query_is_connection_lost() {
    let server = PgServer::start().await;
    let client = client_resending_reads(&server);
    let (killer, connection) = server.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    // Sleeps for long on the session `$1`, and not at all on any other.
    let sleep_on = |pid: i32| {
        Query::new("SELECT pg_sleep(CASE WHEN pg_backend_pid() = $1 THEN 60 ELSE 0 END)").bind(pid)
    };
    // Ends session `pid` once it is running `pg_sleep`.
    let terminate = |pid: i32| {
        let killer = &killer;
        async move {
            loop {
                let active: bool = killer
                    .query_one(
                        "SELECT count(*) > 0 FROM pg_stat_activity \
                         WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
                        &[&pid],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if active {
                    break;
                }
                tokio::time::sleep(ms(10)).await;
            }
            let row = killer
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap();
            assert!(row.get::<_, bool>(0));
        }
    };
    within(Duration::from_secs(30), "the test", async {
        let session = Query::new("SELECT pg_backend_pid()").idempotent();
        let pid: i32 = one(&client, session.clone()).await;

        // Not idempotent: it fails, marked lost, with the server's reason.
        let (result, ()) = tokio::join!(run(&client, sleep_on(pid)), terminate(pid));
        let error = result.unwrap_err();
        assert!(error.is::<ConnectionLost>(), "{error:?}");
        let pg = postgres::postgres_error(&*error).expect("postgres's error inside");
        assert_eq!(pg.code(), Some(&SqlState::ADMIN_SHUTDOWN));
        assert!(tower_redial::classify::is_transport_error(&*error));

        // Idempotent: the same failure is re-sent on a new session.
        let pid: i32 = one(&client, session.clone()).await;
        let (result, ()) = tokio::join!(run(&client, sleep_on(pid).idempotent()), terminate(pid));
        result.expect("re-sent on a new session");
        assert_ne!(one::<i32>(&client, session).await, pid, "a new session");
        assert_eq!(client.stats().drops, 2);
    })
    .await;
}

/// Dropping every clone of the client ends its connection's task: the
/// server sees the session end, so no task or connection is leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_client_ends_its_session() {
    let server = PgServer::start().await;
    let client = client(&server);
    let pid: i32 = one(&client, Query::new("SELECT pg_backend_pid()")).await;

    let (observer, connection) = server.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    let sessions = |pid: i32| {
        let observer = &observer;
        async move {
            let row = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0)
        }
    };
    assert_eq!(sessions(pid).await, 1);

    drop(client);
    within(Duration::from_secs(20), "the session to end", async {
        while sessions(pid).await != 0 {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
}

/// With nothing listening, dials are refused and queued queries fail fast
/// with `Unavailable` at the wait limit; its source is the dial's
/// `tokio_postgres::Error`, whose cause is the refused connection.
#[tokio::test]
async fn nothing_listening_fails_fast_with_the_dial_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user("postgres");
    let policy = policy().wait_limit(ms(300)).build().unwrap();
    let client: PgClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::new())
        .client(config);

    let error = within(
        Duration::from_secs(20),
        "failing fast",
        run(&client, insert(1)),
    )
    .await
    .unwrap_err();
    let unavailable = error.downcast_ref::<Unavailable>().expect("Unavailable");
    let source = std::error::Error::source(unavailable).expect("the dial error");
    assert!(source.is::<tokio_postgres::Error>(), "{source:?}");
    assert_eq!(
        tower_redial::classify::io_error_kind(source),
        Some(io::ErrorKind::ConnectionRefused)
    );
}

/// Secrets stay out of `Debug` output: the config's password (the client's
/// target, named in logs) and bound parameter values.
#[test]
fn debug_output_hides_secrets() {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").user("app").password("hunter2");
    assert!(!format!("{config:?}").contains("hunter2"));

    let query = Query::new("UPDATE users SET token = $1").bind("hunter2");
    let debug = format!("{query:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("UPDATE users"), "{debug}");
    assert_eq!(query.param_count(), 1);
}

/// A batch takes no parameters: binding one is a programming error.
#[test]
#[should_panic(expected = "a batch takes no parameters")]
fn binding_a_batch_panics() {
    let _ = Query::batch("BEGIN; COMMIT").bind(1_i64);
}
