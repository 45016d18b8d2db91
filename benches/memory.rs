//! Memory (issue 6, item 4): bytes per idle client handle, per whole client,
//! per queued request, and live heap / RSS over 10^6 requests with 1,000
//! forced reconnects.
//!
//! Bytes are counted by a counting global allocator in this bench binary
//! (live heap bytes = allocated − freed), so they are exact and repeatable;
//! RSS is read from `/proc/self/status` (Linux only; "n/a" elsewhere).
//!
//! Run with `cargo bench -p tower-redial-interop --bench memory`; it prints a markdown section. With
//! `-- --write PATH` it also puts the section between `<!-- memory:start -->`
//! and `<!-- memory:end -->` in `PATH`.

use tower_redial_interop::report as common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::future::{pending, ready, Ready};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_redial::{BoxError, Client, ReconnectLayer, ReconnectPolicy};

const CLONES: usize = 10_000;
const CLIENTS: usize = 1_000;
const QUEUED: usize = 10_000;
const REQUESTS: u64 = 1_000_000;
const RECONNECTS: u64 = 1_000;
/// Each connection serves this many requests, then its `poll_ready` fails.
const PER_CONNECTION: u64 = REQUESTS / RECONNECTS;
const SAMPLE_EVERY: u64 = 100_000;

// ---------------------------------------------------------------------------
// Counting allocator.

/// Live heap bytes (allocated minus freed) and their high-water mark.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// `System`, plus counters of live bytes.
struct Counting;

impl Counting {
    fn add(n: usize) {
        let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(n: usize) {
        LIVE.fetch_sub(n, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's own arguments,
// unchanged, so `System`'s guarantees carry over; the only addition is
// bookkeeping on atomics, which neither allocates nor touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from this allocator (= System).
        unsafe { System.dealloc(ptr, layout) };
        Self::sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::sub(layout.size());
            Self::add(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Resident set size in bytes, from `/proc/self/status`.
fn rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// ---------------------------------------------------------------------------
// Connections and factories.

/// An echo connection; with a limit, its `poll_ready` fails once it has
/// served that many requests (a forced reconnect).
struct Echo {
    served: u64,
    limit: Option<u64>,
}

impl Service<u64> for Echo {
    type Response = u64;
    type Error = BoxError;
    type Future = Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.limit {
            Some(limit) if self.served >= limit => {
                Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset).into()))
            }
            _ => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.served += 1;
        ready(Ok(req))
    }
}

fn policy(queue: usize) -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .queue_capacity(queue)
        .wait_limit(Duration::from_secs(3600))
        .connect_timeout(Duration::from_secs(3600))
        // Every connection counts as healthy, so every redial is immediate.
        .healthy_after(Duration::from_nanos(1))
        .seed(1)
        .build()
        .expect("valid policy")
}

/// A client over an echo factory whose connections die after `limit`
/// requests; `dials` counts the factory's calls.
fn echo_client(limit: Option<u64>, dials: Arc<AtomicU64>, queue: usize) -> Client<u64, u64> {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(queue)))
        .service(service_fn(move |(): ()| {
            dials.fetch_add(1, Ordering::Relaxed);
            ready(Ok::<_, BoxError>(Echo { served: 0, limit }))
        }))
        .client(())
}

/// A client whose factory never connects.
fn hanging_client(queue: usize) -> Client<u64, u64> {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(queue)))
        .service(service_fn(|(): ()| pending::<Result<Echo, BoxError>>()))
        .client(())
}

/// Lets spawned tasks (the clients' workers) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------
// Measurements.

struct Results {
    handle_inline: usize,
    clone_heap: f64,
    client_idle: f64,
    client_connected: f64,
    future_inline: usize,
    queued_heap: f64,
    series: Vec<Sample>,
    dials: u64,
    failures: u64,
    run_peak_live: usize,
    run_time: Duration,
}

struct Sample {
    requests: u64,
    live: usize,
    rss: Option<usize>,
}

async fn handles(r: &mut Results) {
    let client = echo_client(None, Arc::default(), 1024);
    client.clone().oneshot(1).await.expect("echo");
    r.handle_inline = std::mem::size_of_val(&client);

    let mut clones = Vec::with_capacity(CLONES);
    let before = live();
    for _ in 0..CLONES {
        clones.push(client.clone());
    }
    r.clone_heap = (live() as f64 - before as f64) / CLONES as f64;
    drop(clones);

    // Whole clients: worker task, Reconnect, queue; idle, then connected.
    let mut clients = Vec::with_capacity(CLIENTS);
    let dials = Arc::new(AtomicU64::new(0));
    settle().await;
    let before = live();
    for _ in 0..CLIENTS {
        clients.push(echo_client(None, dials.clone(), 1024));
    }
    settle().await;
    r.client_idle = (live() as f64 - before as f64) / CLIENTS as f64;
    for c in &clients {
        c.clone().oneshot(7).await.expect("echo");
    }
    settle().await;
    r.client_connected = (live() as f64 - before as f64) / CLIENTS as f64;
    drop(clients);
    settle().await;
}

async fn queued(r: &mut Results) {
    let mut client = hanging_client(100_000);
    // Warm up: the first request starts the (never-ending) dial.
    let first = client.ready().await.expect("room").call(0);
    settle().await;
    r.future_inline = std::mem::size_of_val(&first);
    let mut futures = Vec::with_capacity(QUEUED);
    let before = live();
    for i in 0..QUEUED {
        let f = client.ready().await.expect("room").call(i as u64);
        futures.push(f);
    }
    settle().await;
    r.queued_heap = (live() as f64 - before as f64) / QUEUED as f64;
    drop(futures);
    drop(first);
    drop(client);
    settle().await;
}

async fn churn(r: &mut Results) {
    let dials = Arc::new(AtomicU64::new(0));
    let mut client = echo_client(Some(PER_CONNECTION), dials.clone(), 1024);
    let mut series = Vec::with_capacity((REQUESTS / SAMPLE_EVERY) as usize);
    let started = Instant::now();
    PEAK.store(live(), Ordering::Relaxed);
    for i in 0..REQUESTS {
        let res = async { client.ready().await?.call(i).await }.await;
        match res {
            Ok(v) => debug_assert_eq!(v, i),
            Err(_) => r.failures += 1,
        }
        if (i + 1) % SAMPLE_EVERY == 0 {
            series.push(Sample {
                requests: i + 1,
                live: live(),
                rss: rss(),
            });
        }
    }
    r.run_time = started.elapsed();
    r.run_peak_live = PEAK.load(Ordering::Relaxed);
    r.dials = dials.load(Ordering::Relaxed);
    r.series = series;
}

// ---------------------------------------------------------------------------
// Report.

/// Flat: the last sample is within 10 % or 1 MiB of the first (after the
/// first 10^5 requests of warm-up).
fn flat(first: usize, last: usize) -> bool {
    let growth = last.saturating_sub(first);
    growth <= (1 << 20) || (growth as f64) <= 0.10 * first as f64
}

fn kib(b: f64) -> String {
    format!("{:.1} KiB", b / 1024.0)
}

fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "## Memory\n");
    let _ = writeln!(
        w,
        "Issue 6, item 4, `benches/memory.rs`: live heap bytes from a counting global \
         allocator in the bench binary (exact: bytes allocated minus bytes freed), and RSS \
         from `/proc/self/status`. The connection is an in-process echo service (`u64` in, \
         same `u64` out); the factory is a `service_fn`. One current-thread tokio runtime. \
         \"Inline\" is `size_of` of the value itself, wherever the caller keeps it; \"heap\" \
         is what it allocates.\n"
    );
    let _ = writeln!(w, "| what | inline | heap | note |");
    let _ = writeln!(w, "|---|---:|---:|---|");
    let _ = writeln!(
        w,
        "| idle client handle (a clone) | {} B | {:.1} B | {CLONES} clones of one connected client |",
        r.handle_inline, r.clone_heap
    );
    let _ = writeln!(
        w,
        "| new client, not yet dialed | {} B | {} | {CLIENTS} clients: worker task, `Reconnect`, queue, retry budget, state watch |",
        r.handle_inline,
        kib(r.client_idle)
    );
    let _ = writeln!(
        w,
        "| new client, connected | {} B | {} | the same after one request each |",
        r.handle_inline,
        kib(r.client_connected)
    );
    let _ = writeln!(
        w,
        "| queued request | {} B | {:.0} B | {QUEUED} requests (`ready()` + `call()`, futures kept) on a client whose dial never finishes; queue capacity 100,000; heap includes the queue's slot and the caller's response channel |",
        r.future_inline, r.queued_heap
    );
    let _ = writeln!(
        w,
        "\nSo a queued request costs about {:.0} B in all (heap + the caller's future kept inline).\n",
        r.queued_heap + r.future_inline as f64
    );

    let _ = writeln!(w, "### 10^6 requests, {RECONNECTS} forced reconnects\n");
    let _ = writeln!(
        w,
        "One client, one caller, {REQUESTS} sequential requests (`ready().await` + \
         `call().await`); every connection's `poll_ready` fails after {PER_CONNECTION} \
         requests, so the client redials (`healthy_after` = 1 ns, so each redial is \
         immediate). Dials: {} (the first connect and {} reconnects; the last connection dies \
         after the last request); failed requests: {}; time: {:.2} s; peak live heap during the \
         run: {}.\n",
        r.dials,
        r.dials.saturating_sub(1),
        r.failures,
        r.run_time.as_secs_f64(),
        kib(r.run_peak_live as f64)
    );
    let _ = writeln!(w, "| requests | live heap | RSS |");
    let _ = writeln!(w, "|---:|---:|---:|");
    for s in &r.series {
        let _ = writeln!(
            w,
            "| {} | {} | {} |",
            s.requests,
            kib(s.live as f64),
            s.rss.map_or_else(|| "n/a".into(), |b| kib(b as f64))
        );
    }
    let (first, last) = (r.series.first(), r.series.last());
    let heap_flat = match (first, last) {
        (Some(f), Some(l)) => flat(f.live, l.live),
        _ => false,
    };
    let rss_flat = match (first.and_then(|s| s.rss), last.and_then(|s| s.rss)) {
        (Some(f), Some(l)) => Some(flat(f, l)),
        _ => None,
    };
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    let _ = writeln!(
        w,
        "\n**flat: {}** (live heap: {}; RSS: {}). Flat means the last sample is within 10 % \
         or 1 MiB of the first, taken after 10^5 requests of warm-up.\n",
        yes(heap_flat && rss_flat.unwrap_or(true)),
        yes(heap_flat),
        rss_flat.map_or("n/a", yes)
    );
    let _ = writeln!(
        w,
        "Generated on {} with `cargo bench -p tower-redial-interop --bench memory -- --write docs/BENCHMARKS.md`.",
        common::machine()
    );
    md
}

fn main() -> io::Result<()> {
    let write = common::write_arg();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut r = Results {
        handle_inline: 0,
        clone_heap: 0.0,
        client_idle: 0.0,
        client_connected: 0.0,
        future_inline: 0,
        queued_heap: 0.0,
        series: Vec::new(),
        dials: 0,
        failures: 0,
        run_peak_live: 0,
        run_time: Duration::ZERO,
    };
    rt.block_on(async {
        handles(&mut r).await;
        queued(&mut r).await;
        churn(&mut r).await;
    });

    let section = markdown(&r);
    println!("{section}");
    if let Some(path) = write {
        common::write_section(&path, "memory", &section)?;
        eprintln!("wrote the memory section of {}", path.display());
    }
    Ok(())
}
