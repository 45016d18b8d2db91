//! PostgreSQL restarted in each of `pg_ctl`'s shutdown modes, under load:
//! eight tasks insert rows, each carrying a unique client-side id, through
//! one reconnecting client with the default classifier, while the server
//! restarts three times. Then the rows on the server are held against what
//! each caller was told (the books): every insert that succeeded is there,
//! no id is there twice, and every other row belongs to an insert that
//! failed ambiguously (it may have run). None failed as never sent, and no
//! `57P03` reached a caller at all.
//!
//! The server is a real one: `initdb` + `pg_ctl` in a temporary directory,
//! on a free 127.0.0.1 port, removed on drop (see `support/pg_server.rs`).
#![cfg(feature = "postgres")]

use support::outcome::Outcome;
use support::pg_server;

use crate::{outcome, Config as _};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::error::Error;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pg_server::{PgServer, Shutdown};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::NoTls;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::error::NotSent;
use tower_redial::postgres::{
    self, MakePostgres, PgClient, PgConnection, Query, QueryFuture, Rows,
};
use tower_redial::state::{Phase, Stats};
use tower_redial::{classify, Backoff, BoxError, ReconnectLayer, ReconnectPolicy};

/// Tasks inserting at once.
const TASKS: usize = 8;
/// Restarts per shutdown mode.
const CYCLES: usize = 3;
/// Successful inserts to see after each restart before the next one: the
/// client is back.
const STEADY: usize = 24;
/// A hang guard for one step (a restart, a query, a wait for progress):
/// far longer than any step takes, so no assertion depends on speed.
const STEP: Duration = Duration::from_secs(30);
/// The client's wait limit: far past any restart, so nothing fails fast,
/// and short of [`STEP`], so a request that waits too long fails with
/// `Unavailable` before its guard fires.
const WAIT_LIMIT: Duration = Duration::from_secs(20);
/// How long `pg_ctl restart -m smart` waits for the sessions to end.
const SMART_WAIT: Duration = Duration::from_secs(2);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Fails the test, rather than hanging it, if `future` takes longer than
/// [`STEP`]. (The server is still stopped and removed: its guard drops as
/// the panic unwinds.)
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}"))
}

/// Quick redials, a wait limit past any restart (nothing fails fast), and
/// the default classifier: the connection itself says when it is dead.
fn client(server: &PgServer) -> PgClient {
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(10), 2.0, ms(200)))
        .connect_timeout(Duration::from_secs(5))
        .wait_limit(WAIT_LIMIT)
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::new())
        .client(server.config())
}

/// A plain tokio-postgres session, to look at the server from the side.
async fn observer(server: &PgServer) -> tokio_postgres::Client {
    let (client, connection) = within("an observer session", server.config().connect(NoTls))
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

const CREATE: &str = "CREATE TABLE inserts (id bigserial PRIMARY KEY, client_id bigint NOT NULL)";

fn insert(client_id: i64) -> Query {
    Query::new("INSERT INTO inserts (client_id) VALUES ($1) RETURNING id").bind(client_id)
}

async fn create_table(client: &PgClient) {
    within("CREATE TABLE", client.clone().oneshot(Query::batch(CREATE)))
        .await
        .unwrap();
}

/// The SQLSTATE of the first `tokio_postgres::Error` in `error`'s chain.
fn sqlstate(error: &(dyn Error + 'static)) -> Option<SqlState> {
    std::iter::successors(Some(error), |e: &&(dyn Error + 'static)| (*e).source())
        .find_map(|e| e.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.code().cloned())
}

/// Dials a new session and returns the SQLSTATE it was refused with, or
/// `None` if it was let in (and then closed at once, so as not to hold up a
/// smart shutdown).
async fn new_session_refusal(server: &PgServer) -> Option<SqlState> {
    match within("a new session", server.config().connect(NoTls)).await {
        Ok(_) => None,
        Err(error) => Some(
            error
                .code()
                .cloned()
                .unwrap_or_else(|| panic!("a new session failed without a SQLSTATE: {error:?}")),
        ),
    }
}

/// Waits until the server refuses new sessions with `57P03`: it is
/// shutting down.
async fn until_refusing_sessions(server: &PgServer) {
    within("the server to refuse new sessions", async {
        while new_session_refusal(server).await != Some(SqlState::CANNOT_CONNECT_NOW) {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs a one-row, one-column query on a plain session.
async fn scalar<T>(observer: &tokio_postgres::Client, sql: &str, params: Params<'_>) -> T
where
    T: for<'a> FromSql<'a>,
{
    within(sql, observer.query_one(sql, params))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// Waits until the count query `sql` says 1.
async fn until_one(observer: &tokio_postgres::Client, sql: &str, params: Params<'_>) {
    within(&format!("{sql} to say 1"), async {
        while scalar::<i64>(observer, sql, params).await != 1 {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
}

/// Waits for `connection` to be ready and hands it `query`, which starts
/// when its future is first polled.
async fn hand_over(connection: &mut PgConnection, query: Query) -> QueryFuture {
    within("the connection to be ready", connection.ready())
        .await
        .unwrap()
        .call(query)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// What happened to each insert
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Record {
    client_id: i64,
    outcome: Outcome,
    /// The server's row id, if it committed.
    id: Option<i64>,
    /// The server's SQLSTATE, if it failed with one. For an ambiguous
    /// failure, why the session ended (none: the connection just closed).
    code: Option<SqlState>,
    /// The error, if it failed.
    error: Option<String>,
    /// The load's epoch when the insert was issued and when it finished.
    issued: usize,
    finished: usize,
}

impl Record {
    fn new(client_id: i64, result: Result<Rows, BoxError>, issued: usize, finished: usize) -> Self {
        let id = result
            .as_ref()
            .ok()
            .and_then(|rows| rows.first())
            .map(|row| row.get(0));
        let (outcome, error) = match (outcome(&result), &result) {
            (Outcome::Ok, _) if id.is_none() => {
                (Outcome::Unexpected, Some("no row returned".into()))
            }
            (outcome, result) => (outcome, result.as_ref().err().map(|e| format!("{e:?}"))),
        };
        Self {
            client_id,
            outcome,
            id,
            code: result.as_ref().err().and_then(|e| sqlstate(&**e)),
            error,
            issued,
            finished,
        }
    }
}

/// The load: the tasks' shared counters. The epoch moves on at each step of
/// a restart, so each insert knows what was going on when it was issued.
struct Load {
    next_id: AtomicI64,
    epoch: AtomicU64,
    stop: AtomicBool,
    /// Successful inserts, by the epoch they were issued in.
    oks: watch::Sender<Vec<usize>>,
}

impl Load {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            next_id: AtomicI64::new(1),
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            oks: watch::Sender::new(vec![0]),
        })
    }

    fn epoch(&self) -> usize {
        self.epoch.load(Ordering::SeqCst) as usize
    }

    /// Starts a new epoch and returns it. (Only the test's own task calls
    /// it: the tally has room for the epoch before any task can see it.)
    fn next_epoch(&self) -> usize {
        let epoch = self.epoch() + 1;
        self.oks.send_modify(|oks| oks.resize(epoch + 1, 0));
        self.epoch.store(epoch as u64, Ordering::SeqCst);
        epoch
    }

    /// Waits for `n` successful inserts issued in `epoch`.
    async fn wait_for_oks(&self, epoch: usize, n: usize) {
        let mut oks = self.oks.subscribe();
        within(
            &format!("{n} successful inserts in epoch {epoch}"),
            oks.wait_for(|oks| oks.get(epoch).copied().unwrap_or(0) >= n),
        )
        .await
        .unwrap();
    }

    /// Starts the tasks: each inserts, one insert at a time, until stopped.
    fn spawn(self: &Arc<Self>, client: &PgClient) -> JoinSet<Vec<Record>> {
        let mut tasks = JoinSet::new();
        for _ in 0..TASKS {
            let (load, client) = (self.clone(), client.clone());
            tasks.spawn(async move {
                let mut records = Vec::new();
                while !load.stop.load(Ordering::SeqCst) {
                    let client_id = load.next_id.fetch_add(1, Ordering::SeqCst);
                    let issued = load.epoch();
                    let result =
                        within("an insert", client.clone().oneshot(insert(client_id))).await;
                    let finished = load.epoch();
                    let record = Record::new(client_id, result, issued, finished);
                    if record.outcome == Outcome::Ok {
                        load.oks.send_modify(|oks| oks[issued] += 1);
                    }
                    records.push(record);
                }
                records
            });
        }
        tasks
    }

    async fn stop(&self, mut tasks: JoinSet<Vec<Record>>) -> Vec<Record> {
        self.stop.store(true, Ordering::SeqCst);
        let mut records = Vec::new();
        while let Some(joined) = within("the tasks to stop", tasks.join_next()).await {
            records.extend(joined.unwrap());
        }
        records
    }
}

/// Records every distinct error the client's state reports while it runs
/// (why a connection was dropped, why a dial failed): its SQLSTATE, or else
/// its IO error kind, or else its text.
fn record_outage_errors(client: &PgClient) -> Arc<Mutex<BTreeSet<String>>> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let mut state = client.state();
    let record = seen.clone();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let label = state.borrow_and_update().last_error().map(|error| {
                let error: &(dyn Error + 'static) = error;
                match (sqlstate(error), classify::io_error_kind(error)) {
                    (Some(code), _) => code.code().to_string(),
                    (None, Some(kind)) => format!("{kind:?}"),
                    (None, None) => error.to_string(),
                }
            });
            if let Some(label) = label {
                lock(&record).insert(label);
            }
        }
    });
    seen
}

// ---------------------------------------------------------------------------
// The books
// ---------------------------------------------------------------------------

/// Holds what the callers were told against the rows on the server, asserts
/// the books, and prints them.
async fn check_books(
    server: &PgServer,
    mode: Shutdown,
    records: &[Record],
    restarting: &[usize],
    stats: &Stats,
    outage_errors: &BTreeSet<String>,
) {
    let rows = within(
        "reading the rows",
        observer(server)
            .await
            .query("SELECT id, client_id FROM inserts", &[]),
    )
    .await
    .unwrap();
    // client id -> the row ids that carry it.
    let mut present: HashMap<i64, Vec<i64>> = HashMap::new();
    for row in &rows {
        present.entry(row.get(1)).or_default().push(row.get(0));
    }
    let by_id: HashMap<i64, &Record> = records.iter().map(|r| (r.client_id, r)).collect();
    assert_eq!(by_id.len(), records.len(), "client ids are unique");

    let twice: Vec<_> = present.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "inserts ran twice: {twice:?}");

    let (mut ok, mut ambiguous, mut ambiguous_present) = (0, 0, 0);
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut not_sent = Vec::new();
    let mut other = Vec::new();
    for record in records {
        let rows = present.get(&record.client_id);
        match record.outcome {
            Outcome::Ok => {
                ok += 1;
                let id = record.id.expect("a row id for each success");
                assert_eq!(
                    rows,
                    Some(&vec![id]),
                    "insert {} succeeded as row {id}",
                    record.client_id
                );
            }
            Outcome::Ambiguous => {
                ambiguous += 1;
                ambiguous_present += usize::from(rows.is_some());
                let code = record.code.as_ref().map_or("closed", SqlState::code);
                *codes.entry(code.to_string()).or_default() += 1;
            }
            Outcome::NotSent => not_sent.push((record.client_id, &record.error)),
            // `Unavailable`, `Closed`, a server error such as a unique
            // violation: never expected.
            other_outcome => other.push((record.client_id, other_outcome, &record.error)),
        }
    }
    for client_id in present.keys() {
        match by_id.get(client_id) {
            Some(r) if matches!(r.outcome, Outcome::Ok | Outcome::Ambiguous) => {}
            Some(r) => panic!("insert {client_id} ran, but its caller got {r:?}"),
            None => panic!("a row for client id {client_id}, which nobody inserted"),
        }
    }

    let during: Vec<_> = records
        .iter()
        .filter(|r| restarting.contains(&r.issued))
        .collect();
    println!(
        "books for pg_ctl restart -m {mode:?}, {CYCLES} restarts, {TASKS} tasks:\n  \
         sent {}; succeeded {ok}; failed ambiguous {ambiguous} (by SQLSTATE {codes:?}; \
         {ambiguous_present} of them committed); failed not sent {}; other failures {}\n  \
         rows on the server {} = {ok} succeeded + {ambiguous_present} ambiguous; \
         no client id twice\n  \
         issued during a restart: {}, of which succeeded {}\n  \
         outage errors seen (drop causes, dial errors): {outage_errors:?}\n  client: {stats:?}",
        records.len(),
        not_sent.len(),
        other.len(),
        rows.len(),
        during.len(),
        during.iter().filter(|r| r.outcome == Outcome::Ok).count(),
    );

    assert!(
        not_sent.is_empty(),
        "inserts failed as not sent: {not_sent:?}"
    );
    assert!(other.is_empty(), "inserts failed otherwise: {other:?}");
    assert_eq!(rows.len(), ok + ambiguous_present);
    // 57P03 refuses a new session: a dial error, never a query's.
    assert!(
        !codes.contains_key("57P03"),
        "57P03 reached a caller: {codes:?}"
    );
    // Each restart leaves at most one insert per task in doubt: the one it
    // had handed to the connection. Anything issued after the connection
    // was known dead went to the next one.
    assert!(ambiguous <= TASKS * CYCLES, "{ambiguous} ambiguous inserts");
    assert_eq!(
        stats.drops, CYCLES as u64,
        "one drop per restart: {stats:?}"
    );
    assert_eq!(stats.fail_fast, 0, "{stats:?}");
}

// ---------------------------------------------------------------------------
// Under load, per shutdown mode
// ---------------------------------------------------------------------------

/// Runs the load through [`CYCLES`] restarts in `mode`, then checks the
/// books.
async fn restarts_under_load(mode: Shutdown) {
    let server = PgServer::start().await;
    let client = client(&server);
    let outage_errors = record_outage_errors(&client);
    create_table(&client).await;

    let load = Load::new();
    let tasks = load.spawn(&client);
    load.wait_for_oks(0, STEADY).await;
    // The epochs in which a restart was under way, and those of them in
    // which a smart shutdown waited.
    let mut restarting = Vec::new();
    let mut smart = Vec::new();
    for _ in 0..CYCLES {
        let epoch = load.next_epoch();
        restarting.push(epoch);
        if mode == Shutdown::Smart {
            smart.push(epoch);
            smart_restart_is_outlasted(&server, &load, epoch).await;
            // What pg_ctl's hint says to do: end the sessions.
            restarting.push(load.next_epoch());
            within(
                "pg_ctl restart -m fast",
                server.restart_with(Shutdown::Fast),
            )
            .await;
        } else {
            within("pg_ctl restart", server.restart_with(mode)).await;
        }
        let after = load.next_epoch();
        load.wait_for_oks(after, STEADY).await;
    }
    let records = load.stop(tasks).await;

    // Under a smart shutdown the session goes on: everything issued and
    // finished in it succeeded.
    for record in &records {
        if smart.contains(&record.issued) && record.finished == record.issued {
            assert_eq!(
                record.outcome,
                Outcome::Ok,
                "insert {} failed during a smart shutdown: {record:?}",
                record.client_id,
            );
        }
    }
    let outage_errors = lock(&outage_errors).clone();
    check_books(
        &server,
        mode,
        &records,
        &restarting,
        &client.stats(),
        &outage_errors,
    )
    .await;
}

/// `pg_ctl restart -m smart` under the connected client: the server refuses
/// new sessions with `57P03`, the client's session goes on serving, and
/// `pg_ctl` gives up, leaving the server refusing new sessions.
async fn smart_restart_is_outlasted(server: &PgServer, load: &Load, epoch: usize) {
    let (restarted, ()) = tokio::join!(
        within(
            "pg_ctl restart -m smart",
            server.try_restart(Shutdown::Smart, SMART_WAIT)
        ),
        async {
            until_refusing_sessions(server).await;
            load.wait_for_oks(epoch, STEADY).await;
        },
    );
    let failure = restarted.expect_err("a smart shutdown finished under a connected client");
    println!("as expected, {failure}");
    assert_eq!(
        new_session_refusal(server).await,
        Some(SqlState::CANNOT_CONNECT_NOW),
        "still shutting down after pg_ctl gave up"
    );
}

/// `pg_ctl restart -m fast` under load: sessions end with `57P01`; no
/// insert is lost, doubled, or failed as never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_restarts_under_load_keep_the_books() {
    restarts_under_load(Shutdown::Fast).await;
}

/// `pg_ctl restart -m immediate` (a crash) under load: sessions are cut
/// after a `57P01` notice; no insert is lost, doubled, or failed as never
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_restarts_under_load_keep_the_books() {
    restarts_under_load(Shutdown::Immediate).await;
}

/// `pg_ctl restart -m smart` under load: the client's session outlasts it
/// and keeps serving, pg_ctl gives up, and a fast restart finishes the job;
/// no insert is lost, doubled, or failed as never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_restarts_under_load_keep_the_books() {
    restarts_under_load(Shutdown::Smart).await;
}

// ---------------------------------------------------------------------------
// One connection, step by step
// ---------------------------------------------------------------------------

/// A query answered with `57P01` fails as it is (it may have run), the
/// connection then counts as closed, and a query handed to it before but
/// started after comes back `NotSent` with the query, and never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_57p01_the_connection_is_closed_and_sends_nothing() {
    let server = PgServer::start().await;
    let observer = observer(&server).await;
    within("CREATE TABLE", observer.batch_execute(CREATE))
        .await
        .unwrap();
    let mut make = MakePostgres::new();
    let make = within("the factory", make.ready()).await.unwrap();
    let mut connection = within("a connection", make.call(server.config()))
        .await
        .unwrap();

    let pid = hand_over(&mut connection, Query::new("SELECT pg_backend_pid()")).await;
    let pid: i32 = within("the backend pid", pid)
        .await
        .unwrap()
        .first()
        .unwrap()
        .get(0);
    let sleeping =
        tokio::spawn(hand_over(&mut connection, Query::new("SELECT pg_sleep(60)")).await);
    // Handed over while the connection was ready; not started yet.
    let later = hand_over(&mut connection, insert(1)).await;

    let sleeps = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'";
    until_one(&observer, sleeps, &[&pid]).await;
    let terminated: bool = scalar(&observer, "SELECT pg_terminate_backend($1)", &[&pid]).await;
    assert!(terminated);

    let error = within("the sleep's answer", sleeping)
        .await
        .unwrap()
        .unwrap_err();
    assert!(!NotSent::is_in(&*error), "it was running: {error:?}");
    assert_eq!(
        sqlstate(&*error),
        Some(SqlState::ADMIN_SHUTDOWN),
        "{error:?}"
    );
    assert!(connection.is_closed());
    let ready = within("poll_ready", poll_fn(|cx| connection.poll_ready(cx))).await;
    let closed = ready.expect_err("a closed connection is not ready");
    assert!(closed.is::<postgres::ConnectionClosed>(), "{closed:?}");

    let error = within("the later insert", later).await.unwrap_err();
    let mut not_sent = error
        .downcast::<NotSent>()
        .unwrap_or_else(|e| panic!("not NotSent: {e:?}"));
    let query = not_sent.take_request::<Query>().expect("the query back");
    assert_eq!(query.sql(), insert(1).sql());
    let rows: i64 = scalar(
        &observer,
        "SELECT count(*) FROM inserts WHERE client_id = $1",
        &[&1_i64],
    )
    .await;
    assert_eq!(rows, 0, "the unsent insert never ran");
}

/// `57P01` does not mean "never ran": a batch stopped by a fast restart in
/// its last statement fails with `57P01` after its insert committed. That is
/// why a query that may have reached the server is never re-sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_57p01_can_follow_a_commit() {
    let server = PgServer::start().await;
    let client = client(&server);
    create_table(&client).await;
    let batch = tokio::spawn(client.clone().oneshot(Query::batch(
        "BEGIN; INSERT INTO inserts (client_id) VALUES (7); COMMIT; SELECT pg_sleep(60)",
    )));
    let observer = observer(&server).await;
    until_one(
        &observer,
        "SELECT count(*) FROM inserts WHERE client_id = $1",
        &[&7_i64],
    )
    .await;

    within(
        "pg_ctl restart -m fast",
        server.restart_with(Shutdown::Fast),
    )
    .await;
    let error = within("the batch's answer", batch)
        .await
        .unwrap()
        .unwrap_err();
    assert!(!NotSent::is_in(&*error), "{error:?}");
    assert_eq!(
        sqlstate(&*error),
        Some(SqlState::ADMIN_SHUTDOWN),
        "{error:?}"
    );

    let rows = within(
        "counting after the restart",
        client.clone().oneshot(Query::new(
            "SELECT count(*) FROM inserts WHERE client_id = 7",
        )),
    )
    .await
    .unwrap();
    let count: i64 = rows.first().unwrap().get(0);
    assert_eq!(count, 1, "the insert committed before the 57P01");
    assert_eq!(client.stats().drops, 1);
}

/// A smart shutdown waits for the client's session: meanwhile the session
/// serves, and another client's dials are refused with `57P03`, so its
/// insert waits in the queue. Dropping the first client lets the restart
/// finish, and the waiting insert then runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_restart_waits_for_the_client_and_new_dials_wait_on_57p03() {
    let server = PgServer::start().await;
    let holder = client(&server);
    create_table(&holder).await;
    within("an insert", holder.clone().oneshot(insert(1)))
        .await
        .unwrap();

    let (restarted, ()) = tokio::join!(
        within(
            "pg_ctl restart -m smart",
            // pg_ctl's own limit, short of the guard: should the session
            // outlast it, pg_ctl's failure says so.
            server.try_restart(Shutdown::Smart, WAIT_LIMIT)
        ),
        async {
            until_refusing_sessions(&server).await;
            // The session goes on.
            within(
                "an insert in the session",
                holder.clone().oneshot(insert(2)),
            )
            .await
            .unwrap();

            let waiter = client(&server);
            let mut state = waiter.state();
            let queued = tokio::spawn(waiter.clone().oneshot(insert(3)));
            within(
                "a dial refused with 57P03",
                state.wait_for(|s| {
                    s.phase() == Phase::Backoff
                        && s.last_error().and_then(|e| sqlstate(e))
                            == Some(SqlState::CANNOT_CONNECT_NOW)
                }),
            )
            .await
            .unwrap();
            assert!(!queued.is_finished(), "the insert waits in the queue");

            // The holder goes away, and with it the last session.
            drop(holder);
            let id = within("the queued insert", queued)
                .await
                .unwrap()
                .unwrap()
                .first()
                .map(|row| row.get::<_, i64>(0));
            assert!(id.is_some());
            let stats = waiter.stats();
            assert!(stats.dial_failures >= 1, "{stats:?}");
            assert_eq!((stats.fail_fast, stats.retries), (0, 0), "{stats:?}");
        },
    );
    restarted.expect("the smart restart finishes once the client is gone");

    let rows = within(
        "reading the rows",
        observer(&server)
            .await
            .query("SELECT client_id FROM inserts ORDER BY client_id", &[]),
    )
    .await
    .unwrap();
    let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(ids, [1, 2, 3], "each insert ran once");
}

/// A crash of another server process (a backend killed with `SIGKILL`):
/// the server ends every session with a `WARNING 57P02 crash_shutdown`
/// notice, runs crash recovery, and takes sessions again. The client rides
/// through: one drop, and the next insert runs once on a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_of_another_backend_ends_the_session_with_57p02() {
    let server = PgServer::start().await;
    let client = client(&server);
    create_table(&client).await;
    within("an insert", client.clone().oneshot(insert(1)))
        .await
        .unwrap();

    // A plain session that records the notices it gets, to show what the
    // server sends.
    let (witness, mut connection) = within("a witness session", server.config().connect(NoTls))
        .await
        .unwrap();
    let witnessed = tokio::spawn(async move {
        let mut notices = Vec::new();
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notice(notice)) => {
                    notices.push((notice.severity().to_string(), notice.code().clone()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        notices
    });
    let witness_pid: i32 = scalar(&witness, "SELECT pg_backend_pid()", &[]).await;
    let victim = observer(&server).await;
    // The server sends the notice from a signal handler, and skips it if the
    // process is in the middle of sending something: wait until the
    // witness's process is waiting for a query.
    let reading =
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'ClientRead'";
    until_one(&victim, reading, &[&witness_pid]).await;
    let pid: i32 = scalar(&victim, "SELECT pg_backend_pid()", &[]).await;
    let killed = within(
        "kill -9",
        tokio::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status(),
    )
    .await
    .unwrap();
    assert!(killed.success());

    let notices = within("the witness session to end", witnessed)
        .await
        .unwrap();
    assert_eq!(
        notices,
        [("WARNING".to_string(), SqlState::CRASH_SHUTDOWN)],
        "what the server sends"
    );
    drop(witness);
    // Our own session got the same notice: the client drops it, on its own.
    within("the client to drop its session", async {
        while client.stats().drops == 0 {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;

    let inserted = within(
        "an insert after the crash",
        client.clone().oneshot(insert(2)),
    )
    .await
    .unwrap();
    assert_eq!(inserted.rows_affected(), 1);
    let stats = client.stats();
    assert_eq!((stats.drops, stats.fail_fast), (1, 0), "{stats:?}");
    let rows: i64 = scalar(
        &observer(&server).await,
        "SELECT count(*) FROM inserts WHERE client_id <= $1",
        &[&2_i64],
    )
    .await;
    assert_eq!(rows, 2);
}
