//! A chaos soak and the fault table of `docs/RELIABILITY.md`.
//!
//! `chaos_soak`: 64 callers (each an `INCR` on its own key, plus `GET`s)
//! through a [`FaultProxy`] running a seeded random fault schedule. Every
//! request is accounted for with exactly one outcome; the books reconcile
//! per key (no duplicated `INCR`); no caller panics; open file descriptors
//! and live tokio tasks return to their baseline; peak memory stays bounded.
//! It prints a summary table.
//!
//! - `SOAK_SECS` sets the schedule length (default 20 s, for CI);
//! - `SOAK_SEED` sets the schedule seed (default 9).
//!
//! A long run: `SOAK_SECS=600 cargo test --release --test line soak:: -- --nocapture`.
//!
//! `reliability_table` (ignored; `scripts/reliability` runs it) applies each
//! fault once under steady traffic and writes a markdown table of what was
//! observed to the path in `RELIABILITY_OUT`.
//!
//! Real time and real sockets on 127.0.0.1. The soak asserts outcomes and
//! counts only, never how fast anything was; waits are bounded hang guards.

use support::fault_proxy;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fault_proxy::{Direction, Fault, FaultProxy};
use support::line::*;
use support::outcome::{Outcome, Tally};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_redial::state::Stats;
use tower_redial::{Backoff, BoxError, Client, Jitter, ReconnectPolicy};

type LineClient = Client<String, String>;

/// The per-request timeout inside each connection.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// Hang guard for every wait.
const HANG: Duration = Duration::from_secs(30);
/// Callers in the soak.
const SOAK_CALLERS: usize = 64;
/// Callers in each scenario of the reliability table.
const TABLE_CALLERS: usize = 16;
/// The bound on peak resident memory (VmHWM) of the soak process.
const PEAK_RSS_LIMIT_KIB: u64 = 256 * 1024;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn guard<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG, future).await {
        Ok(output) => output,
        Err(_) => panic!("hung for {HANG:?}: {what}"),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        Err(_) => default,
    }
}

/// A client of `addr` whose requests time out after [`REQUEST_TIMEOUT`].
fn timeout_client(addr: SocketAddr) -> LineClient {
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(20), 2.0, ms(200)).jitter(Jitter::None))
        .wait_limit(Duration::from_secs(2))
        .connect_timeout(ms(500))
        .seed(1);
    support::outcome::timeout_client(addr, policy, REQUEST_TIMEOUT)
}

async fn send(client: &LineClient, line: String) -> Result<String, BoxError> {
    client.clone().oneshot(line).await
}

// ---------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------

/// Records `result` in `tally`; `incr` tells which reply is well-formed. A
/// reply that is not the shape its request expects was cut short, so the
/// request may have run.
fn record(tally: &mut Tally, result: &Result<String, BoxError>, incr: bool) -> Outcome {
    if let Ok(reply) = result {
        let good = if incr {
            reply.starts_with("INT ")
        } else {
            reply.starts_with("VALUE ") || reply == "NIL" || reply == "PONG"
        };
        if !good {
            return tally.record_truncated();
        }
    }
    tally.record(result)
}

/// What one caller saw: all its requests, and its `INCR`s on its own key.
#[derive(Default)]
struct CallerReport {
    key: String,
    all: Tally,
    incr: Tally,
}

/// Returns how many `INCR`s beyond the possible ones the server ran on the
/// caller's key (0 when the books reconcile), after checking none was lost.
fn excess(server: &LineServer, report: &CallerReport) -> u64 {
    let count = server.counter(&report.key) as u64;
    assert!(
        count >= report.incr.ok,
        "acknowledged INCR lost on {}: {count} < {:?}",
        report.key,
        report.incr
    );
    count.saturating_sub(report.incr.ok + report.incr.maybe_ran())
}

/// Callers that each send `INCR key` (and every fourth request a `GET key`)
/// in a loop until stopped. `issued` counts requests before they are sent.
struct Callers {
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicU64>,
    workers: Vec<JoinHandle<CallerReport>>,
}

impl Callers {
    fn start(client: &LineClient, prefix: &str, n: usize, on_ok: Arc<OkClock>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicU64::new(0));
        let workers = (0..n)
            .map(|i| {
                let (client, stop, issued) = (client.clone(), stop.clone(), issued.clone());
                let on_ok = on_ok.clone();
                // Ends in `z`: a line cut short at a connection close (which
                // the line codec delivers as a whole line) never names
                // another caller's key.
                let key = format!("{prefix}{i:02}z");
                tokio::spawn(async move {
                    let mut report = CallerReport {
                        key: key.clone(),
                        ..CallerReport::default()
                    };
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let incr = n % 4 != 0;
                        let line = if incr {
                            format!("INCR {key}")
                        } else {
                            format!("GET {key}")
                        };
                        issued.fetch_add(1, Ordering::SeqCst);
                        let result = send(&client, line).await;
                        let outcome = record(&mut report.all, &result, incr);
                        if incr {
                            record(&mut report.incr, &result, incr);
                        }
                        if outcome == Outcome::Ok {
                            on_ok.tick();
                        } else {
                            // Paced, so that failing requests do not spin.
                            tokio::time::sleep(ms(5)).await;
                        }
                    }
                    report
                })
            })
            .collect();
        Self {
            stop,
            issued,
            workers,
        }
    }

    /// Stops the callers and returns their reports; panics if one panicked.
    async fn finish(self) -> (u64, Vec<CallerReport>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut reports = Vec::new();
        for worker in self.workers {
            reports.push(guard("a caller", worker).await.expect("a caller panicked"));
        }
        (self.issued.load(Ordering::SeqCst), reports)
    }
}

/// Records the first successful response at or after a mark.
struct OkClock {
    base: Instant,
    /// Nanoseconds from `base` of the mark; `u64::MAX` while unset.
    mark: AtomicU64,
    /// Nanoseconds from `base` of the first success at or after the mark.
    first: AtomicU64,
}

impl OkClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            mark: AtomicU64::new(u64::MAX),
            first: AtomicU64::new(u64::MAX),
        })
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn tick(&self) {
        let now = self.now();
        if now >= self.mark.load(Ordering::SeqCst) {
            self.first.fetch_min(now, Ordering::SeqCst);
        }
    }

    /// Sets the mark now; returns it.
    fn set_mark(&self) -> u64 {
        let now = self.now();
        self.mark.store(now, Ordering::SeqCst);
        now
    }

    fn first_after(&self) -> Option<u64> {
        let first = self.first.load(Ordering::SeqCst);
        (first != u64::MAX).then_some(first)
    }
}

/// Sends `PING` until one succeeds; every failure on the way must be one the
/// faults explain.
async fn recover(client: &LineClient) -> Tally {
    guard("the client to recover", async {
        let mut tally = Tally::default();
        loop {
            let result = send(client, "PING".to_string()).await;
            match record(&mut tally, &result, false) {
                Outcome::Ok => break assert_eq!(result.unwrap(), "PONG"),
                Outcome::Closed | Outcome::Unexpected => panic!("{result:?}"),
                _ => tokio::time::sleep(ms(10)).await,
            }
        }
        tally
    })
    .await
}

// ---------------------------------------------------------------------------
// Process resources
// ---------------------------------------------------------------------------

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// A `Vm*` line of /proc/self/status, in KiB.
fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Polls every 50 ms, for at most 10 s, until `now()` is back at `baseline`;
/// returns the last value seen.
async fn settle(now: impl Fn() -> usize, baseline: usize) -> usize {
    let mut value = now();
    for _ in 0..200 {
        if value <= baseline {
            break;
        }
        tokio::time::sleep(ms(50)).await;
        value = now();
    }
    value
}

// ---------------------------------------------------------------------------
// The soak
// ---------------------------------------------------------------------------

/// The soak's numbers, for the summary.
struct SoakRun {
    tally: Tally,
    issued: u64,
    stats: Stats,
    duplicates: u64,
    faults: usize,
}

async fn soak(seed: u64, secs: u64) -> SoakRun {
    let server = LineServer::start().await;
    let proxy = FaultProxy::start_seeded(server.addr(), seed).await;
    let client = timeout_client(proxy.addr());
    assert_eq!(
        guard("first PING", send(&client, "PING".into()))
            .await
            .unwrap(),
        "PONG"
    );

    let callers = Callers::start(&client, "soak", SOAK_CALLERS, OkClock::new());
    let duration = Duration::from_secs(secs);
    let schedule =
        match tokio::time::timeout(duration + HANG, proxy.run_schedule(seed, duration)).await {
            Ok(schedule) => schedule,
            Err(_) => panic!("the schedule hung"),
        };
    assert_eq!(proxy.fault(), None);
    let mut tally = recover(&client).await;
    let target = server.commands() + 100;
    guard(
        "traffic after the schedule",
        server.wait_for_commands(target),
    )
    .await;

    let (issued, reports) = callers.finish().await;
    let mut duplicates = 0;
    let mut callers_tally = Tally::default();
    for report in &reports {
        report.all.assert_sane();
        report.incr.assert_sane();
        duplicates += excess(&server, report);
        callers_tally.add(&report.all);
    }
    assert_eq!(
        callers_tally.issued, issued,
        "every issued request came back with an outcome"
    );
    tally.add(&callers_tally);
    let issued = issued + tally.issued - callers_tally.issued;
    SoakRun {
        tally,
        issued,
        stats: client.stats(),
        duplicates,
        faults: schedule.len(),
    }
}

/// 64 callers through a seeded random fault schedule. See the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    let secs = env_u64("SOAK_SECS", 20);
    let seed = env_u64("SOAK_SEED", 9);
    // Let the runtime finish starting its workers before the baseline.
    tokio::task::yield_now().await;
    let fds_before = open_fds();
    let tasks_before = alive_tasks();
    let rss_before = vm_kib("VmRSS");
    let start = Instant::now();

    // Everything the soak creates lives and is dropped inside this call.
    let run = soak(seed, secs).await;
    let elapsed = start.elapsed();

    let fds_after = settle(open_fds, fds_before).await;
    let tasks_after = settle(alive_tasks, tasks_before).await;
    let rss_after = vm_kib("VmRSS");
    let peak = vm_kib("VmHWM");

    let t = &run.tally;
    let rows = [
        ("seed", seed.to_string()),
        ("schedule", format!("{secs} s, {} faults", run.faults)),
        ("wall time", format!("{:.1} s", elapsed.as_secs_f64())),
        ("callers", SOAK_CALLERS.to_string()),
        ("issued", run.issued.to_string()),
        ("ok", t.ok.to_string()),
        ("ambiguous (transport)", t.ambiguous.to_string()),
        ("timed out", t.timed_out.to_string()),
        ("unavailable", t.unavailable.to_string()),
        ("not sent (to caller)", t.not_sent.to_string()),
        ("truncated reply (as Ok)", t.truncated.to_string()),
        ("closed / other", format!("{} / {}", t.closed, t.unexpected)),
        ("NotSent re-sent (retries)", run.stats.retries.to_string()),
        ("dials / dial failures", {
            format!("{} / {}", run.stats.dials, run.stats.dial_failures)
        }),
        ("drops", run.stats.drops.to_string()),
        ("fail fast", run.stats.fail_fast.to_string()),
        ("duplicates", run.duplicates.to_string()),
        ("panics", "0".to_string()),
        (
            "open fds before / after",
            format!("{fds_before} / {fds_after}"),
        ),
        ("live tasks before / after", {
            format!("{tasks_before} / {tasks_after}")
        }),
        ("VmRSS before / after", {
            format!("{} / {} MiB", rss_before / 1024, rss_after / 1024)
        }),
        ("peak RSS (VmHWM)", format!("{} MiB", peak / 1024)),
    ];
    println!("\nchaos soak summary\n\n| metric | value |\n|---|---|");
    for (name, value) in rows {
        println!("| {name} | {value} |");
    }
    println!();

    t.assert_sane();
    assert_eq!(t.outcomes(), run.issued, "one outcome per request");
    assert!(t.ok > 0, "{t:?}");
    assert_eq!(run.duplicates, 0, "a non-idempotent INCR ran twice");
    assert_eq!(fds_after, fds_before, "file descriptors leaked");
    assert_eq!(tasks_after, tasks_before, "tokio tasks leaked");
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak} KiB over {PEAK_RSS_LIMIT_KIB} KiB"
    );
}

// ---------------------------------------------------------------------------
// The reliability table
// ---------------------------------------------------------------------------

/// One row of the table.
struct Row {
    fault: &'static str,
    detection: Option<Duration>,
    tally: Tally,
    retries: u64,
    duplicates: u64,
    recovery: Duration,
    note: &'static str,
}

/// Applies `fault` for `hold` under steady traffic, clears it, and measures.
async fn scenario(
    name: &'static str,
    fault: Fault,
    hold: Duration,
    restart: bool,
    note: &'static str,
) -> Row {
    let server = LineServer::start().await;
    let proxy = FaultProxy::start_seeded(server.addr(), 42).await;
    let client = timeout_client(proxy.addr());
    assert_eq!(
        guard("first PING", send(&client, "PING".into()))
            .await
            .unwrap(),
        "PONG"
    );
    let clock = OkClock::new();
    let callers = Callers::start(&client, "k", TABLE_CALLERS, clock.clone());
    let target = server.commands() + 200;
    guard("warm-up traffic", server.wait_for_commands(target)).await;

    let before = client.stats();
    let changed = |s: Stats| {
        s.drops != before.drops
            || s.dial_failures != before.dial_failures
            || s.dials != before.dials
    };
    proxy.set_fault(fault);
    let set_at = Instant::now();
    // SlowClose needs a close to delay: the server restarts under it.
    if restart {
        guard("restart", server.restart()).await;
    }
    let mut detection = None;
    while set_at.elapsed() < hold {
        if detection.is_none() && changed(client.stats()) {
            detection = Some(set_at.elapsed());
        }
        tokio::time::sleep(ms(5)).await;
    }
    if detection.is_none() && changed(client.stats()) {
        detection = Some(set_at.elapsed());
    }

    let mark = clock.set_mark();
    proxy.clear();
    guard("a success after clearing", async {
        while clock.first_after().is_none() {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
    let recovery = Duration::from_nanos(clock.first_after().unwrap() - mark);
    tokio::time::sleep(ms(300)).await;

    let (issued, reports) = callers.finish().await;
    let mut tally = Tally::default();
    let mut duplicates = 0;
    for report in &reports {
        report.all.assert_sane();
        duplicates += excess(&server, report);
        tally.add(&report.all);
    }
    assert_eq!(tally.issued, issued, "one outcome per request");
    tally.assert_sane();
    assert_eq!(duplicates, 0, "{name}: an INCR ran twice");
    Row {
        fault: name,
        detection,
        tally,
        retries: client.stats().retries,
        duplicates,
        recovery,
        note,
    }
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn failed(t: &Tally) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (t.ambiguous, "ambiguous"),
        (t.timed_out, "timed out"),
        (t.unavailable, "unavailable"),
        (t.not_sent, "not sent"),
        (t.truncated, "truncated reply"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let total = t.issued - t.ok;
    if parts.is_empty() {
        "0".to_string()
    } else {
        format!("{total}: {}", parts.join(", "))
    }
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    format!("{nproc} CPUs ({cpu}), {rustc}")
}

/// Each fault once under 16 callers; writes the table to `RELIABILITY_OUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by scripts/reliability, which writes docs/RELIABILITY.md"]
async fn reliability_table() {
    let s = Duration::from_secs(1);
    let rows = vec![
        scenario("Down (1 s)", Fault::Down, s, false, "").await,
        scenario(
            "ResetPeer (1 s)",
            Fault::ResetPeer,
            s,
            false,
            "new connections are reset too while it holds; their queued requests come back not sent and are re-sent",
        )
        .await,
        scenario("Blackhole (1 s)", Fault::Blackhole, s, false, "").await,
        scenario(
            "Latency 50 ms + 0..=20 ms, both ways (1 s)",
            Fault::Latency {
                direction: Direction::Both,
                delay: ms(50),
                jitter: ms(20),
            },
            s,
            false,
            "",
        )
        .await,
        scenario(
            "LimitData 64 B upstream (1 s)",
            Fault::LimitData {
                direction: Direction::Upstream,
                bytes: 64,
            },
            s,
            false,
            "",
        )
        .await,
        scenario(
            "SlowClose 300 ms + server restart (1 s)",
            Fault::SlowClose { delay: ms(300) },
            s,
            true,
            "the server restarts right after the fault is set. Detection beats the 300 ms delay, likely because the proxy passes a failed *write* (the client still sending) on at once, without the delay, so under pipelined traffic the close is not held back",
        )
        .await,
        scenario(
            "HalfOpen downstream (1 s)",
            Fault::HalfOpen {
                stopped: Direction::Downstream,
            },
            s,
            false,
            "",
        )
        .await,
    ];

    let mut out = String::new();
    writeln!(out, "# Reliability\n").unwrap();
    writeln!(
        out,
        "<!-- Generated by scripts/reliability; do not edit by hand. -->\n"
    )
    .unwrap();
    writeln!(
        out,
        "Each fault of the in-process fault proxy (`tests/support/src/fault_proxy.rs`) \
         applied once, for the time shown, under {TABLE_CALLERS} callers (each an `INCR` \
         on its own key, every fourth request a `GET`) of a client whose connections time \
         requests out after {} ms and whose classifier counts a timeout as a dead \
         connection (backoff 20 ms doubling to 200 ms, wait limit 2 s). Produced by \
         `scripts/reliability` (the ignored test `reliability_table` in `tests/line/soak.rs`).\n",
        REQUEST_TIMEOUT.as_millis()
    )
    .unwrap();
    writeln!(
        out,
        "Times are wall-clock on one machine: {}. They vary from run to run; the \
         counts depend on how much traffic ran.\n",
        machine()
    )
    .unwrap();
    writeln!(
        out,
        "- **detection**: from setting the fault to the client's first drop, dial or \
         dial failure (polled every 5 ms); — when the client saw nothing to detect.\n\
         - **failed**: requests whose caller got an error, by type (ambiguous: a \
         transport error after the request may have been sent; never re-sent).\n\
         - **retried**: requests handed back `NotSent` and re-sent by the client.\n\
         - **duplicates**: `INCR`s the server ran beyond those acknowledged or \
         ambiguous (books per key).\n\
         - **recovery**: from clearing the fault to the first success after it; \
         near 0 when requests already succeed while the fault holds (latency, slow \
         close) or a request held in a stopped direction completes on clearing.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| fault | detection | requests | failed | retried | duplicates | recovery | note |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|").unwrap();
    for r in &rows {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.fault,
            r.detection.map_or("—".to_string(), millis),
            r.tally.issued,
            failed(&r.tally),
            r.retries,
            r.duplicates,
            millis(r.recovery),
            r.note
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nRegenerate with `scripts/reliability`. The chaos soak (random faults, \
         64 callers) is `cargo test --test line soak::chaos_soak -- --nocapture`; a long run: \
         `SOAK_SECS=600 cargo test --release --test line soak:: -- --nocapture`."
    )
    .unwrap();
    print!("{out}");
    if let Ok(path) = std::env::var("RELIABILITY_OUT") {
        std::fs::write(&path, &out).unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
}
