//! End-to-end tests against a real `redis-server`: a `RedisClient` built
//! from `MakeRedis`, while the server is killed with `kill -9` and restarted
//! on the same port; and the same scripted restart run against redis-rs's own
//! `ConnectionManager`, side by side.
//!
//! Each test starts its own server on a free `127.0.0.1` port (see
//! `support/redis_server.rs`; `scripts/test` installs `redis-server` when it
//! is missing). Real time throughout. Waits are events (a count of answered
//! requests, a server's `INFO`) with hang guards; sleeps only pace outages.
//! The one bound on how long a request took is derived from the outages
//! the test measured. A fake server that hangs up mid-traffic checks that
//! no command waits out its reply timeout on a dead connection.

use support::redis_server;

use support::outcome::Outcome;
use support::redial_watch;

use tower_redial_interop::redis_books;

use redial_watch::{assert_one_drop_and_one_redial, ready_after_a_drop, record_phases};
use redis_books::{deadline, incr, outcome, Callers, Commands, HANG_GUARD, TASKS};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisConnectionInfo,
    RedisError, Value,
};
use redis_server::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::error::{NotSent, Unavailable};
use tower_redial::redis::{redis_error, MakeRedis, RedisClient, RedisConnection};
use tower_redial::state::Phase;
use tower_redial::{BoxError, Client, ReconnectLayer, ReconnectPolicy};

/// `kill -9`s in the chaos run.
const KILLS: usize = 10;
/// Answered requests between two kills, so that each kill lands mid-traffic.
const BETWEEN_KILLS: u64 = 100;
/// Commands issued in each outage of the side-by-side script.
const OUTAGE_COMMANDS: usize = 8;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The shared backoff, with dials that time out after 1 s.
fn policy(wait_limit: Duration) -> ReconnectPolicy {
    redis_books::policy(Duration::from_secs(1), wait_limit)
}

fn response_timeout(after: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new().set_response_timeout(Some(after))
}

fn client_for(server: &RedisServer, make: MakeRedis, policy: ReconnectPolicy) -> RedisClient {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(make)
        .multiplexed(server.url())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// The chaos run
// ---------------------------------------------------------------------------

/// The chaos run: 16 tasks of `INCR` and `GET` through one client
/// while the server is killed with `kill -9` and restarted on the same port
/// ten times. The books reconcile: the server's final count lies between
/// the acknowledged `INCR`s S and S + A (A: those that failed with a
/// transport error), so no acknowledged `INCR` was lost and none ran twice
/// by our doing. No request took longer than the longest outage plus 1 s
/// (none waited on a dead connection), none failed with `Closed`, and every
/// caller's last request succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_ten_times_under_sixteen_tasks() {
    let mut server = RedisServer::start_durable().await;
    let wait_limit = Duration::from_secs(2);
    let reply_timeout = Duration::from_secs(5);
    let policy = policy(wait_limit);
    let client = client_for(
        &server,
        MakeRedis::with_config(response_timeout(reply_timeout)),
        policy,
    );

    let callers = Callers::spawn(&client, Commands::IncrAndGet);
    let mut downtimes = Vec::new();
    for kill in 0..KILLS {
        callers
            .answers(
                BETWEEN_KILLS,
                &format!("{BETWEEN_KILLS} answers before kill {kill}"),
            )
            .await;
        downtimes.push(server.kill_and_restart().await);
    }
    callers
        .answers(2 * BETWEEN_KILLS, "answers after the last restart")
        .await;
    let (books, lasts) = callers.stop().await;
    let count = server.counter("counter").await;
    let stats = client.stats();
    let (s, a) = (books.incr_ok as i64, books.incr_ambiguous as i64);
    let longest_down = downtimes.iter().max().copied().unwrap_or_default();
    // The longest any request may take: no request waits on a dead
    // connection. One in flight at a kill fails as soon as its socket
    // closes; one issued in an outage waits for the redial, at most the
    // outage (or the wait limit, then fails fast), plus one backoff step
    // (100 ms) after the server is back, one handshake and one round trip
    // (with an fsync). The rest of the second is margin for a loaded 2-core
    // machine. A request that hangs instead waits out the 5 s reply timeout.
    let bound = longest_down.min(wait_limit) + Duration::from_secs(1);
    assert!(reply_timeout > bound, "a hang must show");
    println!(
        "chaos: {KILLS} kills (longest down {longest_down:?}); books: S={s} A={a} server={count}; \
         {books:?}; {stats:?}"
    );

    assert!(books.violations.is_empty(), "{:#?}", books.violations);
    books.tally.assert_sane();
    assert!(count >= s, "an acknowledged INCR was lost: {count} < S={s}");
    assert!(
        count <= s + a,
        "an INCR ran twice, or one that never reached the server ran: {count} > S+A={}",
        s + a
    );
    assert!(
        books.slowest <= bound,
        "a request took {:?} (ending {:?}), more than the longest outage \
         ({longest_down:?}) allows ({bound:?})",
        books.slowest,
        books.slowest_outcome
    );
    assert!(
        lasts.iter().all(|last| *last == Some(Outcome::Ok)),
        "every caller's last request succeeded: {lasts:?}"
    );
    assert!(
        stats.drops >= KILLS as u64,
        "each kill was noticed: {stats:?}"
    );
    assert_eq!(server.starts(), 1 + KILLS as u32);
    // Outages far below the wait limit are ridden through: nothing fails fast.
    if longest_down < wait_limit / 2 {
        assert_eq!(books.tally.unavailable, 0, "{books:?}");
    }
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
    server.kill().await;
}

// ---------------------------------------------------------------------------
// A server that hangs up mid-traffic
// ---------------------------------------------------------------------------

/// Connections the hang-up test wears out.
const HANG_UPS: usize = 1500;
/// `PING`s the fake server answers on a connection before it hangs up.
const ANSWERS_PER_CONNECTION: usize = 100;
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// A fake redis server on `127.0.0.1`: on each connection it answers the
/// first `ANSWERS_PER_CONNECTION` `PING`s, then closes the socket with
/// whatever else was sent unread, as the kernel does for a killed server.
async fn hanging_up_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                let (mut unanswered, mut answered) = (0, 0);
                while answered < ANSWERS_PER_CONNECTION {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => unanswered += n,
                    }
                    let mut replies = Vec::new();
                    while unanswered >= PING.len() && answered < ANSWERS_PER_CONNECTION {
                        unanswered -= PING.len();
                        answered += 1;
                        replies.extend_from_slice(b"+PONG\r\n");
                    }
                    if socket.write_all(&replies).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `PING`s on `connection` until one does not succeed or the connection is
/// not ready; returns how many were answered, and how the last one failed.
async fn ping_until_it_fails(
    mut connection: RedisConnection,
) -> (usize, Option<Result<Value, BoxError>>) {
    let mut answered = 0;
    loop {
        if ServiceExt::<Cmd>::ready(&mut connection).await.is_err() {
            return (answered, None);
        }
        let result = Service::<Cmd>::call(&mut connection, redis::cmd("PING")).await;
        if result.is_err() {
            return (answered, Some(result));
        }
        answered += 1;
    }
}

/// No command waits out its reply timeout on a connection whose server
/// hangs up mid-traffic (project issue 11: redis-rs alone strands a command
/// on about one such connection in 300 to 700, for the whole timeout). On
/// each of 1500 connections, 16 callers `PING` until the server hangs up:
/// every `PING` is answered, fails at once with a transport error (not a
/// timeout), or comes back `NotSent`; the server answered no more than it
/// said.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_command_waits_out_its_reply_timeout_when_the_server_hangs_up() {
    let addr = hanging_up_server().await;
    // No client name is set: the handshake sends nothing.
    let info: ConnectionInfo = format!("redis://{addr}/")
        .into_connection_info()
        .expect("a valid URL")
        .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name());
    let make = MakeRedis::with_config(response_timeout(Duration::from_secs(5)));
    let mut endings = Vec::<Outcome>::new();
    for round in 0..HANG_UPS {
        let connection = deadline("a connection", make.clone().oneshot(info.clone()))
            .await
            .expect("connected");
        let callers: Vec<_> = (0..TASKS)
            .map(|_| tokio::spawn(ping_until_it_fails(connection.clone())))
            .collect();
        drop(connection);
        let mut answered = 0;
        for caller in deadline("callers", futures::future::try_join_all(callers))
            .await
            .expect("no caller panicked")
        {
            answered += caller.0;
            let Some(result) = caller.1 else { continue };
            let error = result.as_ref().expect_err("a failure");
            let kind = tower_redial::classify::io_error_kind(&**error);
            assert_ne!(
                kind,
                Some(io::ErrorKind::TimedOut),
                "round {round}: a PING waited out its reply timeout: {error:?}"
            );
            let ending = outcome(&result);
            assert!(
                matches!(ending, Outcome::Ambiguous | Outcome::NotSent),
                "round {round}: {result:?}"
            );
            endings.push(ending);
        }
        assert!(answered <= ANSWERS_PER_CONNECTION, "round {round}");
    }
    println!(
        "{HANG_UPS} hang-ups: {} PINGs failed ambiguously, {} came back unsent",
        count_of(&endings, Outcome::Ambiguous),
        count_of(&endings, Outcome::NotSent)
    );
}

fn count_of(outcomes: &[Outcome], kind: Outcome) -> usize {
    outcomes.iter().filter(|o| **o == kind).count()
}

// ---------------------------------------------------------------------------
// Side by side with redis-rs's ConnectionManager
// ---------------------------------------------------------------------------

/// One of the two clients under the same script.
#[derive(Clone)]
struct Subject {
    client: Kind,
    /// The distinct errors seen, as displayed.
    errors: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
enum Kind {
    /// Ours, with the connection it last made, to see when it noticed.
    Ours(RedisClient, Arc<Mutex<Option<RedisConnection>>>),
    Manager(ConnectionManager),
}

impl Subject {
    fn noting_errors(self, errors: Arc<Mutex<Vec<String>>>) -> Self {
        Self { errors, ..self }
    }

    async fn send(&self, cmd: Cmd) -> Result<Value, BoxError> {
        let result = match &self.client {
            Kind::Ours(client, _) => client.clone().oneshot(cmd).await,
            Kind::Manager(manager) => {
                let mut manager = manager.clone();
                cmd.query_async::<Value>(&mut manager)
                    .await
                    .map_err(Into::into)
            }
        };
        if let Err(error) = &result {
            let shown = match error.downcast_ref::<Unavailable>() {
                Some(unavailable) => match std::error::Error::source(unavailable) {
                    Some(source) => format!("Unavailable, last dial: {source}"),
                    None => "Unavailable".to_string(),
                },
                None => format!("{:?}: {error}", outcome(&result)),
            };
            let mut errors = lock(&self.errors);
            if !errors.contains(&shown) {
                errors.push(shown);
            }
        }
        result
    }

    /// Once the server is dead: waits until our connection has seen its
    /// socket close. (`ConnectionManager` offers no such signal; the script
    /// then pauses 100 ms for both.)
    async fn settle(&self) {
        if let Kind::Ours(_, latest) = &self.client {
            deadline("our connection to see its socket close", async {
                while !lock(latest).as_ref().is_some_and(|c| c.is_closed()) {
                    sleep(ms(2)).await;
                }
            })
            .await;
        }
        sleep(ms(100)).await;
    }
}

/// What the script observed of one client.
#[derive(Debug)]
struct Observed {
    in_flight: Outcome,
    busy: Vec<(Outcome, Duration)>,
    idle: Vec<(Outcome, Duration)>,
    long: Vec<(Outcome, Duration)>,
    acked: i64,
    ambiguous: i64,
    count: i64,
    /// The distinct errors seen, as displayed.
    errors: Vec<String>,
}

/// Issues `OUTAGE_COMMANDS` `INCR`s at once while the server is down, keeps
/// it down for `down`, restarts it, and returns how each ended and when.
async fn outage(
    subject: &Subject,
    server: &mut RedisServer,
    down: Duration,
) -> Vec<(Outcome, Duration)> {
    let commands: Vec<JoinHandle<(Outcome, Duration)>> = (0..OUTAGE_COMMANDS)
        .map(|_| {
            let subject = subject.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let result = subject.send(incr()).await;
                (outcome(&result), sent.elapsed())
            })
        })
        .collect();
    sleep(down).await;
    server.restart().await;
    deadline("outage commands", futures::future::try_join_all(commands))
        .await
        .expect("no command task panicked")
}

/// The scripted restart, the same for both clients.
async fn script(subject: Subject, server: &mut RedisServer, wait_limit: Duration) -> Observed {
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let subject = subject.noting_errors(errors.clone());
    let mut results = Vec::new();
    let mut record = |outcome: Outcome| results.push(outcome);
    let result = subject.send(incr()).await;
    assert_eq!(outcome(&result), Outcome::Ok, "{result:?}");
    record(Outcome::Ok);

    // 1. An INCR in flight when the server dies: held (never run) by CLIENT
    //    PAUSE, then the server is killed.
    assert_eq!(
        server.raw(&["CLIENT", "PAUSE", "60000", "WRITE"]).await,
        "+OK\r\n"
    );
    let in_flight = tokio::spawn({
        let subject = subject.clone();
        async move { subject.send(incr()).await }
    });
    server.wait_for_blocked_clients(1).await;
    server.kill().await;
    let result = deadline("the in-flight INCR", in_flight)
        .await
        .expect("command task");
    let in_flight = outcome(&result);
    record(in_flight);
    // Commands issued once the in-flight one failed, while still down.
    let busy = outage(&subject, server, ms(300)).await;
    busy.iter().for_each(|(o, _)| record(*o));

    // 2. The server dies while the connection is idle.
    let result = deadline("a request after the restart", subject.send(incr())).await;
    assert_eq!(outcome(&result), Outcome::Ok, "{result:?}");
    record(Outcome::Ok);
    server.kill().await;
    subject.settle().await;
    let idle = outage(&subject, server, ms(300)).await;
    idle.iter().for_each(|(o, _)| record(*o));

    // 3. An idle connection's server stays down past our wait limit.
    let recovered = deadline("a request after the restart", async {
        loop {
            let result = subject.send(incr()).await;
            if outcome(&result) == Outcome::Ok {
                return result;
            }
            sleep(ms(20)).await;
        }
    })
    .await;
    assert_eq!(outcome(&recovered), Outcome::Ok);
    record(Outcome::Ok);
    server.kill().await;
    subject.settle().await;
    let long = outage(&subject, server, wait_limit * 5 / 2).await;
    long.iter().for_each(|(o, _)| record(*o));

    let count = server.counter("counter").await;
    let acked = results.iter().filter(|o| **o == Outcome::Ok).count() as i64;
    let ambiguous = results.iter().filter(|o| **o == Outcome::Ambiguous).count() as i64;
    let errors = lock(&errors).clone();
    Observed {
        in_flight,
        busy,
        idle,
        long,
        acked,
        ambiguous,
        count,
        errors,
    }
}

/// Sums up commands' outcomes for the table: "8 ok after 0.31-0.33 s".
fn describe(outcomes: &[(Outcome, Duration)]) -> String {
    let mut seen = Vec::new();
    for (kind, _) in outcomes {
        if !seen.contains(kind) {
            seen.push(*kind);
        }
    }
    seen.iter()
        .map(|kind| {
            let took: Vec<Duration> = outcomes
                .iter()
                .filter(|(o, _)| o == kind)
                .map(|(_, d)| *d)
                .collect();
            let (min, max) = (took.iter().min().unwrap(), took.iter().max().unwrap());
            format!(
                "{} {kind:?} after {:.2}-{:.2} s",
                took.len(),
                min.as_secs_f64(),
                max.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn count(outcomes: &[(Outcome, Duration)], kind: Outcome) -> usize {
    outcomes.iter().filter(|(o, _)| *o == kind).count()
}

/// The same scripted restart, run once against our `RedisClient` and once
/// against redis-rs's `ConnectionManager`: what each does with the command
/// in flight, with commands issued during a short outage (after a command
/// failed, and on an idle connection), and during an outage longer than our
/// wait limit. Asserts what is observed consistently (the module docs'
/// table): both fail the in-flight `INCR` with an IO error and never re-send
/// it; ours holds every command issued during a short outage and answers it,
/// and fails them all fast with `Unavailable` past the wait limit;
/// `ConnectionManager` fails at least the first command that reaches its
/// dead idle connection. Both keep the books.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn side_by_side_with_connection_manager() {
    let wait_limit = Duration::from_secs(1);
    let reply_timeout = Duration::from_secs(10);

    let mut ours_server = RedisServer::start_durable().await;
    let latest = Arc::new(Mutex::new(None::<RedisConnection>));
    let make = ServiceExt::<String>::map_response(
        MakeRedis::with_config(response_timeout(reply_timeout)),
        {
            let latest = latest.clone();
            move |connection: RedisConnection| {
                *lock(&latest) = Some(connection.clone());
                connection
            }
        },
    );
    let client: RedisClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(wait_limit)))
        .service(make)
        .client(ours_server.url());
    let ours = script(
        Subject {
            client: Kind::Ours(client.clone(), latest),
            errors: Arc::default(),
        },
        &mut ours_server,
        wait_limit,
    )
    .await;

    let mut manager_server = RedisServer::start_durable().await;
    let config = ConnectionManagerConfig::new().set_response_timeout(Some(reply_timeout));
    let manager = redis::Client::open(manager_server.url())
        .unwrap()
        .get_connection_manager_with_config(config)
        .await
        .expect("a connection manager");
    let manager = Subject {
        client: Kind::Manager(manager),
        errors: Arc::default(),
    };
    let theirs = script(manager, &mut manager_server, wait_limit).await;

    println!("\n{:<58} | {:<44} | ConnectionManager", "", "ours");
    let rows = [
        (
            "the INCR in flight".to_string(),
            describe(&[(ours.in_flight, Duration::ZERO)]),
            describe(&[(theirs.in_flight, Duration::ZERO)]),
        ),
        (
            format!("{OUTAGE_COMMANDS} INCRs in a 0.3 s outage after the in-flight failed"),
            describe(&ours.busy),
            describe(&theirs.busy),
        ),
        (
            format!("{OUTAGE_COMMANDS} INCRs in a 0.3 s outage of an idle connection"),
            describe(&ours.idle),
            describe(&theirs.idle),
        ),
        (
            format!(
                "{OUTAGE_COMMANDS} INCRs in a {:.1} s outage (wait limit {:.0} s)",
                (wait_limit * 5 / 2).as_secs_f64(),
                wait_limit.as_secs_f64()
            ),
            describe(&ours.long),
            describe(&theirs.long),
        ),
        (
            "books: acked <= server count <= acked + ambiguous".to_string(),
            format!(
                "{} <= {} <= {}",
                ours.acked,
                ours.count,
                ours.acked + ours.ambiguous
            ),
            format!(
                "{} <= {} <= {}",
                theirs.acked,
                theirs.count,
                theirs.acked + theirs.ambiguous
            ),
        ),
    ];
    for (what, a, b) in rows {
        println!("{what:<58} | {a:<44} | {b}");
    }
    println!("errors seen by ours: {:?}", ours.errors);
    println!("errors seen by ConnectionManager: {:?}", theirs.errors);
    println!("ours: {:?}\n", client.stats());

    for (name, observed) in [("ours", &ours), ("ConnectionManager", &theirs)] {
        assert_eq!(
            observed.in_flight,
            Outcome::Ambiguous,
            "{name}: the in-flight INCR fails with an IO error"
        );
        assert!(
            (observed.acked..=observed.acked + observed.ambiguous).contains(&observed.count),
            "{name}: books {observed:?}"
        );
    }
    // Ours: the in-flight INCR never ran and was not re-sent; nothing else
    // failed ambiguously, so the count is exactly what was acknowledged.
    assert_eq!(ours.ambiguous, 1, "{ours:?}");
    assert_eq!(ours.count, ours.acked, "{ours:?}");
    assert_eq!(count(&ours.busy, Outcome::Ok), OUTAGE_COMMANDS, "{ours:?}");
    assert_eq!(count(&ours.idle, Outcome::Ok), OUTAGE_COMMANDS, "{ours:?}");
    assert_eq!(
        count(&ours.long, Outcome::Unavailable),
        OUTAGE_COMMANDS,
        "{ours:?}"
    );
    // They waited (for about the wait limit), rather than failing at once.
    assert!(
        ours.long.iter().all(|(_, took)| *took >= wait_limit / 2),
        "{ours:?}"
    );
    // ConnectionManager finds its idle connection dead only by failing a
    // command on it.
    assert!(count(&theirs.idle, Outcome::Ambiguous) >= 1, "{theirs:?}");
    assert!(count(&theirs.long, Outcome::Ambiguous) >= 1, "{theirs:?}");
    ours_server.kill().await;
    manager_server.kill().await;
}

// ---------------------------------------------------------------------------
// An idle connection's death
// ---------------------------------------------------------------------------

/// A `kill -9` and restart of the server under an idle connection, with no
/// command sent: the client notices, counts the drop, redials and is ready
/// again, connected to the new server; the next command then goes out once,
/// on that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_death_is_noticed_without_traffic() {
    let mut server = RedisServer::start().await;
    let client = client_for(&server, MakeRedis::new(), policy(Duration::from_secs(10)));
    let phases = record_phases(client.state());

    let reply = deadline("the first command", client.clone().oneshot(incr()))
        .await
        .expect("the first command");
    assert_eq!(reply, Value::Int(1));
    let mut state = client.state();
    deadline(
        "ready after a command",
        state.wait_for(|s| s.phase() == Phase::Ready),
    )
    .await
    .expect("the client is alive");
    let before = client.stats();
    assert_eq!((before.dials, before.drops), (1, 0), "{before:?}");

    // `kill -9`, and start again on the same port; no command.
    let restarted = Instant::now();
    let (down, ready_at) = tokio::join!(
        server.kill_and_restart(),
        ready_after_a_drop(&client, &phases, HANG_GUARD),
    );
    let took = ready_at - restarted;
    let stats = client.stats();
    println!(
        "ready {took:?} after the kill (server down for {down:?}); {stats:?}; states seen: {:#?}",
        lock(&phases)
    );
    assert_one_drop_and_one_redial(&stats);
    // The new server has the connection (and the one asking), made while
    // nothing was sent.
    deadline("the new server to count the connection", async {
        while server.info_field("connected_clients").await.as_deref() != Some("2") {
            sleep(ms(10)).await;
        }
    })
    .await;

    let reply = deadline(
        "the command after the restart",
        client.clone().oneshot(incr()),
    )
    .await
    .expect("the command after the restart succeeds");
    assert_eq!(reply, Value::Int(1), "answered by the new server");
    let after = client.stats();
    assert_eq!(after.retries, 0, "not a re-send: {after:?}");
    assert_eq!(after, stats, "sent once, on the connection made while idle");
    println!("states seen by the end: {:#?}", lock(&phases));
    server.kill().await;
}

// ---------------------------------------------------------------------------
// The example's path, and the connection's contract
// ---------------------------------------------------------------------------

/// The example's path, with the defaults: commands flow; a `GET` issued
/// while the server is down (after a `kill -9`) waits and is answered by
/// the restarted server on the same port (which, without persistence, has
/// forgotten the key); the client made one new connection and nothing
/// failed fast.
#[tokio::test]
async fn restart_mid_run_with_the_defaults() {
    let mut server = RedisServer::start().await;
    let client: RedisClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(ReconnectPolicy::default()))
        .service(MakeRedis::new())
        .client(server.url());

    let set = Cmd::set("greeting", "hello");
    assert_eq!(client.clone().oneshot(set).await.unwrap(), Value::Okay);
    let reply = client.clone().oneshot(Cmd::get("greeting")).await.unwrap();
    assert_eq!(reply, Value::BulkString(b"hello".to_vec()));

    server.kill().await;
    let get = tokio::spawn(client.clone().oneshot(Cmd::get("greeting")));
    let mut state = client.state();
    deadline(
        "the client to notice the outage",
        state.wait_for(|s| s.phase() != Phase::Ready),
    )
    .await
    .expect("the client is alive");
    sleep(ms(200)).await;
    assert!(!get.is_finished(), "the GET waits for the server");
    server.restart().await;

    let reply = deadline("the GET issued while down", get)
        .await
        .expect("command task")
        .expect("answered by the restarted server");
    assert_eq!(reply, Value::Nil, "no persistence: the key is gone");
    let visits = client
        .clone()
        .oneshot(Cmd::incr("visits", 1))
        .await
        .unwrap();
    assert_eq!(visits, Value::Int(1));
    let stats = client.stats();
    assert_eq!(
        (
            stats.dials - stats.dial_failures,
            stats.drops,
            stats.fail_fast
        ),
        (2, 1, 0),
        "two connections made, one lost, nothing failed fast: {stats:?}"
    );
    server.kill().await;
}

/// A connection whose server died is known closed: `poll_ready` fails with
/// the socket's fate, and a command called on it anyway comes back as
/// `NotSent`, holding the command, unwritten.
#[tokio::test]
async fn closed_connection_hands_commands_back_unsent() {
    let mut server = RedisServer::start().await;
    let mut connection = MakeRedis::new().oneshot(server.url()).await.unwrap();
    let ready = ServiceExt::<Cmd>::ready(&mut connection).await.unwrap();
    let reply = Service::<Cmd>::call(ready, redis::cmd("PING"));
    assert_eq!(reply.await.unwrap(), Value::SimpleString("PONG".into()));
    assert!(!connection.is_closed());

    server.kill().await;
    deadline("the connection to see its socket close", async {
        while !connection.is_closed() {
            sleep(ms(2)).await;
        }
    })
    .await;
    let error = ServiceExt::<Cmd>::ready(&mut connection)
        .await
        .expect_err("a closed connection is not ready");
    let kind = tower_redial::classify::io_error_kind(&*error);
    assert!(
        matches!(
            kind,
            Some(io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset)
        ),
        "{error:?}"
    );

    let command = incr();
    let mut error = Service::<Cmd>::call(&mut connection, command.clone())
        .await
        .expect_err("not sent");
    let not_sent = error.downcast_mut::<NotSent>().expect("NotSent");
    let handed_back = not_sent.take_request::<Cmd>().expect("the command");
    assert_eq!(
        handed_back.get_packed_command(),
        command.get_packed_command()
    );
}

/// An error reply is the server's answer, not a dead connection: it comes
/// back as a `RedisError` and the client keeps its connection. Pipelines
/// go through a `Client<Pipeline, Value>` the same way.
#[tokio::test]
async fn error_replies_keep_the_connection_and_pipelines_work() {
    let mut server = RedisServer::start().await;
    let client = client_for(&server, MakeRedis::new(), policy(Duration::from_secs(1)));
    client
        .clone()
        .oneshot(Cmd::set("word", "hello"))
        .await
        .unwrap();
    let error = client
        .clone()
        .oneshot(Cmd::incr("word", 1))
        .await
        .unwrap_err();
    let redis = error.downcast_ref::<RedisError>().expect("a RedisError");
    assert_eq!(redis.code(), Some("ERR"), "{redis:?}");
    assert!(!tower_redial::classify::is_transport_error(&*error));
    let reply = client.clone().oneshot(Cmd::get("word")).await.unwrap();
    assert_eq!(reply, Value::BulkString(b"hello".to_vec()));
    let stats = client.stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");

    let pipelines: Client<Pipeline, Value> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(Duration::from_secs(1))))
        .service(MakeRedis::new())
        .client(server.url());
    let mut pipe = redis::pipe();
    pipe.set("n", 1).ignore().incr("n", 41).get("n");
    let reply = pipelines.oneshot(pipe).await.unwrap();
    assert_eq!(
        reply,
        Value::Array(vec![Value::Int(42), Value::BulkString(b"42".to_vec())])
    );
    server.kill().await;
}

/// A password in the URL authenticates every dial; a wrong one fails the
/// dials, so requests fail fast at the wait limit, and the password shows
/// up in no error and no `Debug` form.
#[tokio::test]
async fn password_in_the_url_authenticates_and_is_never_printed() {
    let mut server = RedisServer::start().await;
    assert_eq!(
        server
            .raw(&["CONFIG", "SET", "requirepass", "s3cret-pw"])
            .await,
        "+OK\r\n"
    );
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}/", server.port());
    let client: RedisClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(ms(300))))
        .service(MakeRedis::new())
        .client(url);
    let reply = client.clone().oneshot(Cmd::incr("n", 1)).await.unwrap();
    assert_eq!(reply, Value::Int(1));

    let url = format!("redis://:wr0ng-pw@127.0.0.1:{}/", server.port());
    let wrong: RedisClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(ms(300))))
        .service(MakeRedis::new())
        .client(url);
    let error = deadline("the wrong password", wrong.clone().oneshot(Cmd::get("n")))
        .await
        .unwrap_err();
    assert!(error.is::<Unavailable>(), "{error:?}");
    let cause = redis_error(&*error).expect("the dial's RedisError");
    assert_eq!(
        cause.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "{cause:?}"
    );
    let mut printed = format!("{error:?} {wrong:?} {:?}", wrong.state().borrow());
    for e in std::iter::successors(Some(&*error as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    }) {
        printed.push_str(&e.to_string());
    }
    assert!(!printed.contains("wr0ng-pw"), "{printed}");
    server.kill().await;
}
