//! A real `redis-server` that restarts with persistence: shut down with
//! `SHUTDOWN` or killed with `kill -9`, then started again on the same port,
//! where it loads its dataset from its append-only file and answers
//! `-LOADING` until it has. No `-LOADING` reaches a caller: commands wait
//! while the server loads, and run once it serves, exactly once.
//!
//! Each server has a dataset of 10,000 keys that every start loads slowly
//! (5 ms a key), until the test lets it finish (see
//! `support/redis_server.rs`): the test, not the machine's speed, decides
//! how long the server loads. Real time throughout. Waits are events (a
//! count of answered requests, the client's state, a server's `INFO`) with
//! hang guards; no assertion depends on how fast anything ran.

use support::line::find_error;
use support::outcome::Outcome;
use support::redis_server;

use tower_redial_interop::redis_books;

use std::time::Duration;

use redis::{AsyncConnectionConfig, Cmd, Value};
use redis_books::{deadline, incr, outcome, Callers, Commands, TASKS};
use redis_server::RedisServer;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::Unavailable;
use tower_redial::redis::{MakeRedis, NotServing, RedisClient};
use tower_redial::state::Phase;
use tower_redial::{BoxError, ReconnectLayer};

/// Restarts in each restart run.
const RESTARTS: usize = 10;
/// Answered requests between two restarts, so that each lands mid-traffic.
const BETWEEN_RESTARTS: u64 = 100;
/// The wait limit of the restart runs: far above any outage they make.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A multiplexed client of `server`, with the shared backoff, dials that
/// time out after 2 s and a 5 s reply timeout: a reply that takes longer is
/// a hang, not a slow machine.
fn client_for(server: &RedisServer, wait_limit: Duration) -> RedisClient {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    let policy = redis_books::policy(Duration::from_secs(2), wait_limit);
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakeRedis::with_config(config))
        .multiplexed(server.url())
}

/// Waits until the server has refused more than `than` commands with the
/// error `code` (`LOADING`, say), or `stop` says so; returns how many it
/// has refused.
async fn refusals_past(
    server: &RedisServer,
    code: &str,
    than: u64,
    stop: impl Fn() -> bool,
) -> u64 {
    let refused = async {
        loop {
            let refused = server.errors(code).await;
            if refused > than || stop() {
                return refused;
            }
            sleep(ms(5)).await;
        }
    };
    deadline(&format!("more than {than} -{code} refusals"), refused).await
}

/// The first `INCR` through `client`: a fresh server answers it with 1.
async fn first_incr(client: &RedisClient) {
    let reply = deadline("the first INCR", client.clone().oneshot(incr())).await;
    assert_eq!(reply.expect("the first INCR"), Value::Int(1));
}

/// Waits for the second `INCR`, `sent` and named `what`: it succeeds, and
/// ran once.
async fn second_incr_ran_once(
    server: &RedisServer,
    what: &str,
    sent: JoinHandle<Result<Value, BoxError>>,
) {
    let reply = deadline(what, sent).await.expect("command task");
    assert_eq!(reply.expect("it succeeds"), Value::Int(2));
    assert_eq!(server.counter("counter").await, 2, "it ran once");
}

/// Waits until the client has dropped more than `than` connections.
async fn drops_past(client: &RedisClient, than: u64) {
    let mut state = client.state();
    deadline(
        "the client to drop its connection",
        state.wait_for(|_| client.stats().drops > than),
    )
    .await
    .expect("the client is alive");
}

// ---------------------------------------------------------------------------
// Restart runs
// ---------------------------------------------------------------------------

/// How the server is taken down.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// `SHUTDOWN`: it syncs its append-only file and exits.
    Shutdown,
    /// `kill -9`.
    Kill,
}

/// Sixteen tasks of `INCR` through one client while the server is taken
/// down (`how`) and started again ten times. Each start loads the dataset,
/// answering `-LOADING`, until it has so refused the client (a dial of its,
/// or a command); then the test lets it finish loading. Prints and checks
/// the books.
async fn restart_run(how: Restart) {
    let mut server = RedisServer::start_slow_loading().await;
    let client = client_for(&server, WAIT_LIMIT);

    let callers = Callers::spawn(&client, Commands::Incr);
    let mut outages = Vec::new();
    let mut loading_refusals = 0;
    for restart in 0..RESTARTS {
        callers
            .answers(
                BETWEEN_RESTARTS,
                &format!("{BETWEEN_RESTARTS} answers before restart {restart}"),
            )
            .await;

        let down = Instant::now();
        match how {
            Restart::Shutdown => server.shutdown_and_restart().await,
            Restart::Kill => server.kill_and_restart().await,
        };
        // The start-up check's PING was refused; then, at least once, the
        // client (its dial, or a command of its).
        let start_up = server.errors("LOADING").await;
        let refused = refusals_past(&server, "LOADING", start_up, || false).await;
        assert!(server.is_loading().await, "restart {restart}: loading");
        loading_refusals += refused - start_up;
        server.finish_loading().await;
        outages.push(down.elapsed());
    }
    callers
        .answers(2 * BETWEEN_RESTARTS, "answers after the last restart")
        .await;
    let (books, lasts) = callers.stop().await;
    let count = server.counter("counter").await as u64;
    let stats = client.stats();
    let longest = outages.iter().max().copied().unwrap_or_default();
    println!(
        "{how:?} x{RESTARTS}, {TASKS} tasks of INCR (longest outage {longest:?}):\n  \
         sent {}; succeeded {}; failed ambiguous {}; failed not-sent {}; failed fast {}; \
         refused (-LOADING or another error reply) reaching a caller {}\n  \
         re-sent {}; server count {count} (succeeded {} <= {count} <= succeeded + ambiguous {})\n  \
         -LOADING refusals of the client counted by the servers: at least \
         {loading_refusals}; \
         dials {}, failed {}; connections dropped {}",
        books.tally.issued,
        books.incr_ok,
        books.tally.ambiguous,
        books.tally.not_sent,
        books.tally.unavailable,
        books.tally.refused,
        stats.retries,
        books.incr_ok,
        books.incr_ok + books.tally.ambiguous,
        stats.dials,
        stats.dial_failures,
        stats.drops,
    );

    assert!(books.violations.is_empty(), "{:#?}", books.violations);
    let tally = &books.tally;
    tally.assert_sane();
    assert_eq!(
        tally.refused, 0,
        "-LOADING (or another error reply) reached a caller: {books:?}"
    );
    assert_eq!(tally.not_sent, 0, "a request came back unsent: {books:?}");
    assert_eq!(
        tally.issued,
        books.incr_ok + tally.ambiguous + tally.unavailable,
        "every request has one outcome: {books:?}"
    );
    assert!(
        count >= books.incr_ok,
        "an acknowledged INCR was lost: {count} < {}",
        books.incr_ok
    );
    assert!(
        count <= books.incr_ok + tally.ambiguous,
        "an INCR ran twice, or one that never reached the server ran: {count} > {}",
        books.incr_ok + tally.ambiguous
    );
    assert!(
        lasts.iter().all(|last| *last == Some(Outcome::Ok)),
        "every caller's last request succeeded: {lasts:?}"
    );
    assert!(stats.drops >= RESTARTS as u64, "{stats:?}");
    assert!(loading_refusals >= RESTARTS as u64, "{loading_refusals}");
    assert_eq!(server.starts(), 1 + RESTARTS as u32);
    // Outages far below the wait limit are ridden through: nothing fails
    // fast.
    if longest < WAIT_LIMIT / 2 {
        assert_eq!(books.tally.unavailable, 0, "{books:?}");
    }
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
    server.kill().await;
}

/// The row for graceful restarts: `SHUTDOWN`, then a start on the
/// same port that loads the append-only file, ten times, under sixteen tasks
/// of `INCR`. `-LOADING` never reaches a caller, nothing comes back unsent,
/// and the books reconcile: succeeded <= server count <= succeeded +
/// ambiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_and_loading_restart_ten_times_under_sixteen_tasks() {
    restart_run(Restart::Shutdown).await;
}

/// The same with `kill -9` instead of `SHUTDOWN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_and_loading_restart_ten_times_under_sixteen_tasks() {
    restart_run(Restart::Kill).await;
}

// ---------------------------------------------------------------------------
// One command at a time
// ---------------------------------------------------------------------------

/// A command sent while the restarted server loads its dataset waits: the
/// server refuses the client twice more with `-LOADING` (its dials), and
/// the command is still waiting, unrun. Once the server has loaded, it
/// runs, once, and was never re-sent: it waited in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_while_the_server_loads_waits_and_runs_once() {
    let mut server = RedisServer::start_slow_loading().await;
    let client = client_for(&server, WAIT_LIMIT);
    first_incr(&client).await;

    server.shutdown_and_restart().await;
    assert!(server.is_loading().await);
    // Sent once the client knows its connection is gone, so not on it.
    drops_past(&client, 0).await;
    let start_up = server.errors("LOADING").await;
    let sent = tokio::spawn(client.clone().oneshot(incr()));
    refusals_past(&server, "LOADING", start_up + 1, || sent.is_finished()).await;
    assert!(!sent.is_finished(), "the INCR waits while the server loads");
    assert!(server.is_loading().await, "so it has not run");

    server.finish_loading().await;
    second_incr_ran_once(&server, "the INCR sent while loading", sent).await;
    let stats = client.stats();
    println!(
        "loading restart: {} -LOADING refusals; {stats:?}",
        server.errors("LOADING").await
    );
    assert_eq!(stats.retries, 0, "it waited in the queue: {stats:?}");
    server.kill().await;
}

/// A command refused with `-LOADING` on an open connection (the server
/// reloads with `DEBUG RELOAD`, keeping its connections) comes back unsent
/// and retires the connection: the client redials, its dials are refused
/// with `-LOADING` while the server loads, and the command is re-sent once
/// the server serves. It ran once, and was re-sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_refused_with_loading_on_an_open_connection_is_resent_once() {
    let mut server = RedisServer::start_slow_loading().await;
    let client = client_for(&server, WAIT_LIMIT);
    first_incr(&client).await;
    let before = client.stats();

    let reload = server.reload_slowly().await;
    let reloading = server.errors("LOADING").await;
    let sent = tokio::spawn(client.clone().oneshot(incr()));
    // The INCR's refusal, and a dial's.
    let refused = refusals_past(&server, "LOADING", reloading + 1, || sent.is_finished()).await;
    assert!(!sent.is_finished(), "the INCR waits while the server loads");
    assert!(server.is_loading().await, "so it has not run");

    server.finish_loading().await;
    let reloaded = deadline("DEBUG RELOAD", reload).await.expect("reload task");
    assert_eq!(reloaded.expect("DEBUG RELOAD answered"), "+OK\r\n");
    second_incr_ran_once(&server, "the INCR refused while loading", sent).await;
    let stats = client.stats();
    println!(
        "reload: {} -LOADING refusals; before {before:?}; after {stats:?}",
        refused - reloading
    );
    assert_eq!(stats.retries - before.retries, 1, "re-sent once: {stats:?}");
    assert_eq!(stats.drops - before.drops, 1, "retired: {stats:?}");
    server.kill().await;
}

/// Past the wait limit, a command sent while the server loads fails fast
/// with `Unavailable`, whose cause is the refused dial's `NotServing`, and
/// never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_waiting_on_a_loading_server_past_the_wait_limit_fails_fast_unrun() {
    let mut server = RedisServer::start_slow_loading().await;
    let client = client_for(&server, ms(300));
    first_incr(&client).await;

    server.shutdown_and_restart().await;
    // The client's latest dial was refused with -LOADING.
    let mut state = client.state();
    let refused = state.wait_for(|s| {
        let not_serving = s.last_error().and_then(|e| find_error::<NotServing>(e));
        not_serving.is_some_and(NotServing::is_loading)
    });
    deadline("a dial refused with -LOADING", refused)
        .await
        .expect("the client is alive");
    let result = deadline(
        "the INCR sent while loading",
        client.clone().oneshot(incr()),
    )
    .await;
    let error = result.expect_err("fails fast");
    let unavailable = find_error::<Unavailable>(&*error).expect("Unavailable");
    assert!(
        find_error::<NotServing>(unavailable).is_some_and(NotServing::is_loading),
        "{error:?}"
    );
    assert!(server.is_loading().await);

    server.finish_loading().await;
    assert_eq!(server.counter("counter").await, 1, "it never ran");
    // Failing fast until a dial succeeds; the client's own task redials.
    let mut state = client.state();
    deadline("ready again", state.wait_for(|s| s.phase() == Phase::Ready))
        .await
        .expect("the client is alive");
    let reply = deadline("an INCR once loaded", client.clone().oneshot(incr())).await;
    assert_eq!(reply.expect("it succeeds"), Value::Int(2));
    server.kill().await;
}

/// A replica cut off from its master, with `replica-serve-stale-data no`,
/// answers `-MASTERDOWN`: a command sent to it waits (the client's dials are
/// refused), and is answered once the replica is made a master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_to_a_replica_cut_off_from_its_master_waits() {
    let mut server = RedisServer::start_cut_off_replica().await;
    let client = client_for(&server, WAIT_LIMIT);
    let start_up = server.errors("MASTERDOWN").await;
    let sent = tokio::spawn(client.clone().oneshot(Cmd::get("counter")));
    // Two refusals: the client's dials.
    refusals_past(&server, "MASTERDOWN", start_up + 1, || sent.is_finished()).await;
    assert!(!sent.is_finished(), "the GET waits for the replica");

    server.promote().await;
    let reply = deadline("the GET sent to the replica", sent)
        .await
        .expect("command task");
    assert_eq!(reply.expect("it succeeds"), Value::Nil);
    let reply = deadline("an INCR", client.clone().oneshot(incr())).await;
    assert_eq!(reply.expect("it succeeds"), Value::Int(1));
    let refusals = server.errors("MASTERDOWN").await;
    println!(
        "replica: {refusals} -MASTERDOWN refusals; {:?}",
        client.stats()
    );
    server.kill().await;
}

/// A graceful `SHUTDOWN` is a kill to the client: the `INCR` in flight
/// (held unrun by `CLIENT PAUSE`) fails as possibly sent, and is not
/// re-sent; the `INCR`s issued while the server is down wait, and run once
/// each on the restarted server. The books show the held one never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_the_command_in_flight_and_holds_the_rest() {
    let mut server = RedisServer::start_durable().await;
    let client = client_for(&server, WAIT_LIMIT);
    first_incr(&client).await;

    let paused = server.raw(&["CLIENT", "PAUSE", "60000", "WRITE"]).await;
    assert_eq!(paused, "+OK\r\n");
    let in_flight = tokio::spawn(client.clone().oneshot(incr()));
    server.wait_for_blocked_clients(1).await;
    server.shutdown().await;
    let result = deadline("the INCR in flight", in_flight)
        .await
        .expect("command task");
    assert_eq!(outcome(&result), Outcome::Ambiguous, "{result:?}");

    let failures = client.stats().dial_failures;
    let waiting: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client.clone().oneshot(incr())))
        .collect();
    // A dial refused while they wait: the server is down.
    let mut state = client.state();
    deadline(
        "a refused dial",
        state.wait_for(|_| client.stats().dial_failures > failures),
    )
    .await
    .expect("the client is alive");
    server.restart().await;
    for result in deadline(
        "the INCRs issued while down",
        futures::future::join_all(waiting),
    )
    .await
    {
        let result = result.expect("command task");
        assert_eq!(outcome(&result), Outcome::Ok, "{result:?}");
    }
    let count = server.counter("counter").await;
    println!("shutdown: server count {count}; {:?}", client.stats());
    assert_eq!(
        count,
        1 + 8,
        "the held INCR never ran; the others ran once each"
    );
    server.kill().await;
}
