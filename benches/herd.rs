//! Herd: 1,000 clients lose the same server, for 10 s and for 60 s (issue
//! 15, point 3).
//!
//! A deterministic simulation in virtual time: 1,000 real [`Reconnect`]
//! services, each with its own seed, run as tasks on a current-thread tokio
//! runtime with paused time. All of them connect at the start and send a
//! cheap request every 50 ms. At `t0` the server goes away: every
//! established connection's `poll_ready` fails and every dial is refused,
//! until `t1`, when dials connect again. Every dial's virtual timestamp is
//! logged.
//!
//! What a returning server feels is the reconnection wave: the connections
//! it accepts per 100 ms from `t1` on, and how long the last clients wait.
//! The goals: the wave's peak at most twice its mean, p99 of the time to
//! reconnect at most 2 s after `t1`, and at most 60 dials per client during
//! a 60 s outage (on average at most one a second against a server that is
//! down). Every kind of jitter is run on the default's base, multiplier and
//! cap, with the old default (100 ms × 2, cap 30 s, full jitter) beside them.
//!
//! Run with `cargo bench -p tower-redial-interop --bench herd`; it prints a
//! markdown section and writes `docs/herd.svg`. With
//! `-- --write docs/BENCHMARKS.md` it also puts the section between
//! `<!-- herd:start -->` and `<!-- herd:end -->` in that file, and its goals
//! in the summary at the top.
//!
//! Because the clock is virtual and every jitter source is seeded, the
//! numbers are the same on every run and on every machine.

use tower_redial_interop::report as common;

use std::fmt::Write as _;
use std::future::{ready, Ready};
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{jitter_name, shape, Goal, Verdict};
use tokio::time::{sleep_until, Instant};
use tower::{Service, ServiceExt};
use tower_redial::reconnect::Reconnect;
use tower_redial::{Backoff, Jitter, ReconnectPolicy};

const CLIENTS: u32 = 1_000;
/// Connected and healthy for this long before the outage.
const WARMUP: Duration = Duration::from_secs(2);
/// The outages measured. The goals are for the 10 s and 60 s ones; the 1 s
/// one is point 2's outage, in virtual time: the schedule alone, with no
/// server start-up and no real clock.
const OUTAGES: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
];
/// The outages the goals are for.
const GOAL_OUTAGES: [Duration; 2] = [OUTAGES[1], OUTAGES[2]];
const BUCKET: Duration = Duration::from_millis(100);
/// How often each connected client sends a request (and so notices a drop).
const TICK: Duration = Duration::from_millis(50);

/// The goals.
const PEAK_OVER_MEAN: f64 = 2.0;
const P99_LIMIT: Duration = Duration::from_secs(2);
/// Dials per client during a 60 s outage.
const DIALS_PER_MINUTE: f64 = 60.0;

/// The server's schedule and the log of every dial.
struct World {
    t0: Instant,
    t1: Instant,
    /// `(when, connected)` for every dial.
    dials: Mutex<Vec<(Instant, bool)>>,
}

impl World {
    fn down(&self, now: Instant) -> bool {
        self.t0 <= now && now < self.t1
    }
}

/// The connection factory of one client: refuses during the outage.
#[derive(Clone)]
struct Factory(Arc<World>);

impl Service<u32> for Factory {
    type Response = Conn;
    type Error = io::Error;
    type Future = Ready<Result<Conn, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _client: u32) -> Self::Future {
        let now = Instant::now();
        let up = !self.0.down(now);
        self.0.dials.lock().unwrap().push((now, up));
        ready(if up {
            Ok(Conn {
                born: now,
                world: self.0.clone(),
            })
        } else {
            Err(io::ErrorKind::ConnectionRefused.into())
        })
    }
}

/// A connection: dies when the outage starts, if it was made before it.
struct Conn {
    born: Instant,
    world: Arc<World>,
}

impl Service<()> for Conn {
    type Response = ();
    type Error = io::Error;
    type Future = Ready<Result<(), io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        if self.born < self.world.t0 && Instant::now() >= self.world.t0 {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(()))
    }
}

/// One client: a request every tick until it is connected again after the
/// server came back. Returns when that was.
async fn client(mut svc: Reconnect<Factory, u32>, world: Arc<World>, start: Instant) -> Instant {
    let mut next = start;
    loop {
        let ready = ServiceExt::<()>::ready(&mut svc)
            .await
            .expect("the policy has no limits, so it never closes");
        let now = Instant::now();
        ready
            .call(())
            .await
            .expect("requests on a live connection succeed");
        if now >= world.t1 {
            return now;
        }
        next += TICK;
        if next > now {
            sleep_until(next).await;
        }
    }
}

/// One policy under one outage.
struct Run {
    outage: Duration,
    /// Failed dials in `[t0, t1)`, over all clients.
    outage_dials: usize,
    /// Connections accepted per bucket from `t1` to the last one.
    wave: Vec<usize>,
    /// Each client's time from `t1` to its first successful request, sorted.
    reconnect: Vec<Duration>,
}

fn simulate(backoff: &Backoff, outage: Duration) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let start = Instant::now();
        let t0 = start + WARMUP;
        let world = Arc::new(World {
            t0,
            t1: t0 + outage,
            dials: Mutex::new(Vec::new()),
        });
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let policy = ReconnectPolicy::builder()
                    .backoff(backoff.clone())
                    .wait_limit(Duration::from_secs(3600))
                    .seed(u64::from(i))
                    .build()
                    .expect("valid policy");
                let svc = Reconnect::new(Factory(world.clone()), i, policy);
                tokio::spawn(client(svc, world.clone(), start))
            })
            .collect();
        let mut reconnect = Vec::new();
        for task in tasks {
            let at = task.await.expect("client task");
            reconnect.push(at - world.t1);
        }
        reconnect.sort();
        let dials = world.dials.lock().unwrap();
        let outage_dials = dials.iter().filter(|(at, _)| world.down(*at)).count();
        let accepted: Vec<Duration> = dials
            .iter()
            .filter(|(at, up)| *up && *at >= world.t1)
            .map(|(at, _)| *at - world.t1)
            .collect();
        let last = accepted.iter().max().copied().unwrap_or_default();
        let mut wave = vec![0; bucket_of(last) + 1];
        for at in accepted {
            wave[bucket_of(at)] += 1;
        }
        Run {
            outage,
            outage_dials,
            wave,
            reconnect,
        }
    })
}

fn bucket_of(offset: Duration) -> usize {
    (offset.as_nanos() / BUCKET.as_nanos()) as usize
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl Run {
    fn peak(&self) -> usize {
        self.wave.iter().copied().max().unwrap_or(0)
    }

    /// Connections per bucket over the wave, from `t1` to the bucket of the
    /// last one.
    fn mean(&self) -> f64 {
        self.wave.iter().sum::<usize>() as f64 / self.wave.len().max(1) as f64
    }

    fn ratio(&self) -> f64 {
        self.peak() as f64 / self.mean()
    }

    fn p99(&self) -> Duration {
        percentile(&self.reconnect, 0.99)
    }

    fn dials_per_client(&self) -> f64 {
        self.outage_dials as f64 / f64::from(CLIENTS)
    }
}

/// A backoff under test, with its runs for each outage.
struct Policy {
    /// `100 ms × 1.1, cap 1.6 s`.
    shape: String,
    /// The jitter's name, with `(default)` or `(old default)`.
    jitter: String,
    color: &'static str,
    is_default: bool,
    runs: Vec<Run>,
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `value`, marked when it misses its goal.
fn mark(value: String, ok: bool) -> String {
    if ok {
        value
    } else {
        format!("**{value}**")
    }
}

fn markdown(policies: &[Policy], default: &Backoff) -> (String, Vec<Goal>) {
    let [short, ten, long] = OUTAGES;
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "## Herd: the reconnection wave\n");
    let _ = writeln!(
        w,
        "Issue 15, point 3, `benches/herd.rs`: {CLIENTS} clients lose their server, for {} s \
         and for {} s (and for {} s, point 2's outage). Each client is a real `Reconnect` with \
         its own seed (`ReconnectPolicy::builder().seed(i)`); the wait limit is 1 h so \
         failing fast never interferes. All clients are connected and healthy, sending a \
         request every {} ms, when at `t0` every connection fails and every dial is refused; \
         at `t1` dials connect again. Every kind of jitter runs on the default's base, \
         multiplier and cap ({}); the old default is there for comparison.\n",
        ten.as_secs(),
        long.as_secs(),
        short.as_secs(),
        TICK.as_millis(),
        shape(default),
    );
    let _ = writeln!(
        w,
        "- **wave**: connections the returning server accepts per 100 ms, from `t1` to the \
         bucket of the last one; **mean** is the {CLIENTS} connections over that many \
         buckets. Goal: peak ≤ {PEAK_OVER_MEAN} × mean.\n\
         - **reconnect**: from `t1` to each client's first successful request \
         (nearest-rank percentiles over the {CLIENTS} clients). Goal: p99 ≤ {}.\n\
         - **dials / client**: refused dials per client during the outage, the immediate \
         redial after the drop included. Goal: ≤ {DIALS_PER_MINUTE:.0} during the {} s \
         outage.\n\
         - The goals are for the {} s and {} s outages; cells in **bold** miss one. The \
         {} s rows are the schedule alone under point 2's outage: no server start-up, no \
         real clock (real servers: the section on recovery against redis-rs).\n",
        secs(P99_LIMIT),
        long.as_secs(),
        ten.as_secs(),
        long.as_secs(),
        short.as_secs(),
    );
    let _ = writeln!(
        w,
        "| backoff | jitter | outage | wave peak / 100 ms | wave mean / 100 ms | peak / mean | \
         reconnect p50 | p99 | max | dials / client |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for policy in policies {
        for run in &policy.runs {
            let goal = GOAL_OUTAGES.contains(&run.outage);
            let _ = writeln!(
                w,
                "| {} | {} | {} s | {} | {:.1} | {} | {} | {} | {} | {} |",
                policy.shape,
                policy.jitter,
                run.outage.as_secs(),
                run.peak(),
                run.mean(),
                mark(
                    format!("{:.2}", run.ratio()),
                    !goal || run.ratio() <= PEAK_OVER_MEAN
                ),
                secs(percentile(&run.reconnect, 0.5)),
                mark(secs(run.p99()), !goal || run.p99() <= P99_LIMIT),
                secs(*run.reconnect.last().expect("clients")),
                mark(
                    format!("{:.1}", run.dials_per_client()),
                    run.outage != long || run.dials_per_client() <= DIALS_PER_MINUTE
                ),
            );
        }
    }
    let old_run = |outage: Duration| {
        policies
            .iter()
            .find(|p| p.jitter.ends_with("(old default)"))
            .and_then(|p| p.runs.iter().find(|r| r.outage == outage))
    };
    let mut goals = Vec::new();
    let policy = policies
        .iter()
        .find(|p| p.is_default)
        .expect("the default is simulated");
    let runs: Vec<&Run> = policy
        .runs
        .iter()
        .filter(|r| GOAL_OUTAGES.contains(&r.outage))
        .collect();
    let per_outage = |f: &dyn Fn(&Run) -> String| {
        runs.iter()
            .map(|r| format!("{} ({} s)", f(r), r.outage.as_secs()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dials = policy
        .runs
        .iter()
        .find(|r| r.outage == long)
        .map_or(f64::NAN, Run::dials_per_client);
    goals.push(Goal {
        point: "3",
        goal: format!("herd: reconnection wave peak ≤ {PEAK_OVER_MEAN} × its mean"),
        measure: format!(
            "connections accepted per 100 ms after the return, {CLIENTS} simulated clients, \
             outages of {} s and {} s, default policy",
            ten.as_secs(),
            long.as_secs()
        ),
        value: per_outage(&|r| format!("{:.2}", r.ratio())),
        verdict: Verdict::from(runs.iter().all(|r| r.ratio() <= PEAK_OVER_MEAN)),
    });
    goals.push(Goal {
        point: "3",
        goal: format!("herd: p99 time to reconnect ≤ {}", secs(P99_LIMIT)),
        measure: "from the server's return to each client's first success, same runs".into(),
        value: per_outage(&|r| secs(r.p99())),
        verdict: Verdict::from(runs.iter().all(|r| r.p99() <= P99_LIMIT)),
    });
    goals.push(Goal {
        point: "3",
        goal: format!(
            "herd: ≤ {DIALS_PER_MINUTE:.0} dials per client during a {} s outage",
            long.as_secs()
        ),
        measure: "refused dials per client, same simulation, default policy".into(),
        value: format!("{dials:.1}"),
        verdict: Verdict::from(dials <= DIALS_PER_MINUTE),
    });
    let _ = writeln!(
        w,
        "\n### Goals, default policy ({})\n",
        common::describe(default)
    );
    for goal in &goals {
        let _ = writeln!(w, "- **{}**: {}; {}.", goal.goal, goal.verdict, goal.value);
    }
    let _ = writeln!(
        w,
        "\nThe goals pull against each other, and against a fast return (point 2). A flat \
         wave needs the clients' next dials spread evenly over the time after `t1`; p99 ≤ \
         2 s needs that time short, so every client must dial at least about every 2 s; \
         ≤ 60 dials a minute needs a client's dials to be a second apart on average. Once \
         the delays reach the cap, the jitter sets all three: full jitter's delays are \
         uniform in `[0, cap]`, so the wave falls from twice its mean (the goal's limit) \
         and a client dials every `cap / 2` on average; equal jitter's are in \
         `[cap / 2, cap]`; proportional jitter `±f` puts them in `[cap × (1 − f), cap × \
         (1 + f)]`, so the wave is flat once the clients have spread out, a client dials every `cap` on average, and no \
         delay exceeds `cap × (1 + f)`: 2 s for the default. No jitter keeps every client \
         on the same schedule, so the whole herd returns in one bucket. Decorrelated \
         jitter ignores the multiplier and grows about twice as fast, so it reaches the cap \
         sooner: it meets this section's goals, but after a short outage its clients wait \
         several times longer than the default's (the {} s rows). The old default's delays double up to 30 s: after a {} s outage its \
         clients wait {} at the median and up to {}, and after {} s its wave lasts {}.\n",
        short.as_secs(),
        short.as_secs(),
        old_run(short).map_or("n/a".into(), |r| secs(percentile(&r.reconnect, 0.5))),
        old_run(short).map_or("n/a".into(), |r| secs(*r.reconnect.last().expect("clients"))),
        ten.as_secs(),
        old_run(ten).map_or("n/a".into(), |r| secs(*r.reconnect.last().expect("clients"))),
    );
    let _ = writeln!(
        w,
        "![Connections accepted per 100 ms after the server's return](herd.svg)\n\n\
         The simulation runs in virtual time (tokio's paused clock) with seeded jitter, so \
         these numbers are deterministic and machine-independent; generated on {} with \
         `cargo bench -p tower-redial-interop --bench herd -- --write docs/BENCHMARKS.md`.",
        common::machine()
    );
    (md, goals)
}

/// The reconnection wave, one panel per outage, one step line per policy.
fn svg(policies: &[Policy]) -> String {
    // Long enough for every wave of the new schedule; the old default's
    // goes on, off the plot, and the table says for how long.
    let span_s = 3.0;
    let (w, panel_h) = (1080.0, 300.0);
    let (left, right, top, gap, bottom) = (70.0, 410.0, 60.0, 70.0, 50.0);
    let h = top + 2.0 * panel_h + gap + bottom;
    let pw = w - left - right;
    // The scale is for the waves that spread out; a wave that does not (no
    // jitter: every client in one bucket) is cut at the top, and labelled.
    let spread = policies
        .iter()
        .flat_map(|p| p.runs.iter())
        .filter(|r| GOAL_OUTAGES.contains(&r.outage))
        .map(Run::peak)
        .filter(|&peak| peak < CLIENTS as usize / 2)
        .max()
        .unwrap_or(1);
    let y_top = (spread as f64 * 1.5 / 50.0).ceil() * 50.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{CLIENTS} clients: connections accepted per 100 ms after the server's return</text>"#,
        w / 2.0
    );
    for (panel, outage) in GOAL_OUTAGES.iter().enumerate() {
        let ptop = top + panel as f64 * (panel_h + gap);
        let x = |s: f64| left + pw * s / span_s;
        let y = |n: f64| ptop + panel_h - panel_h * n.min(y_top) / y_top;
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{:.1}" text-anchor="middle" font-weight="bold">server down for {} s</text>"#,
            left + pw / 2.0,
            ptop - 6.0,
            outage.as_secs()
        );
        let steps = (y_top / 50.0) as usize;
        for i in 0..=steps {
            let v = i as f64 * 50.0;
            let yy = y(v);
            let _ = writeln!(
                o,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
                left + pw,
                left - 6.0,
                yy + 4.0
            );
        }
        let mut s = 0.0;
        while s <= span_s + 1e-9 {
            let xx = x(s);
            let _ = writeln!(
                o,
                r##"<line x1="{xx:.1}" y1="{}" x2="{xx:.1}" y2="{}" stroke="#333"/><text x="{xx:.1}" y="{}" text-anchor="middle">{s:.1}</text>"##,
                ptop + panel_h,
                ptop + panel_h + 5.0,
                ptop + panel_h + 19.0
            );
            s += 0.5;
        }
        let _ = writeln!(
            o,
            r##"<rect x="{left}" y="{ptop}" width="{pw}" height="{panel_h}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            o,
            r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">connections / 100 ms</text>"#,
            ptop + panel_h / 2.0
        );
        for policy in policies {
            let Some(run) = policy.runs.iter().find(|r| r.outage == *outage) else {
                continue;
            };
            let mut points = String::new();
            for (b, &n) in run.wave.iter().enumerate() {
                let (s0, s1) = (b as f64 * 0.1, (b + 1) as f64 * 0.1);
                if s0 >= span_s {
                    break;
                }
                let yy = y(n as f64);
                let _ = write!(
                    points,
                    "{:.1},{yy:.1} {:.1},{yy:.1} ",
                    x(s0),
                    x(s1.min(span_s))
                );
            }
            if let Some((b, &n)) = run.wave.iter().enumerate().find(|(_, &n)| n as f64 > y_top) {
                let _ = writeln!(
                    o,
                    r#"<text x="{:.1}" y="{:.1}" fill="{}">{}: {n} in one bucket (cut)</text>"#,
                    x(b as f64 * 0.1 + 0.1) + 4.0,
                    ptop + 14.0,
                    policy.color,
                    escape(&policy.jitter)
                );
            }
            let width = if policy.is_default { 3.0 } else { 1.5 };
            let _ = writeln!(
                o,
                r#"<polyline fill="none" stroke="{}" stroke-width="{width}" stroke-opacity="0.85" points="{}"/>"#,
                policy.color,
                points.trim_end()
            );
        }
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the server came back (t1); 100 ms buckets; peaks above the axis are cut</text>"#,
        left + pw / 2.0,
        h - 14.0
    );
    for (i, policy) in policies.iter().enumerate() {
        let ly = top + 20.0 + 22.0 * i as f64;
        let lx = left + pw + 15.0;
        let width = if policy.is_default { 5.0 } else { 3.0 };
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="{width}"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            policy.color,
            lx + 30.0,
            ly + 4.0,
            escape(&format!("{}, jitter {}", policy.shape, policy.jitter))
        );
    }
    let _ = writeln!(o, "</svg>");
    o
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn main() -> io::Result<()> {
    let write = common::write_arg();
    let default = Backoff::default();
    let old = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(30))
        .jitter(Jitter::Full);

    // Every kind of jitter on the default's shape; the default's own
    // proportional fraction, or gRPC's if the default is not proportional.
    let proportional = match default.jitter_kind() {
        Jitter::Proportional(f) => Jitter::Proportional(f),
        _ => Jitter::Proportional(0.2),
    };
    let kinds = [
        ("#d62728", Jitter::None),
        ("#ff7f0e", Jitter::Equal),
        ("#1f77b4", Jitter::Full),
        ("#2ca02c", Jitter::Decorrelated),
        ("#000000", proportional),
    ];
    let mut backoffs: Vec<(&str, Backoff)> = kinds
        .into_iter()
        .map(|(color, jitter)| (color, default.clone().jitter(jitter)))
        .collect();
    if !backoffs.iter().any(|(_, b)| *b == default) {
        backoffs.push(("#000000", default.clone()));
    }
    backoffs.push(("#9467bd", old.clone()));

    let policies: Vec<Policy> = backoffs
        .into_iter()
        .map(|(color, backoff)| {
            let is_default = backoff == default;
            let label = if is_default {
                " (default)"
            } else if backoff == old {
                " (old default)"
            } else {
                ""
            };
            Policy {
                runs: OUTAGES.iter().map(|&o| simulate(&backoff, o)).collect(),
                shape: shape(&backoff),
                jitter: format!("{}{label}", jitter_name(backoff.jitter_kind())),
                color,
                is_default,
            }
        })
        .collect();

    let (section, goals) = markdown(&policies, &default);
    println!("{section}");
    let svg_path = common::repo_root().join("docs/herd.svg");
    std::fs::create_dir_all(svg_path.parent().expect("docs dir"))?;
    std::fs::write(&svg_path, svg(&policies))?;
    eprintln!("wrote {}", svg_path.display());
    if let Some(path) = write {
        common::write_section(&path, "herd", &section)?;
        common::write_goals(&path, "herd", &goals)?;
        eprintln!("wrote the herd section of {}", path.display());
    }
    Ok(())
}
