//! Overhead over real connections (issue 15, point 1): the client against
//! the bare connection it wraps, over loopback sockets, side by side in one
//! run.
//!
//! - **HTTP/1**: hyper's `client::conn::http1` through
//!   `MakeReconnect::client` (every request through the queue), against one
//!   bare `SendRequest`. hyper serves one request at a time on an HTTP/1
//!   connection, so the bare callers share the `SendRequest` behind a lock
//!   held from readiness to `try_send_request`, as the client's queue holds
//!   it, and send again a request hyper hands back unsent, as the client
//!   does; both then wait for the response and read its body on their own
//!   task.
//! - **HTTP/2**: hyper's `client::conn::http2` through
//!   `MakeReconnect::multiplexed` (the direct lane), against bare
//!   `SendRequest` clones, one per caller.
//! - **redis**: `MakeRedis` through `MakeReconnect::multiplexed`, against a
//!   bare redis-rs `MultiplexedConnection`, one clone per caller; the
//!   command is `GET` of a missing key, against a real `redis-server`.
//!
//! The hyper server runs in process on `127.0.0.1`, on a runtime of its own
//! (one thread). One caller runs on a current-thread runtime (a
//! multi-thread one makes a lone caller's latency depend on which worker
//! each task lands on); 64 callers run on a multi-thread runtime with 2
//! workers. Each setting makes its own connections on its own runtime.
//! Each caller sends a request, waits for the whole response, and sends the
//! next (closed loop). Each measurement runs the bare connection, the
//! crate's connection service alone (for HTTP/1 behind tower's `Buffer`) and
//! the client in turn, [`ROUNDS`] times each for [`WINDOW`], after a
//! warm-up, so that load on the machine hits all alike; the ratios are taken
//! round by round (client / bare throughput, and the same through the
//! middle side), and the table gives their medians and the range.
//!
//! Run with `cargo bench -p tower-redial-interop --bench real`; it prints a
//! markdown section. With `-- --write PATH` it also puts the section between
//! `<!-- real:start -->` and `<!-- real:end -->` in `PATH`. `REAL_ROUNDS`
//! and `REAL_WINDOW_MS` override the rounds and the window; `REAL_ONLY=redis`
//! (any part of a comparison's name) runs only the comparisons that match.

use tower_redial_interop::report as common;
use tower_redial_interop::report::{Goal, Verdict};

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use redis::{Cmd, Value};
use support::redis_server::RedisServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Builder, Runtime};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::connect::{Handshake, TcpConnector};
use tower_redial::redis::MakeRedis;
use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};

/// Measurement rounds per side.
const ROUNDS: usize = 11;
/// How long each side runs in each round.
const WINDOW: Duration = Duration::from_millis(500);
/// The comparisons, in the table's order.
const PAIRS: [&str; 3] = [
    "HTTP/1, hyper `client::conn`: `client` vs one bare `SendRequest`",
    "HTTP/2, hyper `client::conn`: `multiplexed` vs bare `SendRequest` clones",
    "redis, `MakeRedis`: `multiplexed` vs a bare `MultiplexedConnection`",
];
/// Callers in the two settings.
const CALLERS: [usize; 2] = [1, 64];

type Body = Full<Bytes>;
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One request and its whole response, on a caller's own handle. Both sides
/// box the future the same way.
trait Caller: Send + 'static {
    fn request(&mut self) -> BoxFuture<'_, ()>;
}

/// Makes one handle per caller.
type Callers = Box<dyn Fn() -> Box<dyn Caller> + Send + Sync>;

// ---------------------------------------------------------------------------
// Servers.

/// A hyper server answering every request with `hello`, HTTP/1 or HTTP/2,
/// on a runtime thread of its own.
fn hyper_server(http2: bool) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (io, _) = listener.accept().await.unwrap();
                io.set_nodelay(true).unwrap();
                let hello = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Body::new(Bytes::from_static(b"hello"))))
                });
                let io = TokioIo::new(io);
                if http2 {
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, hello),
                    );
                } else {
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new().serve_connection(io, hello),
                    );
                }
            }
        });
    });
    rx.recv().unwrap()
}

fn get(addr: SocketAddr) -> Request<Body> {
    Request::get(format!("http://{addr}/"))
        .header(http::header::HOST, addr.to_string())
        .body(Body::default())
        .unwrap()
}

async fn read_body(response: Response<Incoming>) {
    let body = response.into_body().collect().await.expect("body");
    assert_eq!(body.to_bytes().len(), 5);
}

async fn dial(addr: SocketAddr) -> TokioIo<TcpStream> {
    let io = TcpStream::connect(addr).await.expect("connect");
    io.set_nodelay(true).unwrap();
    TokioIo::new(io)
}

// ---------------------------------------------------------------------------
// The callers.

/// A `tower::Service` handle: `ready().await`, `call().await`, then `done`.
struct Svc<S, Req, F> {
    service: S,
    request: Req,
    _done: std::marker::PhantomData<fn() -> F>,
}

impl<S, Req, F> Svc<S, Req, F> {
    fn new(service: S, request: Req) -> Self {
        Self {
            service,
            request,
            _done: std::marker::PhantomData,
        }
    }
}

/// What a caller does with a response.
trait Done<R>: Send + 'static {
    fn done(response: R) -> impl Future<Output = ()> + Send;
}

/// Reads the whole body.
struct ReadBody;
impl Done<Response<Incoming>> for ReadBody {
    fn done(response: Response<Incoming>) -> impl Future<Output = ()> + Send {
        read_body(response)
    }
}

/// Keeps the value from being optimised away.
struct Keep;
impl Done<Value> for Keep {
    fn done(response: Value) -> impl Future<Output = ()> + Send {
        std::hint::black_box(response);
        std::future::ready(())
    }
}

impl<S, Req, F> Caller for Svc<S, Req, F>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    Req: Clone + Send + Sync + 'static,
    F: Done<S::Response>,
{
    fn request(&mut self) -> BoxFuture<'_, ()> {
        let request = self.request.clone();
        let service = &mut self.service;
        let future = async move {
            let response = service
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("call");
            F::done(response).await;
        };
        Box::pin(future)
    }
}

/// The bare HTTP/1 side: one `SendRequest`, locked from readiness to
/// `send_request`, as the client's queue does.
#[derive(Clone)]
struct Http1Bare {
    sender: Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Body>>>,
    get: CloneGet,
}

impl Caller for Http1Bare {
    fn request(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut request = self.get.request();
            loop {
                let sending = {
                    let mut sender = self.sender.lock().await;
                    sender.ready().await.expect("ready");
                    sender.try_send_request(request)
                };
                match sending.await {
                    Ok(response) => return read_body(response).await,
                    // hyper was not ready after all and handed the request
                    // back: send it again, as the client re-sends a request
                    // handed back as `NotSent`.
                    Err(mut error) => request = error.take_message().expect("handed back unsent"),
                }
            }
        })
    }
}

/// The bare HTTP/2 side: a `SendRequest` clone per caller.
struct Http2Bare {
    sender: hyper::client::conn::http2::SendRequest<Body>,
    get: CloneGet,
}

impl Caller for Http2Bare {
    fn request(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.sender.ready().await.expect("ready");
            let response = self
                .sender
                .send_request(self.get.request())
                .await
                .expect("response");
            read_body(response).await;
        })
    }
}

/// The bare redis side: a `MultiplexedConnection` clone per caller.
struct RedisBare {
    connection: redis::aio::MultiplexedConnection,
    cmd: Cmd,
}

impl Caller for RedisBare {
    fn request(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let value = self
                .connection
                .send_packed_command(&self.cmd)
                .await
                .expect("GET");
            std::hint::black_box(value);
        })
    }
}

/// The bare and the client side of one comparison.
struct Pair {
    name: &'static str,
    goal: f64,
    bare: Callers,
    /// The crate's connection service with no client around it: for
    /// HTTP/1 behind tower's `Buffer` (the queue alone), for the
    /// multiplexed connections a clone per caller. Client / alone is what
    /// the reconnect layer itself costs; alone / bare what the queue or the
    /// connection wrapper costs.
    alone: Callers,
    ours: Callers,
}

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::default()
}

async fn pairs(redis: &RedisServer) -> Vec<Pair> {
    let mut pairs = Vec::new();

    // HTTP/1.
    let addr = hyper_server(false);
    let (sender, conn) = hyper::client::conn::http1::handshake(dial(addr).await)
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(conn);
    let bare = Http1Bare {
        sender: Arc::new(tokio::sync::Mutex::new(sender)),
        get: clone_get(&get(addr)),
    };
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(Handshake::new(
            TcpConnector::new(),
            tower_redial::hyper::http1::<Body>,
        ))
        .client(addr);
    client.connected().await.expect("HTTP/1 client");
    let request = get(addr);
    let connection = Handshake::new(TcpConnector::new(), tower_redial::hyper::http1::<Body>)
        .oneshot(addr)
        .await
        .expect("HTTP/1 connection");
    let queue = tower::buffer::Buffer::new(Wrapped(connection), policy().queue_capacity());
    let alone_request = get(addr);
    pairs.push(Pair {
        name: PAIRS[0],
        goal: 0.95,
        bare: Box::new(move || Box::new(bare.clone())),
        alone: Box::new(move || {
            Box::new(Svc::<_, _, ReadBody>::new(
                queue.clone(),
                clone_get(&alone_request),
            ))
        }),
        ours: Box::new(move || {
            Box::new(Svc::<_, _, ReadBody>::new(
                Wrapped(client.clone()),
                clone_get(&request),
            ))
        }),
    });

    // HTTP/2.
    let addr = hyper_server(true);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), dial(addr).await)
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(Handshake::new(
            TcpConnector::new(),
            tower_redial::hyper::http2::<Body>,
        ))
        .multiplexed(addr);
    client.connected().await.expect("HTTP/2 client");
    let request = get(addr);
    let connection = Handshake::new(TcpConnector::new(), tower_redial::hyper::http2::<Body>)
        .oneshot(addr)
        .await
        .expect("HTTP/2 connection");
    let alone_request = get(addr);
    pairs.push(Pair {
        name: PAIRS[1],
        goal: 0.97,
        alone: Box::new(move || {
            Box::new(Svc::<_, _, ReadBody>::new(
                Wrapped(connection.clone()),
                clone_get(&alone_request),
            ))
        }),
        bare: Box::new(move || {
            Box::new(Http2Bare {
                sender: sender.clone(),
                get: clone_get(&get(addr)),
            })
        }),
        ours: Box::new(move || {
            Box::new(Svc::<_, _, ReadBody>::new(
                Wrapped(client.clone()),
                clone_get(&request),
            ))
        }),
    });

    // redis.
    let connection = redis::Client::open(redis.url())
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(MakeRedis::new())
        .multiplexed(redis.url());
    client.connected().await.expect("redis client");
    let mut cmd = redis::cmd("GET");
    cmd.arg("tower-redial-bench-missing");
    let ours_cmd = cmd.clone();
    let alone_cmd = cmd.clone();
    let alone = MakeRedis::new()
        .oneshot(redis.url())
        .await
        .expect("redis connection alone");
    pairs.push(Pair {
        name: PAIRS[2],
        goal: 0.97,
        alone: Box::new(move || Box::new(Svc::<_, _, Keep>::new(alone.clone(), alone_cmd.clone()))),
        bare: Box::new(move || {
            Box::new(RedisBare {
                connection: connection.clone(),
                cmd: cmd.clone(),
            })
        }),
        ours: Box::new(move || Box::new(Svc::<_, _, Keep>::new(client.clone(), ours_cmd.clone()))),
    });
    pairs
}

/// `Request` is not `Clone`; the benchmark's requests have no body.
fn clone_get(request: &Request<Body>) -> CloneGet {
    CloneGet(request.uri().clone(), request.headers().clone())
}

/// A bodiless `GET`, cloned into a fresh `Request` for each call.
#[derive(Clone)]
struct CloneGet(http::Uri, http::HeaderMap);

impl CloneGet {
    fn request(&self) -> Request<Body> {
        let mut request = Request::new(Body::default());
        *request.uri_mut() = self.0.clone();
        *request.headers_mut() = self.1.clone();
        request
    }
}

impl<S> Service<CloneGet> for Wrapped<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, get: CloneGet) -> S::Future {
        self.0.call(get.request())
    }
}

/// A service of `Request<Body>` taking [`CloneGet`]s: the same `GET` the
/// bare side builds, made at the call.
struct Wrapped<S>(S);

// ---------------------------------------------------------------------------
// Measuring.

/// Requests completed by `callers` callers within `window`.
async fn run(make: &Callers, callers: usize, window: Duration) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut caller = make();
            let (stop, done) = (stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    caller.request().await;
                    n += 1;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("caller");
    }
    // Requests that finished after the window count at the rate they ran.
    let elapsed = start.elapsed();
    let n = done.load(Ordering::Relaxed);
    (n as f64 * window.as_secs_f64() / elapsed.as_secs_f64()) as u64
}

struct Measured {
    name: &'static str,
    goal: f64,
    callers: usize,
    bare: Vec<f64>,
    alone: Vec<f64>,
    ours: Vec<f64>,
}

impl Measured {
    /// Client / bare, round by round, sorted.
    fn ratios(&self) -> Vec<f64> {
        per_round(&self.ours, &self.bare)
    }
}

/// `top / bottom` within each round, sorted.
fn per_round(top: &[f64], bottom: &[f64]) -> Vec<f64> {
    let mut r: Vec<f64> = top.iter().zip(bottom).map(|(t, b)| t / b).collect();
    r.sort_by(f64::total_cmp);
    r
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The first three fields of `/proc/loadavg`: how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// A current-thread runtime for one caller, 2 workers for more.
fn runtime(callers: usize) -> Runtime {
    if callers == 1 {
        return Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() -> Result<(), BoxError> {
    let load_before = load_average();
    let rounds = env_or("REAL_ROUNDS", ROUNDS).max(1);
    let window = Duration::from_millis(env_or("REAL_WINDOW_MS", WINDOW.as_millis() as u64));
    // Only the comparisons whose name contains this, e.g. `REAL_ONLY=redis`.
    let only: String = env_or("REAL_ONLY", String::new());
    // The redis server outlives both settings, on a runtime of its own.
    let server_rt = Builder::new_current_thread().enable_all().build()?;
    let redis = server_rt.block_on(RedisServer::start());
    let mut results = Vec::new();
    for callers in CALLERS {
        let rt = runtime(callers);
        rt.block_on(async {
            let pairs = pairs(&redis).await;
            for pair in pairs.iter().filter(|p| p.name.contains(&only)) {
                // Warm-up: connections, allocator, caches.
                for side in [&pair.bare, &pair.alone, &pair.ours] {
                    run(side, callers, window / 4).await;
                }
                let mut m = Measured {
                    name: pair.name,
                    goal: pair.goal,
                    callers,
                    bare: Vec::new(),
                    alone: Vec::new(),
                    ours: Vec::new(),
                };
                for round in 0..rounds {
                    // Rotate which side goes first.
                    let mut rate = [0.0; 3];
                    for k in 0..3 {
                        let side = (round + k) % 3;
                        let make = [&pair.bare, &pair.alone, &pair.ours][side];
                        rate[side] = run(make, callers, window).await as f64 / window.as_secs_f64();
                    }
                    m.bare.push(rate[0]);
                    m.alone.push(rate[1]);
                    m.ours.push(rate[2]);
                }
                let r = m.ratios();
                eprintln!(
                    "{} / {callers} callers: bare {:.0}/s, alone {:.0}/s, ours {:.0}/s, ratio {:.3} ({:.3}–{:.3})",
                    pair.name,
                    median(&m.bare),
                    median(&m.alone),
                    median(&m.ours),
                    median(&r),
                    r[0],
                    r[r.len() - 1]
                );
                results.push(m);
            }
        });
        drop(rt);
    }
    results.sort_by_key(|m| (PAIRS.iter().position(|p| *p == m.name), m.callers));
    server_rt.block_on(async move { drop(redis) });

    let mut md = String::new();
    let _ = writeln!(md, "## Overhead over real connections\n");
    let _ = writeln!(
        md,
        "Issue 15, point 1, `benches/real.rs`: loopback sockets, the client against the bare \
         connection it wraps, side by side in one run. A hyper server in process (its own \
         one-thread runtime) answers `hello` to every request, over HTTP/1 or HTTP/2; redis is a \
         real `redis-server`, asked `GET` of a missing key. One caller runs on a current-thread \
         runtime, 64 on a multi-thread runtime with 2 workers, each caller in a closed loop: a request, its whole response (the body \
         read), then the next. HTTP/1 carries one request at a time, so its bare callers share \
         one `SendRequest` behind a lock held from readiness to `try_send_request`, as the \
         client's queue holds the connection, and send again a request hyper hands back unsent, \
         as the client does; the multiplexed ones each hold a clone. Each row runs the \
         bare connection, the connection alone and the client in turn, {rounds} rounds of {} ms each after a \
         warm-up; **ratio** = client throughput / bare throughput within a round (1.00 = as \
         fast), its median and range over the rounds. **Alone** is the crate's connection \
         service with no client around it: the HTTP/1 connection behind tower's `Buffer` (the \
         queue alone, as tower gives it), the multiplexed ones a clone per caller. So alone / \
         bare is what the queue or the connection wrapper costs, and client / alone what the \
         reconnect layer costs beyond it; the three sides take turns within each round.\n",
        window.as_millis()
    );
    let _ = writeln!(
        md,
        "| connection | callers | bare (req/s, median) | client (req/s, median) | ratio median | range | goal | alone / bare | client / alone |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---:|---:|");
    for m in &results {
        let r = m.ratios();
        let med = median(&r);
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3}–{:.3} | ≥ {:.2} {} | {:.3} | {:.3} |",
            m.name,
            m.callers,
            median(&m.bare),
            median(&m.ours),
            med,
            r[0],
            r[r.len() - 1],
            m.goal,
            if med >= m.goal { "met" } else { "**missed**" },
            median(&per_round(&m.alone, &m.bare)),
            median(&per_round(&m.ours, &m.alone)),
        );
    }
    let _ = writeln!(
        md,
        "\nWall-clock ratios on a shared machine are noisy: compare rows within one run, and \
         runs against each other only by their ranges. This run's machine was shared with \
         other work: load average {load_before} before it, {} after (1, 5 and 15 minutes). \
         Generated on {} with `cargo bench -p tower-redial-interop --bench real -- --write \
         docs/BENCHMARKS.md`.",
        load_average(),
        common::machine()
    );
    println!("{md}");
    if let Some(path) = common::write_arg() {
        common::write_section(&path, "real", &md)?;
        let goals: Vec<Goal> = results
            .iter()
            .map(|m| {
                let r = m.ratios();
                let med = median(&r);
                Goal {
                    point: "1",
                    goal: format!(
                        "real connections: {}, {} caller{}: throughput ≥ {:.2} × bare",
                        m.name,
                        m.callers,
                        if m.callers == 1 { "" } else { "s" },
                        m.goal
                    ),
                    measure: format!(
                        "median over {} rounds of client / bare throughput, loopback",
                        r.len()
                    ),
                    value: format!("{med:.2} (range {:.2}–{:.2})", r[0], r[r.len() - 1]),
                    verdict: Verdict::from(med >= m.goal),
                }
            })
            .collect();
        common::write_goals(&path, "real", &goals)?;
    }
    Ok(())
}
