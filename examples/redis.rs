//! Redis through `tower-redial`: a client that rides through a `kill -9` of
//! its server.
//!
//! The example starts its own `redis-server` on a free `127.0.0.1` port,
//! without persistence, and talks to it through a [`RedisClient`]: redis-rs's
//! multiplexed connection ([`MakeRedis`]) wrapped by [`ReconnectLayer`]. Then
//! it kills the server with `SIGKILL` and restarts it on the same port: the
//! command in flight fails and is not sent again (it may have run), while
//! commands issued during the outage wait in the client's queue and are
//! answered by the restarted server. Last, it keeps the server down for
//! longer than the wait limit, and a command fails fast with `Unavailable`
//! instead of hanging. The server is killed when the example exits, also on
//! a panic.
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

use std::time::Duration;

use redis::{Cmd, Value};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::Unavailable;
use tower_redial::redis::{MakeRedis, RedisClient};
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
    let client: RedisClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakeRedis::new())
        .multiplexed(server.url());

    println!("tower-redial + redis: a client that rides through a kill -9 of its server\n");
    println!(
        "  server  redis-server on {} (no persistence)",
        server.addr()
    );
    println!("  client  MakeRedis under ReconnectLayer: redial at once, then back off from 50 ms;");
    println!(
        "          commands wait for a connection for up to {} s, then fail fast\n",
        WAIT_LIMIT.as_secs()
    );
    tokio::spawn(watch_state(client.state(), start));

    // 1. Commands flow.
    send(&client, start, command(&["SET", "greeting", "hello"])).await;
    for _ in 0..3 {
        send(&client, start, command(&["INCR", "visits"])).await;
    }

    // 2. An INCR in flight when the server dies: the server holds it (a
    //    paused write), then is killed with kill -9.
    send(
        &client,
        start,
        command(&["CLIENT", "PAUSE", "10000", "WRITE"]),
    )
    .await;
    let in_flight = tokio::spawn(client.clone().oneshot(command(&["INCR", "visits"])));
    server.wait_for_blocked_clients(1).await;
    step(start, "INCR visits sent; the server holds it");
    step(start, "kill -9 redis-server");
    server.kill().await;
    let result = in_flight.await?;
    println!(
        "  {}  ← {:<16} {}: it may have run, so it is not re-sent",
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
    let waiting: Vec<_> = [
        command(&["GET", "greeting"]),
        command(&["INCR", "visits"]),
        command(&["PING"]),
    ]
    .into_iter()
    .map(|cmd| {
        let client = client.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let shown = describe(&cmd);
            let result = client.oneshot(cmd).await;
            (shown, result, sent.elapsed())
        })
    })
    .collect();
    sleep(Duration::from_millis(300)).await;
    server.restart().await;
    step(start, "redis-server restarted on the same port");
    for task in waiting {
        let (cmd, result, waited) = task.await?;
        println!(
            "  {}  ← {cmd:<16} {} (waited {} ms)",
            stamp(start),
            show(&result),
            waited.as_millis()
        );
    }
    println!("             (the restarted server starts empty: no persistence)");

    // 4. Down for longer than the wait limit: fail fast, then recover.
    step(start, "kill -9 redis-server, and keep it down for 2 s");
    server.kill().await;
    send(&client, start, command(&["GET", "greeting"])).await;
    sleep(Duration::from_secs(2).saturating_sub(WAIT_LIMIT)).await;
    server.restart().await;
    step(start, "redis-server restarted on the same port");
    // Commands fail fast until the client's next dial gets through: each
    // one also moves the redialing along.
    let mut failed_fast = 0;
    let sent = Instant::now();
    let result = loop {
        let result = client.clone().oneshot(command(&["INCR", "visits"])).await;
        match &result {
            Err(error) if error.is::<Unavailable>() => failed_fast += 1,
            _ => break result,
        }
        sleep(Duration::from_millis(50)).await;
    };
    println!(
        "  {}  ▶ {:<16} → {} (after {} ms; {failed_fast} tries failed fast until the next dial)",
        stamp(start),
        "INCR visits",
        show(&result),
        sent.elapsed().as_millis()
    );

    let stats = client.stats();
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

/// A command from its words: `command(&["INCR", "visits"])`.
fn command(words: &[&str]) -> Cmd {
    let mut cmd = redis::cmd(words[0]);
    for word in &words[1..] {
        cmd.arg(*word);
    }
    cmd
}

/// Sends `cmd` and prints the reply, and how long it took when it waited.
async fn send(client: &RedisClient, start: Instant, cmd: Cmd) {
    let shown = describe(&cmd);
    let sent = Instant::now();
    let result = client.clone().oneshot(cmd).await;
    let took = sent.elapsed();
    let waited = if took >= Duration::from_millis(50) && result.is_ok() {
        format!(" (after {} ms)", took.as_millis())
    } else {
        String::new()
    };
    println!(
        "  {}  ▶ {shown:<16} → {}{waited}",
        stamp(start),
        show(&result)
    );
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

/// A command as typed: `INCR visits`.
fn describe(cmd: &Cmd) -> String {
    cmd.args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => "…".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A reply, or the error, in a few words.
fn show(result: &Result<Value, BoxError>) -> String {
    match result {
        Ok(Value::Okay) => "OK".to_string(),
        Ok(Value::SimpleString(text)) => text.clone(),
        Ok(Value::Nil) => "nil".to_string(),
        Ok(Value::Int(n)) => n.to_string(),
        Ok(Value::BulkString(bytes)) => format!("{:?}", String::from_utf8_lossy(bytes)),
        Ok(other) => format!("{other:?}"),
        Err(error) => match error.downcast_ref::<Unavailable>() {
            Some(unavailable) => format!(
                "failed fast: Unavailable after {} ms ({} dials refused)",
                unavailable.down_for().as_millis(),
                unavailable.attempts()
            ),
            None => format!("error: {error}"),
        },
    }
}
