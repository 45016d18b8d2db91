//! A guided tour of `tower-redial`: a client that rides through server
//! outages.
//!
//! The demo starts a small line-protocol server (a toy key/value store) on
//! `127.0.0.1`, and a pool of workers that send it `INCR`, `GET` and `SET`
//! requests through one [`Client`] built with [`ReconnectLayer`]. While they
//! work, the demo kills and restarts the server a few times: a quick restart,
//! a hang ended by a reset of every connection, a longer outage, and one
//! outage longer than the wait limit. A live timeline shows the client's state as it redials,
//! and a tally at the end shows what happened to every request, and checks
//! the server's books: no `INCR` ran twice.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! It takes about 12 seconds and needs nothing but a free port on
//! `127.0.0.1`.

use support::line;

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant, MissedTickBehavior};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::error::{Closed, NotSent, Unavailable};
use tower_redial::state::{Phase, Snapshot};
use tower_redial::{Backoff, BoxError, Client, Jitter, ReconnectLayer, ReconnectPolicy};

use line::LineServer;

/// Workers sharing the client (each holds a clone).
const WORKERS: usize = 8;
/// How often each worker sends a request.
const PACE: Duration = Duration::from_millis(40);
/// First backoff delay, doubled after each failed dial...
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// ...up to this cap.
const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// How long requests wait for a connection before failing fast.
const WAIT_LIMIT: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    let server = LineServer::start().await;

    let backoff = Backoff::exponential(BACKOFF_BASE, 2.0, BACKOFF_CAP).jitter(Jitter::Full);
    let policy = ReconnectPolicy::builder()
        .backoff(backoff.clone())
        .connect_timeout(Duration::from_secs(1))
        .wait_limit(WAIT_LIMIT)
        .build()?;
    let make = Handshake::new(TcpConnector::new(), line::LineConnection::handshake);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(make)
        .client(server.addr());

    println!(
        "tower-redial demo: a client that stays connected while its server keeps going down\n"
    );
    println!(
        "  The client, built with ReconnectLayer, redials with backoff, queues requests while"
    );
    println!("  it does, fails them fast past a wait limit, and never sends a request twice.\n");
    println!(
        "  server  a toy key/value store, line protocol, on {}",
        server.addr()
    );
    println!(
        "  load    {WORKERS} workers share one client; each sends INCR, GET or SET every {} ms",
        PACE.as_millis()
    );
    println!(
        "  policy  redial with backoff from {} ms, doubling, capped at {} s, full jitter;",
        BACKOFF_BASE.as_millis(),
        BACKOFF_CAP.as_secs()
    );
    println!(
        "          requests wait in a queue while redialing, for up to {} s, then fail fast",
        WAIT_LIMIT.as_secs()
    );
    println!("\ntimeline   ▶ what the demo does   · the client's state, from client.state()\n");

    let log = Arc::new(Mutex::new(Log::default()));
    let timeline = tokio::spawn(watch_state(client.state(), backoff, start, log.clone()));

    let (stop, stopped) = watch::channel(false);
    let mut workers = JoinSet::new();
    for worker in 0..WORKERS {
        workers.spawn(work(
            worker,
            client.clone(),
            start,
            stopped.clone(),
            log.clone(),
        ));
    }
    let steady = Duration::from_millis(1200);
    sleep(steady).await;

    // 1. A quick restart.
    step(
        start,
        &log,
        "server stopped for a quick restart (down 0.5 s)",
    );
    cause(start, &log, "restart (0.5 s)");
    server.stop().await;
    sleep(Duration::from_millis(500)).await;
    server.restart().await;
    step(start, &log, "server back up");
    sleep(steady).await;

    // 2. A hang, then every connection reset while the server stays up.
    step(start, &log, "server hangs: it stops answering requests...");
    server.set_hold_replies(true);
    sleep(Duration::from_millis(300)).await;
    step(
        start,
        &log,
        "...then resets every connection (RST); it keeps listening",
    );
    cause(start, &log, "hang, then RST");
    let lost_before = lock(&log).count(Outcome::Ambiguous);
    server.reset_all().await;
    server.set_hold_replies(false);
    sleep(Duration::from_millis(100)).await;
    let lost = lock(&log).count(Outcome::Ambiguous) - lost_before;
    println!(
        "{:14}({lost} requests on the wire got an io error: the server may have run them)",
        ""
    );
    sleep(steady).await;

    // 3. A longer outage, still within the wait limit.
    step(start, &log, "server stopped (down 1.5 s)");
    cause(start, &log, "stop (1.5 s)");
    server.stop().await;
    sleep(Duration::from_millis(1500)).await;
    server.restart().await;
    step(start, &log, "server back up");
    sleep(steady).await;

    // 4. An outage past the wait limit.
    let wait = WAIT_LIMIT.as_secs();
    step(
        start,
        &log,
        &format!("server stopped (down 4 s, longer than the {wait} s wait limit)"),
    );
    cause(start, &log, "stop (4 s)");
    server.stop().await;
    sleep(Duration::from_secs(4)).await;
    server.restart().await;
    step(start, &log, "server back up");
    let mut state = client.state();
    let _ = tokio::time::timeout(
        BACKOFF_CAP * 2,
        state.wait_for(|s| s.phase() == Phase::Ready),
    )
    .await;
    sleep(Duration::from_secs(1)).await;

    step(
        start,
        &log,
        "workers stop sending, and wait for their last replies",
    );
    stop.send_replace(true);
    while let Some(joined) = workers.join_next().await {
        joined?;
    }
    let stats = client.stats();
    step(start, &log, "client dropped");
    drop(client);
    // The state watch closes once the client's worker task has ended.
    let _ = tokio::time::timeout(Duration::from_secs(1), timeline).await;

    let log = std::mem::take(&mut *lock(&log));
    report(&log, stats, &server);
    drop(server);
    Ok(())
}

// ---------------------------------------------------------------------------
// What happened: requests and outages
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Incr,
    Get,
    Set,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The server answered.
    Ok,
    /// `Unavailable`: the connection had been down past the wait limit.
    FailedFast,
    /// An IO error: the request may or may not have run on the server.
    Ambiguous,
    /// Anything else (`Closed`, `NotSent` with no re-send left, ...).
    Other,
}

struct Request {
    command: Command,
    /// When it was sent, since the start.
    sent: Duration,
    /// How long it took to succeed or fail.
    took: Duration,
    outcome: Outcome,
}

/// One outage as the client saw it: from leaving `Ready` to being `Ready`
/// again.
struct Outage {
    start: Duration,
    end: Option<Duration>,
    dials: u32,
    failed_fast: bool,
}

#[derive(Default)]
struct Log {
    requests: Vec<Request>,
    outages: Vec<Outage>,
    /// What the demo did to the server, and when.
    causes: Vec<(Duration, &'static str)>,
}

impl Log {
    fn count(&self, outcome: Outcome) -> usize {
        self.requests
            .iter()
            .filter(|r| r.outcome == outcome)
            .count()
    }

    /// What the demo last did to the server before `at`.
    fn cause(&self, at: Duration) -> &'static str {
        self.causes
            .iter()
            .rev()
            .find(|(when, _)| *when <= at)
            .map_or("?", |(_, what)| what)
    }
}

impl Outage {
    fn length(&self) -> Option<Duration> {
        self.end.map(|end| end - self.start)
    }

    /// The requests sent while the client was not connected.
    fn requests<'a>(&self, log: &'a Log) -> impl Iterator<Item = &'a Request> + 'a {
        let (start, end) = (self.start, self.end.unwrap_or(Duration::MAX));
        log.requests
            .iter()
            .filter(move |r| r.sent >= start && r.sent < end)
    }
}

fn classify(result: &Result<String, BoxError>) -> Outcome {
    let error = match result {
        Ok(_) => return Outcome::Ok,
        Err(error) => &**error,
    };
    if line::find_error::<Unavailable>(error).is_some() {
        Outcome::FailedFast
    } else if line::find_error::<Closed>(error).is_some()
        || line::find_error::<NotSent>(error).is_some()
    {
        Outcome::Other
    } else if line::find_error::<io::Error>(error).is_some() {
        Outcome::Ambiguous
    } else {
        Outcome::Other
    }
}

// ---------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------

/// One worker: sends a request every `PACE` until told to stop, without
/// waiting for replies (each reply is awaited on its own task), then waits
/// for its outstanding replies.
async fn work(
    worker: usize,
    mut client: Client<String, String>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
    log: Arc<Mutex<Log>>,
) {
    // Spread the workers over the pace, for a smooth load.
    sleep(PACE * worker as u32 / WORKERS as u32).await;
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut replies = JoinSet::new();
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let (command, request) = match n % 4 {
            0 | 1 => (Command::Incr, "INCR visits".to_string()),
            2 => (Command::Get, "GET visits".to_string()),
            _ => (Command::Set, format!("SET last-seen worker{worker}-{n}")),
        };
        // `ready` waits for room in the queue, never for the connection.
        let Ok(client) = client.ready().await else {
            break;
        };
        let sent = start.elapsed();
        let reply = client.call(request);
        let log = log.clone();
        replies.spawn(async move {
            let outcome = classify(&reply.await);
            let took = start.elapsed() - sent;
            lock(&log).requests.push(Request {
                command,
                sent,
                took,
                outcome,
            });
        });
    }
    while replies.join_next().await.is_some() {}
}

/// Prints each state change, and notes down the outages.
async fn watch_state(
    mut state: watch::Receiver<Snapshot>,
    backoff: Backoff,
    start: Instant,
    log: Arc<Mutex<Log>>,
) {
    let mut previous = Phase::Idle;
    loop {
        let snapshot = state.borrow_and_update().clone();
        let at = snapshot.since().saturating_duration_since(start);
        {
            let mut log = lock(&log);
            if let Some(text) = note(&mut log, &snapshot, at, previous, &backoff) {
                println!("  {}  · {text}", stamp(at));
            }
        }
        // (A Ready that follows Ready only resets the attempt count, once the
        // new connection proved healthy; `note` skips it.)
        previous = snapshot.phase();
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Notes down a state change in the outage log, and describes it (`None`
/// when not worth a line).
fn note(
    log: &mut Log,
    snapshot: &Snapshot,
    at: Duration,
    previous: Phase,
    backoff: &Backoff,
) -> Option<String> {
    let phase = snapshot.phase();
    let attempt = snapshot.attempt();
    let error = snapshot.last_error().map(describe).unwrap_or_default();

    // An outage runs from leaving Ready to being Ready again.
    let down = matches!(phase, Phase::Connecting | Phase::Backoff | Phase::FailFast);
    if down && previous == Phase::Ready {
        log.outages.push(Outage {
            start: at,
            end: None,
            dials: 0,
            failed_fast: false,
        });
    }
    let outage = log.outages.last_mut().filter(|o| o.end.is_none());
    let mut outage_start = None;
    if let Some(outage) = outage {
        outage_start = Some(outage.start);
        if down {
            outage.dials = outage.dials.max(attempt);
            outage.failed_fast |= phase == Phase::FailFast;
        } else if phase == Phase::Ready {
            outage.end = Some(at);
        }
    }

    let text = match phase {
        Phase::Idle => "idle: nothing is dialed until the first request".to_string(),
        Phase::Connecting if attempt <= 1 && previous == Phase::Ready => {
            "connection lost; redialing at once".to_string()
        }
        // The failure, or the success, of a redial gets its own line.
        Phase::Connecting if previous == Phase::Backoff => return None,
        Phase::Connecting => format!("connecting (dial {attempt})"),
        // With full jitter, the delay is random, up to the raw delay.
        Phase::Backoff => format!(
            "dial {attempt} failed: {error}; next dial within {}",
            human(backoff.raw_delay(attempt))
        ),
        Phase::FailFast if previous != Phase::FailFast => format!(
            "fail-fast: down for the {} s wait limit; waiting and new requests fail at once",
            WAIT_LIMIT.as_secs()
        ),
        Phase::FailFast => format!("fail-fast, still redialing (dial {attempt})"),
        Phase::Ready if previous == Phase::Ready => return None,
        Phase::Ready => match outage_start {
            Some(start) => format!(
                "ready again after {} (dial {attempt} connected)",
                human(at - start)
            ),
            None => format!("ready (dial {attempt} connected)"),
        },
        Phase::Closed => "closed".to_string(),
        _ => phase.to_string(),
    };
    Some(text)
}

// ---------------------------------------------------------------------------
// The tally
// ---------------------------------------------------------------------------

fn report(log: &Log, stats: tower_redial::state::Stats, server: &LineServer) {
    let requests = &log.requests;
    let count = |f: &dyn Fn(&Request) -> bool| requests.iter().filter(|r| f(r)).count();
    let sent = requests.len();
    let succeeded = count(&|r| r.outcome == Outcome::Ok);
    let failed_fast = count(&|r| r.outcome == Outcome::FailedFast);
    let ambiguous = count(&|r| r.outcome == Outcome::Ambiguous);
    let other = count(&|r| r.outcome == Outcome::Other);

    println!(
        "\noutages, as the client saw them (from losing its connection to having one again)\n"
    );
    let columns = [
        "start",
        "lasted",
        "dials",
        "sent meanwhile",
        "answered",
        "failed fast",
    ];
    let [start, lasted, dials, meanwhile, answered, fast] = columns;
    println!(
        "  {:<15}  {start:>8}  {lasted:>7}  {dials:>5}  {meanwhile:>14}  {answered:>8}  {fast:>11}",
        "cause"
    );
    let mut rode_through = 0;
    let mut longest_ridden = None::<Duration>;
    for outage in &log.outages {
        let Some(length) = outage.length() else {
            continue;
        };
        let during: Vec<&Request> = outage.requests(log).collect();
        let ok = during.iter().filter(|r| r.outcome == Outcome::Ok).count();
        let fast = during
            .iter()
            .filter(|r| r.outcome == Outcome::FailedFast)
            .count();
        rode_through += ok;
        if !outage.failed_fast && fast == 0 && ok > 0 {
            longest_ridden = longest_ridden.max(Some(length));
        }
        println!(
            "  {:<15}  {}  {:>7}  {:>5}  {:>14}  {:>8}  {:>11}",
            log.cause(outage.start),
            stamp(outage.start),
            human(length),
            outage.dials,
            during.len(),
            ok,
            fast,
        );
    }

    let acked_incrs = count(&|r| r.command == Command::Incr && r.outcome == Outcome::Ok);
    let unsure_incrs = count(&|r| r.command == Command::Incr && r.outcome == Outcome::Ambiguous);
    let visits = server.counter("visits");
    let most = (acked_incrs + unsure_incrs) as i64;
    let books_ok = (acked_incrs as i64..=most).contains(&visits);

    println!("\ntally\n");
    let row = |label: &str, value: String| println!("  {label:<44} {value:>7}");
    row("requests sent", sent.to_string());
    row("  succeeded", succeeded.to_string());
    row(
        "    of them sent while the server was down",
        rode_through.to_string(),
    );
    row("  failed fast (Unavailable)", failed_fast.to_string());
    row(
        "  lost on the wire (io error: may have run)",
        ambiguous.to_string(),
    );
    if other > 0 {
        row("  other errors", other.to_string());
    }
    row(
        "re-sent (provably never reached the server)",
        stats.retries.to_string(),
    );
    row("dials", stats.dials.to_string());
    row("  refused or timed out", stats.dial_failures.to_string());
    row(
        "connections found dead and dropped",
        stats.drops.to_string(),
    );
    let slowest = requests
        .iter()
        .filter(|r| r.outcome == Outcome::Ok)
        .map(|r| r.took)
        .max();
    row(
        "slowest success (waited out an outage)",
        slowest.map_or("-".to_string(), human),
    );
    row(
        "longest outage ridden through",
        longest_ridden.map_or("-".to_string(), human),
    );

    println!("\nbooks: the server's `visits` counter against what the client saw\n");
    row("INCRs answered", acked_incrs.to_string());
    row(
        "INCRs lost on the wire (may have run)",
        unsure_incrs.to_string(),
    );
    row("visits counted by the server", visits.to_string());
    if books_ok {
        println!(
            "  {acked_incrs} <= {visits} <= {most}: every answered INCR ran once, {} of the lost \
             ones ran, none ran twice",
            visits - acked_incrs as i64
        );
    } else {
        println!("  MISMATCH: the server should have counted between {acked_incrs} and {most}");
    }

    let wait = WAIT_LIMIT.as_secs();
    let longest = longest_ridden.map_or("-".to_string(), human);
    let retried = match stats.retries {
        0 => "none was needed this run".to_string(),
        n => format!("{n} this run"),
    };
    println!("\nwhat happened\n");
    let story = format!(
        "While the server was down, requests waited in the client's queue and went out as soon \
         as a redial got through: {rode_through} requests sent during outages were answered, \
         through outages of up to {longest}. Outages last a little longer than the server's \
         downtime: the backoff spaces out the dials, so the client finds the server back only \
         on its next dial. When an outage outlasted the {wait} s wait limit, waiting and new \
         requests failed fast with `Unavailable` ({failed_fast} of them) instead of hanging, \
         while redialing carried on. A request is re-sent only when it provably never left the \
         client ({retried}); the {ambiguous} lost on the wire came back as errors, never \
         re-sent behind your back, so nothing ran twice."
    );
    for line in wrap(&story, 86) {
        println!("  {line}");
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Prints a scenario step. (The log's lock keeps the timeline's lines whole
/// and in order.)
fn step(start: Instant, log: &Mutex<Log>, what: &str) {
    let _log = lock(log);
    println!("  {}  ▶ {what}", stamp(start.elapsed()));
}

/// Notes what causes the next outage, for the outage table.
fn cause(start: Instant, log: &Mutex<Log>, what: &'static str) {
    lock(log).causes.push((start.elapsed(), what));
}

fn stamp(at: Duration) -> String {
    format!("+{:>6.3}s", at.as_secs_f64())
}

/// Splits `text` into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// A duration, in milliseconds below a second.
fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// A dial error in a few words: its IO error kind when it has one.
fn describe(error: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    match line::io_kind(error) {
        Some(kind) => kind.to_string(),
        None => error.to_string(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
