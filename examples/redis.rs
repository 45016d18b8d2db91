//! Redis through `tower-redial`: redis-rs's own commands, on a connection
//! that rides through a `kill -9` of its server.
//!
//! The example starts its own `redis-server` on a free `127.0.0.1` port,
//! without persistence, and talks to it through a [`RedisManager`], the
//! drop-in for redis-rs's `ConnectionManager`: redis-rs's multiplexed
//! connection ([`MakeRedis`]) wrapped by [`ReconnectLayer`], on which
//! `AsyncCommands` (`con.incr("visits", 1)`) and pipelines run as they do on
//! a `ConnectionManager`. Then it kills the server with `SIGKILL` and
//! restarts it on the same port: the command in flight fails and is not
//! sent again (it may have run), while commands issued during the outage
//! wait in the client's queue and are answered by the restarted server.
//! Last, it keeps the server down for longer than the wait limit, and a
//! command fails fast with `Unavailable` instead of hanging. The server is
//! killed when the example exits, also on a panic.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example redis --features redis
//! ```
//!
//! It takes about 3 seconds and needs `redis-server` on the `PATH`
//! (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`).

use support::redis_server;

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use redis::{AsyncCommands, RedisResult};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tower::ServiceBuilder;
use tower_redial::error::Unavailable;
use tower_redial::redis::{client_error, MakeRedis, RedisManager};
use tower_redial::state::{Phase, Snapshot};
use tower_redial::{Backoff, BoxError, Jitter, ReconnectLayer, ReconnectPolicy};

use redis_server::RedisServer;

/// How long commands wait for a connection before failing fast.
const WAIT_LIMIT: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The server: killed when `server` is dropped, however `main` ends.
    let mut server = RedisServer::try_start(false).await?;
    let start = Instant::now();

    let policy = ReconnectPolicy::builder()
        .backoff(
            Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_millis(400))
                .jitter(Jitter::None),
        )
        .connect_timeout(Duration::from_secs(1))
        .wait_limit(WAIT_LIMIT)
        .build()?;
    // Where a redis-rs user writes
    // `redis::Client::open(url)?.get_connection_manager().await?`:
    let make = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakeRedis::new());
    let mut con = RedisManager::new(&make, server.url())?;

    println!("tower-redial + redis: redis-rs's commands ride through a kill -9 of the server\n");
    println!(
        "  server  redis-server on {} (no persistence)",
        server.addr()
    );
    println!("  client  RedisManager: redial at once, then back off from 50 ms;");
    println!(
        "          commands wait for a connection for up to {} s, then fail fast\n",
        WAIT_LIMIT.as_secs()
    );
    tokio::spawn(watch_state(con.client().state(), start));

    // 1. Commands flow.
    send(
        start,
        "SET greeting hello",
        con.set::<_, _, ()>("greeting", "hello"),
    )
    .await;
    for _ in 0..3 {
        send(start, "INCR visits", con.incr::<_, _, i64>("visits", 1)).await;
    }
    let mut pipe = redis::pipe();
    pipe.atomic().incr("visits", 1).get("greeting");
    let transaction = pipe.query_async::<(i64, String)>(&mut con);
    send(start, "MULTI INCR GET EXEC", transaction).await;

    // 2. An INCR in flight when the server dies: the server holds it (a
    //    paused write), then is killed with kill -9.
    let mut pause = redis::cmd("CLIENT");
    pause.arg(&["PAUSE", "10000", "WRITE"]);
    send(start, "CLIENT PAUSE", pause.query_async::<()>(&mut con)).await;
    let in_flight = tokio::spawn({
        let mut con = con.clone();
        async move { con.incr::<_, _, i64>("visits", 1).await }
    });
    server.wait_for_blocked_clients(1).await;
    step(start, "INCR visits sent; the server holds it");
    step(start, "kill -9 redis-server");
    server.kill().await;
    let result = in_flight.await?;
    println!(
        "  {}  ← {:<20} {}: it may have run, so it is not re-sent",
        stamp(start),
        "INCR visits",
        show(&result)
    );

    // 3. Commands issued while the server is down wait; it restarts on the
    //    same port and answers them.
    step(
        start,
        "3 commands issued while the server is down: they wait",
    );
    let get = waiting(start, "GET greeting", {
        let mut con = con.clone();
        async move { con.get::<_, Option<String>>("greeting").await }
    });
    let incr = waiting(start, "INCR visits", {
        let mut con = con.clone();
        async move { con.incr::<_, _, i64>("visits", 1).await }
    });
    let ping = waiting(start, "PING", {
        let mut con = con.clone();
        async move { redis::cmd("PING").query_async::<String>(&mut con).await }
    });
    sleep(Duration::from_millis(300)).await;
    server.restart().await;
    step(start, "redis-server restarted on the same port");
    for task in [get, incr, ping] {
        println!("{}", task.await?);
    }
    println!("             (the restarted server starts empty: no persistence)");

    // 4. Down for longer than the wait limit: fail fast, then recover.
    step(start, "kill -9 redis-server, and keep it down for 2 s");
    server.kill().await;
    send(
        start,
        "GET greeting",
        con.get::<_, Option<String>>("greeting"),
    )
    .await;
    sleep(Duration::from_secs(2).saturating_sub(WAIT_LIMIT)).await;
    server.restart().await;
    step(start, "redis-server restarted on the same port");
    // Commands fail fast until the client's next dial gets through.
    let mut failed_fast = 0;
    let sent = Instant::now();
    let result = loop {
        let result = con.incr::<_, _, i64>("visits", 1).await;
        match &result {
            Err(error) if is_unavailable(error) => failed_fast += 1,
            _ => break result,
        }
        sleep(Duration::from_millis(50)).await;
    };
    println!(
        "  {}  ▶ {:<20} → {} (after {} ms; {failed_fast} tries failed fast until the next dial)",
        stamp(start),
        "INCR visits",
        show(&result),
        sent.elapsed().as_millis()
    );

    let stats = con.client().stats();
    println!(
        "\n  dials {} (refused {}), connections lost {}, failed fast {}, re-sent {}",
        stats.dials, stats.dial_failures, stats.drops, stats.fail_fast, stats.retries
    );
    println!(
        "\n  The command in flight when the server died failed, and was not sent again: it may\n  \
         have run, and an INCR must not run twice. Commands issued while the server was down\n  \
         waited in the client's queue, and the restarted server answered them. Down past the\n  \
         {} s wait limit, a command failed fast instead of hanging.",
        WAIT_LIMIT.as_secs()
    );
    server.kill().await;
    Ok(())
}

/// Awaits a command and prints its reply, and how long it took when it
/// waited.
async fn send<T: Debug>(
    start: Instant,
    shown: &str,
    command: impl Future<Output = RedisResult<T>>,
) {
    let sent = Instant::now();
    let result = command.await;
    let took = sent.elapsed();
    let waited = if took >= Duration::from_millis(50) && result.is_ok() {
        format!(" (after {} ms)", took.as_millis())
    } else {
        String::new()
    };
    println!(
        "  {}  ▶ {shown:<20} → {}{waited}",
        stamp(start),
        show(&result)
    );
}

/// Spawns a command issued while the server is down; its task returns the
/// line to print once it is answered.
fn waiting<T: Debug + Send + 'static>(
    start: Instant,
    shown: &'static str,
    command: impl Future<Output = RedisResult<T>> + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let sent = Instant::now();
        let result = command.await;
        format!(
            "  {}  ← {shown:<20} {} (waited {} ms)",
            stamp(start),
            show(&result),
            sent.elapsed().as_millis()
        )
    })
}

/// Whether the command failed fast: the client's `Unavailable`, inside the
/// `RedisError`.
fn is_unavailable(error: &redis::RedisError) -> bool {
    client_error(error).is_some_and(|e| e.is::<Unavailable>())
}

/// Prints the client's state as it changes.
async fn watch_state(mut state: watch::Receiver<Snapshot>, start: Instant) {
    let mut previous = Phase::Idle;
    loop {
        let snapshot = state.borrow_and_update().clone();
        let phase = snapshot.phase();
        let text = match (previous, phase) {
            (Phase::Ready, Phase::Connecting | Phase::Backoff) => {
                Some("· connection lost; redialing")
            }
            (Phase::Connecting | Phase::Backoff | Phase::FailFast, Phase::Ready) => {
                Some("· connected")
            }
            (Phase::Connecting | Phase::Backoff, Phase::FailFast) => {
                Some("· down past the wait limit: commands fail fast; still redialing")
            }
            _ => None,
        };
        if let Some(text) = text {
            let at = snapshot.since().saturating_duration_since(start);
            println!("  +{:.3}s    {text}", at.as_secs_f64());
        }
        previous = phase;
        if state.changed().await.is_err() {
            return;
        }
    }
}

fn step(start: Instant, what: &str) {
    println!("  {}  ▶ {what}", stamp(start));
}

fn stamp(start: Instant) -> String {
    format!("+{:.3}s", start.elapsed().as_secs_f64())
}

/// A reply, or the error, in a few words.
fn show<T: Debug>(result: &RedisResult<T>) -> String {
    match result {
        Ok(value) => format!("{value:?}"),
        Err(error) => match client_error(error).and_then(|e| e.downcast_ref::<Unavailable>()) {
            Some(unavailable) => format!(
                "failed fast: Unavailable after {} ms ({} dials refused)",
                unavailable.down_for().as_millis(),
                unavailable.attempts()
            ),
            None => format!("error: {error}"),
        },
    }
}
