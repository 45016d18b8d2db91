//! Recovery after an outage, on loopback, in real time (issue 6, item 2).
//!
//! Each trial: steady traffic (4 tasks, one request every 5 ms each, every
//! request spawned on its own, open loop, each bounded by a 2 s timeout); the
//! listener goes down for `T`, then comes back at `R`. Measured: the time from
//! `R` to the first successful request, failed requests, and dials (every dial
//! goes through a logging wrapper around the factory). Also an RST on a
//! healthy connection while the server stays up.
//!
//! `cargo bench -p tower-redial-interop --bench recovery -- --write docs/BENCHMARKS.md`
//! writes its section between `<!-- recovery:start -->` and
//! `<!-- recovery:end -->`. `RECOVERY_TRIALS=n` changes the trial count.

use support::line;
use support::redis_server;

use tower_redial_interop::plot;
use tower_redial_interop::report as common;

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use line::{LineConnection, LineServer};
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};
use tower::buffer::Buffer;
use tower::util::BoxCloneService;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::{Backoff, BoxError, ReconnectLayer, ReconnectPolicy};

/// How long the listener stays down.
const OUTAGE: Duration = Duration::from_millis(300);
/// Our fixed, jitter-free backoff.
const BACKOFF: Duration = Duration::from_millis(50);
/// Traffic before the disruption, and after the server is back.
const WARM: Duration = Duration::from_millis(150);
const TAIL: Duration = Duration::from_millis(250);
const TASKS: usize = 4;
const TICK: Duration = Duration::from_millis(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The goal's slack over the scheduled backoff deadline.
const SLACK: Duration = Duration::from_millis(1);

type Svc<Req, Res> = BoxCloneService<Req, Res, BoxError>;

// ---------------------------------------------------------------------------
// Dial log
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Dial {
    start: Instant,
    end: Instant,
    ok: bool,
}

type DialLog = Arc<Mutex<Vec<Dial>>>;

/// Wraps a connection factory so that every dial is logged.
fn logged<M, T>(
    make: M,
    log: DialLog,
) -> impl Service<
    T,
    Response = M::Response,
    Error = BoxError,
    Future = impl Future<Output = Result<M::Response, BoxError>> + Send + Unpin,
> + Clone
       + Send
where
    M: Service<T, Error = BoxError> + Clone + Send + 'static,
    M::Future: Send,
    M::Response: Send,
    T: Send + 'static,
{
    service_fn(move |target: T| {
        let make = make.clone();
        let log = log.clone();
        Box::pin(async move {
            let start = Instant::now();
            let result = make.oneshot(target).await;
            let end = Instant::now();
            log.lock().unwrap().push(Dial {
                start,
                end,
                ok: result.is_ok(),
            });
            result
        })
    })
}

// ---------------------------------------------------------------------------
// Trials
// ---------------------------------------------------------------------------

struct Trial {
    /// From `R` to the first successful request that completed at or after `R`.
    recovery: Option<Duration>,
    /// First success minus (last failed dial's end + backoff): how late the
    /// recovery was against the backoff schedule.
    lateness: Option<f64>,
    /// The successful dial's start minus the same deadline: how late the
    /// redial itself was.
    dial_lateness: Option<f64>,
    /// From the successful dial's start to the first success: connect,
    /// handshake and the first round trip.
    dial_to_ok: Option<Duration>,
    failed: usize,
    requests: usize,
    dials: usize,
}

/// Runs traffic through `svc`; after `WARM`, awaits `disrupt` (which returns
/// `(down, back)`), then `TAIL` more of traffic.
async fn trial<Req, Res, F>(
    svc: Svc<Req, Res>,
    request: fn() -> Req,
    dials: Option<&DialLog>,
    backoff: Option<Duration>,
    disrupt: F,
) -> Trial
where
    Req: Send + 'static,
    Res: Send + 'static,
    F: Future<Output = (Instant, Instant)>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let tickers: Vec<_> = (0..TASKS)
        .map(|_| {
            let (svc, stop, outcomes) = (svc.clone(), stop.clone(), outcomes.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut requests = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (svc, outcomes) = (svc.clone(), outcomes.clone());
                    requests.push(tokio::spawn(async move {
                        let ok = matches!(
                            timeout(REQUEST_TIMEOUT, svc.oneshot(request())).await,
                            Ok(Ok(_))
                        );
                        outcomes.lock().unwrap().push((Instant::now(), ok));
                    }));
                }
                for r in requests {
                    let _ = r.await;
                }
            })
        })
        .collect();
    sleep(WARM).await;
    let (down, back) = disrupt.await;
    sleep(TAIL).await;
    stop.store(true, Ordering::Relaxed);
    for t in tickers {
        let _ = t.await;
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let first_ok = outcomes
        .iter()
        .filter(|(at, ok)| *ok && *at >= back)
        .map(|(at, _)| *at)
        .min();
    let (mut lateness, mut dial_lateness, mut dial_to_ok, mut n_dials) = (None, None, None, 0);
    if let Some(log) = dials {
        let log = log.lock().unwrap();
        let outage: Vec<Dial> = log.iter().filter(|d| d.start >= down).copied().collect();
        n_dials = outage.len();
        if let (Some(backoff), Some(first_ok)) = (backoff, first_ok) {
            let success = outage.iter().position(|d| d.ok);
            if let Some(i) = success.filter(|&i| i > 0) {
                let deadline = outage[i - 1].end + backoff;
                let signed = |at: Instant| {
                    if at >= deadline {
                        (at - deadline).as_secs_f64()
                    } else {
                        -(deadline - at).as_secs_f64()
                    }
                };
                lateness = Some(signed(first_ok));
                dial_lateness = Some(signed(outage[i].start));
                dial_to_ok = Some(first_ok.saturating_duration_since(outage[i].start));
            }
        }
    }
    Trial {
        recovery: first_ok.map(|at| at - back),
        lateness,
        dial_lateness,
        dial_to_ok,
        failed: outcomes.iter().filter(|(_, ok)| !ok).count(),
        requests: outcomes.len(),
        dials: n_dials,
    }
}

struct Row {
    system: String,
    trials: Vec<Trial>,
    has_dials: bool,
}

impl Row {
    fn recoveries(&self) -> Vec<Duration> {
        let mut r: Vec<Duration> = self.trials.iter().filter_map(|t| t.recovery).collect();
        r.sort();
        r
    }
    fn latenesses(&self) -> Vec<f64> {
        self.sorted(|t| t.lateness)
    }
    fn dial_latenesses(&self) -> Vec<f64> {
        self.sorted(|t| t.dial_lateness)
    }
    fn dial_to_oks(&self) -> Vec<f64> {
        self.sorted(|t| t.dial_to_ok.map(|d| d.as_secs_f64()))
    }
    fn sorted(&self, f: impl Fn(&Trial) -> Option<f64>) -> Vec<f64> {
        let mut l: Vec<f64> = self.trials.iter().filter_map(f).collect();
        l.sort_by(f64::total_cmp);
        l
    }
    fn failed_total(&self) -> usize {
        self.trials.iter().map(|t| t.failed).sum()
    }
    fn mean(&self, f: impl Fn(&Trial) -> usize) -> f64 {
        self.trials.iter().map(f).sum::<usize>() as f64 / self.trials.len().max(1) as f64
    }
}

fn rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let r = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[r - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
}

fn ms_u(s: Option<f64>) -> String {
    s.map_or("n/a".into(), |s| format!("{:.2} ms", s * 1e3))
}

fn ms_f(s: Option<f64>) -> String {
    s.map_or("n/a".into(), |s| format!("{:+.2} ms", s * 1e3))
}

fn table(w: &mut String, title: &str, rows: &[Row]) {
    let _ = writeln!(w, "### {title}\n");
    let _ = writeln!(
        w,
        "| system | trials | recovery p50 | p99 | lateness vs schedule p50 / p99 | of which: redial late by p50 / p99 | redial to first success p50 / p99 | failed (mean) | failed (total) | requests (mean) | dials (mean) |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let rec = row.recoveries();
        let missing = row.trials.len() - rec.len();
        let _ = writeln!(
            w,
            "| {} | {}{} | {} | {} | {} / {} | {} / {} | {} / {} | {:.1} | {} | {:.0} | {} |",
            row.system,
            row.trials.len(),
            if missing > 0 {
                format!(" ({missing} never recovered)")
            } else {
                String::new()
            },
            ms(rank(&rec, 0.5)),
            ms(rank(&rec, 0.99)),
            ms_f(rank(&row.latenesses(), 0.5)),
            ms_f(rank(&row.latenesses(), 0.99)),
            ms_f(rank(&row.dial_latenesses(), 0.5)),
            ms_f(rank(&row.dial_latenesses(), 0.99)),
            ms_u(rank(&row.dial_to_oks(), 0.5)),
            ms_u(rank(&row.dial_to_oks(), 0.99)),
            row.mean(|t| t.failed),
            row.failed_total(),
            row.mean(|t| t.requests),
            if row.has_dials {
                format!("{:.1}", row.mean(|t| t.dials))
            } else {
                "n/a".into()
            },
        );
    }
    let _ = writeln!(w);
}

// ---------------------------------------------------------------------------
// Line protocol
// ---------------------------------------------------------------------------

fn get() -> String {
    "GET k".to_string()
}

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(Backoff::fixed(BACKOFF))
        .build()
        .expect("valid policy")
}

#[derive(Clone, Copy, PartialEq)]
enum LineSystem {
    Ours,
    OursResend,
    TowerReconnect,
}

fn line_client(system: LineSystem, addr: SocketAddr, log: DialLog) -> Svc<String, String> {
    let make = logged(
        Handshake::new(TcpConnector::new(), LineConnection::handshake),
        log,
    );
    match system {
        LineSystem::Ours => BoxCloneService::new(
            ServiceBuilder::new()
                .layer(ReconnectLayer::new(policy()))
                .service(make)
                .client(addr),
        ),
        LineSystem::OursResend => BoxCloneService::new(
            ServiceBuilder::new()
                .layer(ReconnectLayer::new(policy()).resend_if(|r: &String| r.starts_with("GET")))
                .service(make)
                .client(addr),
        ),
        LineSystem::TowerReconnect => BoxCloneService::new(Buffer::new(
            tower::reconnect::Reconnect::new(make, addr),
            1024,
        )),
    }
}

fn line_name(system: LineSystem) -> &'static str {
    match system {
        LineSystem::Ours => "tower-redial `ReconnectLayer` (at most once)",
        LineSystem::OursResend => "tower-redial `ReconnectLayer` + `resend_if(GET)`",
        LineSystem::TowerReconnect => "tower `Reconnect` + `Buffer`",
    }
}

async fn line_rows(trials: usize, rst: bool) -> Vec<Row> {
    let systems = [
        LineSystem::Ours,
        LineSystem::OursResend,
        LineSystem::TowerReconnect,
    ];
    let mut rows = Vec::new();
    for system in systems {
        let server = LineServer::start().await;
        let mut row = Row {
            system: line_name(system).into(),
            trials: Vec::new(),
            has_dials: true,
        };
        for _ in 0..trials {
            let log = DialLog::default();
            let svc = line_client(system, server.addr(), log.clone());
            // Connect before the clock starts.
            let _ = svc.clone().oneshot(get()).await;
            let backoff = (system != LineSystem::TowerReconnect).then_some(BACKOFF);
            let t = trial(svc, get, Some(&log), backoff, async {
                let down = Instant::now();
                if rst {
                    server.reset_all().await;
                } else {
                    server.stop().await;
                    sleep(OUTAGE).await;
                    server.restart().await;
                }
                (down, Instant::now())
            })
            .await;
            row.trials.push(t);
        }
        rows.push(row);
    }
    rows
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

async fn redis_rows(trials: usize) -> io::Result<Vec<Row>> {
    use redis::{Cmd, Value};
    use redis_server::RedisServer;
    use tower_redial::redis::MakeRedis;

    fn rget() -> Cmd {
        redis::cmd("GET").arg("k").clone()
    }

    /// A read: safe to send twice.
    fn is_get(cmd: &Cmd) -> bool {
        matches!(cmd.args_iter().next(), Some(redis::Arg::Simple(b"GET")))
    }

    #[derive(Clone, Copy, PartialEq)]
    enum System {
        Ours,
        OursResend,
        TowerReconnect,
        Manager,
    }

    let mut rows = Vec::new();
    for system in [
        System::Ours,
        System::OursResend,
        System::TowerReconnect,
        System::Manager,
    ] {
        let ours = matches!(system, System::Ours | System::OursResend);
        let mut server = RedisServer::try_start(false).await?;
        let mut row = Row {
            system: match system {
                System::Ours => "tower-redial `ReconnectLayer` over `MakeRedis` (at most once)",
                System::OursResend => {
                    "tower-redial `ReconnectLayer` over `MakeRedis` + `resend_if(GET)`"
                }
                System::TowerReconnect => "tower `Reconnect` + `Buffer` over `MakeRedis`",
                System::Manager => "redis-rs `ConnectionManager` (default config)",
            }
            .into(),
            trials: Vec::new(),
            has_dials: system != System::Manager,
        };
        for _ in 0..trials {
            let log = DialLog::default();
            let make = logged(MakeRedis::new(), log.clone());
            let svc: Svc<Cmd, Value> = match system {
                System::Ours => BoxCloneService::new(
                    ServiceBuilder::new()
                        .layer(ReconnectLayer::new(policy()))
                        .service(make)
                        .multiplexed(server.url()),
                ),
                System::OursResend => BoxCloneService::new(
                    ServiceBuilder::new()
                        .layer(ReconnectLayer::new(policy()).resend_if(is_get))
                        .service(make)
                        .multiplexed(server.url()),
                ),
                System::TowerReconnect => BoxCloneService::new(Buffer::new(
                    tower::reconnect::Reconnect::new(make, server.url()),
                    1024,
                )),
                System::Manager => {
                    let manager = redis::Client::open(server.url())
                        .map_err(io::Error::other)?
                        .get_connection_manager()
                        .await
                        .map_err(io::Error::other)?;
                    BoxCloneService::new(service_fn(move |cmd: Cmd| {
                        let mut manager = manager.clone();
                        async move {
                            cmd.query_async::<Value>(&mut manager)
                                .await
                                .map_err(BoxError::from)
                        }
                    }))
                }
            };
            let _ = svc.clone().oneshot(rget()).await;
            let dials = (system != System::Manager).then_some(&log);
            let t = trial(svc, rget, dials, ours.then_some(BACKOFF), async {
                let down = Instant::now();
                server.kill().await;
                sleep(OUTAGE).await;
                // `R` is when the new process is started: it includes
                // redis-server's own start-up time.
                let back = Instant::now();
                server.restart().await;
                (down, back)
            })
            .await;
            row.trials.push(t);
        }
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn goal_lateness(w: &mut String, what: &str, row: &Row) {
    let late = row.latenesses();
    let worst = late.last().copied();
    let never = row.trials.len() - row.recoveries().len();
    let ok = worst.is_some_and(|l| l <= SLACK.as_secs_f64()) && never == 0;
    let dial = row.dial_latenesses();
    let to_ok = row.dial_to_oks();
    let _ = writeln!(
        w,
        "- **Recovery within the scheduled backoff deadline + 1 ms ({what})**: {}; worst \
         lateness {} over {} trials with a computable deadline{}. Of that, the redial itself \
         started {} (p50) / {} (worst) after its deadline: tokio's timer wheel has 1 ms \
         granularity and fires a deadline at the next millisecond tick or later. The rest is \
         the dial, the handshake and the first round trip, behind the requests queued during \
         the outage: {} (p50) / {} (worst) from the dial's start to the first success.",
        verdict(ok),
        ms_f(worst),
        late.len(),
        if never > 0 {
            format!(", {never} trials never recovered")
        } else {
            String::new()
        },
        ms_f(rank(&dial, 0.5)),
        ms_f(dial.last().copied()),
        ms_u(rank(&to_ok, 0.5)),
        ms_u(to_ok.last().copied()),
    );
}

fn goal_zero(w: &mut String, what: &str, row: &Row, why_missed: &str) {
    let failed = row.failed_total();
    let _ = writeln!(
        w,
        "- **Zero failed requests ({what})**: {}; {failed} failed in {} trials{}.",
        verdict(failed == 0),
        row.trials.len(),
        if failed > 0 { why_missed } else { "" }
    );
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let write = common::write_arg();
    let trials: usize = std::env::var("RECOVERY_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);

    let outage = line_rows(trials, false).await;
    let rst = line_rows(trials, true).await;
    let redis = match redis_rows(trials).await {
        Ok(rows) => Some(rows),
        Err(e) => {
            eprintln!("redis part skipped: {e}");
            None
        }
    };

    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "## Recovery\n");
    let _ = writeln!(
        w,
        "Issue 6, item 2, `benches/recovery.rs`: real time on loopback, {trials} trials per \
         system (so p99 is the worst trial). Traffic: {TASKS} tasks, each starting a `GET` \
         every {} ms (open loop, each request its own task, {} s timeout). After {} ms of \
         traffic the listener goes down for {} ms and comes back at `R`; traffic goes on for \
         {} ms more. Ours: `ReconnectLayer` with `Backoff::fixed({} ms)` (no jitter), wait \
         limit 5 s. A fresh client per trial, connected before the trial starts.\n",
        TICK.as_millis(),
        REQUEST_TIMEOUT.as_secs(),
        WARM.as_millis(),
        OUTAGE.as_millis(),
        TAIL.as_millis(),
        BACKOFF.as_millis()
    );
    let _ = writeln!(
        w,
        "- **recovery**: from `R` to the first request that succeeded at or after `R`.\n\
         - **lateness vs schedule**: first success − (end of the last failed dial + the \
         {} ms backoff), i.e. how far past the scheduled redial the first success came; \
         negative = before it (the first redial after a drop is immediate, so when the \
         server is already back it succeeds before any backoff). n/a for systems with no \
         backoff schedule or no dial log.\n\
         - **failed**: requests that failed (or timed out) in the trial; **requests**: all \
         requests of the trial; **dials**: factory calls from the disruption on, the \
         successful one included (counted by a wrapper around the factory).\n",
        BACKOFF.as_millis()
    );
    table(
        w,
        &format!("Line protocol: listener down for {} ms", OUTAGE.as_millis()),
        &outage,
    );
    table(
        w,
        "Line protocol: RST on a healthy connection (`reset_all`), server stays up; `R` = \
         the reset",
        &rst,
    );
    if let Some(rows) = &redis {
        table(
            w,
            &format!(
                "Redis: real `redis-server` killed (`SIGKILL`) and restarted on the same port \
                 after {} ms; `R` = when the new process is spawned (includes its start-up)",
                OUTAGE.as_millis()
            ),
            rows,
        );
    }

    let _ = writeln!(w, "![Recovery time per trial](recovery.svg)\n");
    let _ = writeln!(w, "### Goals\n");
    goal_lateness(w, "line protocol", &outage[0]);
    if let Some(rows) = &redis {
        goal_lateness(w, "redis", &rows[0]);
    }
    goal_zero(
        w,
        "outage shorter than the wait limit, line protocol",
        &outage[0],
        ": requests in flight when `stop()` closed the connection had been written, so \
         at most once fails them; requests issued during the outage itself all waited and \
         succeeded. The goal can only be met for requests that are safe to repeat: see the \
         `resend_if(GET)` line",
    );
    goal_zero(
        w,
        "outage shorter than the wait limit, line protocol, `resend_if(GET)`",
        &outage[1],
        "",
    );
    if let Some(rows) = &redis {
        goal_zero(
            w,
            "outage shorter than the wait limit, redis",
            &rows[0],
            ": requests in flight when the server was killed fail (at most once: they may \
             have run); see the `resend_if(GET)` line",
        );
        goal_zero(
            w,
            "outage shorter than the wait limit, redis, `resend_if(GET)`",
            &rows[1],
            "",
        );
    }
    goal_zero(
        w,
        "RST, at most once",
        &rst[0],
        ": the requests in flight on the reset connection had been written, so they may \
         have run; at most once fails them rather than risk running them twice. This is \
         by design, not a bug; the goal can only be met for idempotent requests",
    );
    goal_zero(w, "RST, `resend_if(GET)`", &rst[1], "");
    let _ = writeln!(
        w,
        "\nFor comparison, tower `Reconnect` + `Buffer` fails {:.1} requests per outage \
         trial and {:.1} per RST trial: it has no backoff and no queue, so each request \
         during an outage redials once and fails with that dial's error. That is also why \
         it recovers sooner after the server returns: the next request dials at once, where \
         ours waits for its next scheduled dial (the backoff is what spares a server that is \
         coming back).\n",
        outage[2].mean(|t| t.failed),
        rst[2].mean(|t| t.failed)
    );
    let _ = writeln!(
        w,
        "Wall-clock numbers on a shared machine: {}. Regenerate with `cargo bench -p \
         tower-redial-interop --bench recovery -- --write docs/BENCHMARKS.md`.",
        common::machine()
    );

    println!("{md}");
    if let Some(path) = write {
        common::write_section(&path, "recovery", &md)?;
        eprintln!("wrote the recovery section of {}", path.display());
        let group = |title: &str, rows: &[Row]| plot::Group {
            title: title.into(),
            strips: rows
                .iter()
                .map(|row| plot::Strip {
                    label: row.system.clone(),
                    recoveries: row.recoveries(),
                })
                .collect(),
        };
        let redis_group = redis
            .as_ref()
            .map(|rows| group("Redis: kill -9, restart after 300 ms", rows));
        let groups: Vec<plot::Group> = [
            Some(group("Line protocol: listener down for 300 ms", &outage)),
            Some(group("Line protocol: RST, server stays up", &rst)),
            redis_group,
        ]
        .into_iter()
        .flatten()
        .collect();
        let svg = path.with_file_name("recovery.svg");
        std::fs::write(&svg, plot::svg(&groups))?;
        eprintln!("wrote {}", svg.display());
    }
    Ok(())
}
