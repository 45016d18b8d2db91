//! Per-request overhead on an in-process echo connection (issue 6, item 1).
//!
//! Seven stacks, each answering `u64 -> u64` with the same echo connection:
//!
//! - `a_bare`: the echo service called directly;
//! - `b_buffer`: tower's `Buffer` over it;
//! - `c_tower_reconnect`: tower's `Buffer` over tower's `reconnect::Reconnect`;
//! - `d_resilience`: tower-resilience's `ReconnectLayer` (its service is
//!   `Clone` and shares the connection itself, so it has no `Buffer`);
//! - `e_redial`: this crate's `ReconnectLayer`, bound with
//!   `MakeReconnect::multiplexed` as a `Clone` connection such as this one
//!   should be: once the connection has proved healthy, each handle calls its
//!   own clone of it directly (the direct lane);
//! - `f_redial_queue`: the same bound with `MakeReconnect::client`, so every
//!   request crosses the queue to the worker task (`Retry` over `Buffer` over
//!   `Reconnect`), as for a connection that is not `Clone`;
//! - `g_buffer_boxed`: tower's `Buffer` over the echo with its response
//!   future boxed, as (f)'s must be: `Client<Req, Res>` names only the
//!   request and the response, so the connection's future type is erased.
//!   (g) against (b) is what that one allocation costs, whoever queues.
//!
//! Every request is `ready().await` then `call().await` on a clone held by
//! the caller (clones are made outside the timed loop). Connections are
//! established before anything is timed.
//!
//! - `overhead_1_caller`: one caller on a current-thread runtime.
//! - `overhead_64_callers`: 64 caller tasks, each with its own clone, on a
//!   multi-thread runtime with 2 workers; criterion's per-iteration time is
//!   for 64 requests (`Throughput::Elements(64)`).
//!
//! `scripts/bench` runs this and writes the tables in `docs/BENCHMARKS.md`.
//!
//! Side by side: `OVERHEAD_ROUNDS=<n>` runs the queue paths (b), (f) and
//! (g) with 64 callers in turn, round after round (see [`rounds`]): the
//! 64-caller goal is taken from it, since criterion's separate runs of
//! each stack drift apart on a shared machine.
//!
//! Profiling: `OVERHEAD_PROFILE=<a|b|c|d|e|f|g> OVERHEAD_N=<requests>` runs that
//! stack's one-caller loop `N` times without criterion, for
//! `valgrind --tool=callgrind`.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput};
use tokio::runtime::{Builder, Runtime};
use tower::buffer::Buffer;
use tower::util::ServiceFn;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_redial::{ReconnectLayer, ReconnectPolicy};

/// Concurrent callers in the second group.
const CALLERS: u64 = 64;
/// Queue size for the `Buffer`s; the same as `ReconnectPolicy::default()`'s.
const QUEUE: usize = 1024;

type Echo = ServiceFn<fn(u64) -> Ready<Result<u64, Infallible>>>;

fn echo_fn(request: u64) -> Ready<Result<u64, Infallible>> {
    ready(Ok(request))
}

/// The connection: answers with the request.
fn echo() -> Echo {
    service_fn(echo_fn as fn(u64) -> Ready<Result<u64, Infallible>>)
}

/// The connection factory: a new echo connection, at once. Its future is
/// `Ready`, which is `Unpin` as tower's `Reconnect` needs.
fn make_echo(_target: ()) -> Ready<Result<Echo, Infallible>> {
    ready(Ok(echo()))
}

type MakeEcho = ServiceFn<fn(()) -> Ready<Result<Echo, Infallible>>>;

fn make() -> MakeEcho {
    service_fn(make_echo as fn(()) -> Ready<Result<Echo, Infallible>>)
}

/// One request: wait for readiness, then call.
async fn request<S>(service: &mut S, x: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: Debug,
{
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(x)
        .await
        .expect("call");
    debug_assert_eq!(response, x);
    response
}

/// The stacks, built inside `rt` (their worker tasks live there), and
/// warmed up with one request each so that the connection is up.
fn with_stacks(rt: &Runtime, mut each: impl FnMut(&'static str, Stack)) {
    let _guard = rt.enter();
    let stacks: Vec<(&'static str, Stack)> = vec![
        ("a_bare", Stack::A(echo())),
        ("b_buffer", Stack::B(Buffer::new(echo(), QUEUE))),
        (
            "c_tower_reconnect",
            Stack::C(Buffer::new(
                tower::reconnect::Reconnect::new(make(), ()),
                QUEUE,
            )),
        ),
        (
            "d_resilience",
            Stack::D(
                tower_resilience::reconnect::ReconnectLayer::new(
                    tower_resilience::reconnect::ReconnectConfig::default(),
                )
                .layer(make()),
            ),
        ),
        (
            "e_redial",
            Stack::E(
                ServiceBuilder::new()
                    .layer(ReconnectLayer::new(ReconnectPolicy::default()))
                    .service(make())
                    .multiplexed(()),
            ),
        ),
        (
            "f_redial_queue",
            Stack::F(
                ServiceBuilder::new()
                    .layer(ReconnectLayer::new(ReconnectPolicy::default()))
                    .service(make())
                    .client(()),
            ),
        ),
        (
            "g_buffer_boxed",
            Stack::G(Buffer::new(
                echo().map_future(|future| Box::pin(future) as BoxedEcho),
                QUEUE,
            )),
        ),
    ];
    for (name, mut stack) in stacks {
        rt.block_on(stack.warm_up());
        each(name, stack);
    }
}

type BufferB = Buffer<u64, Ready<Result<u64, Infallible>>>;
type BufferC = Buffer<u64, <tower::reconnect::Reconnect<MakeEcho, ()> as Service<u64>>::Future>;
type ResilienceD = tower_resilience::reconnect::ReconnectService<MakeEcho, ()>;
type RedialE = tower_redial::Client<u64, u64>;
type BoxedEcho =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, Infallible>> + Send>>;
type BufferG = Buffer<u64, BoxedEcho>;

enum Stack {
    A(Echo),
    B(BufferB),
    C(BufferC),
    D(ResilienceD),
    E(RedialE),
    F(RedialE),
    G(BufferG),
}

/// Calls `$f` with the concrete service inside `$stack`.
macro_rules! dispatch {
    ($stack:expr, |$s:ident| $body:expr) => {
        match $stack {
            Stack::A($s) => $body,
            Stack::B($s) => $body,
            Stack::C($s) => $body,
            Stack::D($s) => $body,
            Stack::E($s) => $body,
            Stack::F($s) => $body,
            Stack::G($s) => $body,
        }
    };
}

impl Stack {
    async fn warm_up(&mut self) {
        for x in 0..16 {
            dispatch!(self, |s| request(s, x).await);
        }
    }
}

fn one_caller<S>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &str,
    service: S,
) where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut service = service.clone();
            async move {
                let start = Instant::now();
                for x in 0..iters {
                    black_box(request(&mut service, x).await);
                }
                start.elapsed()
            }
        })
    });
}

fn many_callers<S>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &str,
    service: S,
) where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let clones: Vec<S> = (0..CALLERS).map(|_| service.clone()).collect();
            async move {
                let start = Instant::now();
                let callers: Vec<_> = clones
                    .into_iter()
                    .map(|mut service| {
                        tokio::spawn(async move {
                            for x in 0..iters {
                                black_box(request(&mut service, x).await);
                            }
                        })
                    })
                    .collect();
                for caller in callers {
                    caller.await.expect("caller task");
                }
                start.elapsed()
            }
        })
    });
}

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn bench(c: &mut Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("overhead_1_caller");
    group.throughput(Throughput::Elements(1));
    with_stacks(&rt, |name, stack| {
        dispatch!(stack, |s| one_caller(&mut group, &rt, name, s))
    });
    group.finish();

    let rt = multi_thread();
    let mut group = c.benchmark_group("overhead_64_callers");
    group.throughput(Throughput::Elements(CALLERS));
    with_stacks(&rt, |name, stack| {
        dispatch!(stack, |s| many_callers(&mut group, &rt, name, s))
    });
    group.finish();
}

/// `OVERHEAD_PROFILE=e OVERHEAD_N=100000`: one stack's one-caller loop, for
/// callgrind.
fn profile(which: &str) {
    let n: u64 = std::env::var("OVERHEAD_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let rt = current_thread();
    let mut found = false;
    with_stacks(&rt, |name, mut stack| {
        if !name.starts_with(which) {
            return;
        }
        found = true;
        let start = Instant::now();
        rt.block_on(async {
            for x in 0..n {
                dispatch!(&mut stack, |s| black_box(request(s, x).await));
            }
        });
        let elapsed = start.elapsed();
        println!(
            "{name}: {n} requests in {elapsed:?}, {:?} each",
            elapsed / n.max(1) as u32
        );
    });
    assert!(found, "OVERHEAD_PROFILE must be one of a, b, c, d, e, f, g");
}

/// `OVERHEAD_ROUNDS=<n>`: the queue paths (b), (f) and (g) with 64 callers,
/// side by side: in each of `n` rounds each stack runs for
/// `OVERHEAD_WINDOW_MS` (default 300) in turn, the order rotating, so that
/// load on the machine hits all alike. Prints one line per round and stack,
/// `round <i> <stack> <requests per second>`, for `scripts/bench`, which
/// takes the ratios round by round.
fn rounds(n: usize) {
    let window = Duration::from_millis(
        std::env::var("OVERHEAD_WINDOW_MS")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(300),
    );
    let rt = multi_thread();
    let mut stacks = Vec::new();
    with_stacks(&rt, |name, stack| {
        if matches!(stack, Stack::B(_) | Stack::F(_) | Stack::G(_)) {
            stacks.push((name, stack));
        }
    });
    for round in 0..n {
        for k in 0..stacks.len() {
            let (name, stack) = &stacks[(round + k) % stacks.len()];
            let rate = match stack {
                Stack::B(s) => rt.block_on(throughput(s.clone(), window)),
                Stack::F(s) => rt.block_on(throughput(s.clone(), window)),
                Stack::G(s) => rt.block_on(throughput(s.clone(), window)),
                _ => unreachable!("only the queue paths are kept"),
            };
            println!("round {round} {name} {rate:.0}");
        }
    }
}

/// Requests per second that 64 callers, each with its own clone of
/// `service`, complete in a closed loop for `window`.
async fn throughput<S>(service: S, window: Duration) -> f64
where
    S: Service<u64, Response = u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug,
{
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let mut service = service.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    black_box(request(&mut service, n).await);
                    n += 1;
                }
                n
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut done = 0;
    for caller in callers {
        done += caller.await.expect("caller task");
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if let Ok(which) = std::env::var("OVERHEAD_PROFILE") {
        profile(&which);
        return;
    }
    if let Some(n) = std::env::var("OVERHEAD_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        rounds(n);
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
