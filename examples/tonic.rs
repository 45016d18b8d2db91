//! A tonic gRPC client that rides through a server crash, with
//! `tower-redial` as its transport.
//!
//! The example starts a tonic server on `127.0.0.1` with the standard
//! `grpc.health.v1` service (from `tonic-health`, so no codegen is needed),
//! and four workers that call `Health/Check` through one generated
//! `HealthClient`. A second in, the server crashes (every connection
//! dropped at once); a second later it restarts on the same port. Calls made
//! during the outage wait in the client's queue and are answered once the
//! server is back.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example tonic --features hyper
//! ```
//!
//! It takes about 3 seconds and needs nothing but a free port on
//! `127.0.0.1`.
//!
//! # Why this path
//!
//! A generated tonic client takes any tower service from `http::Request` to
//! `http::Response` as its transport. Here that service is made in one line
//! by `tower_redial::hyper::Grpc` (or `tower_redial::hyper::grpc`): a
//! `GrpcClient` over one HTTP/2 connection that this crate dials, watches and
//! redials, which puts the origin on tonic's path-only requests. So this
//! crate owns the reconnect, with its backoff, its queue, its wait limit and
//! its safe re-sends, and tonic adds only the gRPC framing. `Grpc`'s
//! `http2` setting takes HTTP/2 keep-alive pings, which find a server that
//! vanished without a word.
//!
//! The other paths are tonic's own `Channel`, or
//! `Endpoint::connect_with_connector` with a reconnecting connector. Both
//! leave the reconnect to tonic's `Channel`, which, when connected lazily,
//! reports ready after a failed dial and fails the next call instead (tonic
//! #2839): a dead server
//! shows up as a burst of errors, not as calls waiting for it to return.
//! With this crate's client, calls wait in the queue while it redials, up to
//! the wait limit, and then fail fast with `Unavailable`.
//!
//! gRPC request bodies stream, so requests are not `Clone`: a call that
//! hyper handed back unsent is re-sent on the next connection, but a call
//! that may have reached the server comes back as an error `Status`, and the
//! application decides whether to call again. The crate's own failures come
//! with gRPC's codes: a call cut by the crash is `Unavailable` ("connection
//! lost", and `tower-redial-error: connection-lost` in its metadata: it may
//! have run), as is a call that failed fast past the wait limit.

use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_redial::hyper::{Grpc, GrpcClient};
use tower_redial::state::{Phase, Snapshot};
use tower_redial::{Backoff, BoxError, ReconnectPolicy};

type Transport = GrpcClient<tonic::body::Body>;

const WORKERS: usize = 4;
/// How often each worker calls.
const PACE: Duration = Duration::from_millis(25);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = GrpcServer::start().await;
    let addr = server.addr;

    // A quick backoff for the demo; `ReconnectPolicy::grpc()` is gRPC's own.
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(50),
            1.6,
            Duration::from_millis(500),
        ))
        .wait_limit(Duration::from_secs(5))
        .build()?;
    // The transport, in one line; it puts the origin on every call.
    let transport: Transport = Grpc::builder(format!("http://{addr}"))
        .policy(policy)
        .build()?;
    let health = HealthClient::new(transport.clone());

    println!("tower-redial + tonic: a gRPC client that rides through a server crash\n");
    println!(
        "{WORKERS} workers call grpc.health.v1.Health/Check on {addr}, each every {} ms",
        PACE.as_millis()
    );
    let start = Instant::now();
    let timeline = tokio::spawn(watch_client(transport.state(), start));
    let (stop, stopped) = watch::channel(false);
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        workers.spawn(work(health.clone(), start, stopped.clone()));
    }

    sleep(Duration::from_secs(1)).await;
    server.stop().await;
    let down = start.elapsed();
    println!(
        "  {}  server crashed: every connection dropped",
        stamp(down)
    );
    sleep(Duration::from_secs(1)).await;
    server.restart().await;
    let up = start.elapsed();
    println!("  {}  server back on the same port", stamp(up));
    sleep(Duration::from_secs(1)).await;

    stop.send_replace(true);
    let (mut sent, mut serving, mut during, mut lost, mut slowest) = (0, 0, 0, 0, Duration::ZERO);
    let mut failure = None;
    while let Some(calls) = workers.join_next().await {
        for call in calls? {
            sent += 1;
            match call.result {
                Ok(()) => {
                    serving += 1;
                    slowest = slowest.max(call.took);
                    if (down..up).contains(&call.at) {
                        during += 1;
                    }
                }
                Err(status) => {
                    lost += 1;
                    failure.get_or_insert(format!(
                        "{:?} ({}): {}",
                        status.code(),
                        status
                            .metadata()
                            .get("tower-redial-error")
                            .and_then(|kind| kind.to_str().ok())
                            .unwrap_or("not the crate's"),
                        status.message()
                    ));
                }
            }
        }
    }
    timeline.abort();
    let stats = transport.stats();
    println!("  {}  done\n", stamp(start.elapsed()));

    let row = |label: &str, value: String| println!("    {label:<48} {value:>6}");
    row("calls made", sent.to_string());
    row("  answered SERVING", serving.to_string());
    row(
        "    of them made while the server was down",
        during.to_string(),
    );
    row("  failed (on the wire when it crashed)", lost.to_string());
    if let Some(failure) = failure {
        println!("      as a Status such as {failure}");
    }
    row(
        "handed back unsent by hyper, and re-sent",
        stats.retries.to_string(),
    );
    row(
        "dials (refused while down)",
        format!("{} ({})", stats.dials, stats.dial_failures),
    );
    row(
        "slowest answer (waited out the outage)",
        format!("{} ms", slowest.as_millis()),
    );
    if during == 0 {
        return Err("no call made during the outage was answered".into());
    }
    Ok(())
}

/// One call, as a worker saw it.
struct Call {
    at: Duration,
    took: Duration,
    result: Result<(), tonic::Status>,
}

/// Calls `Check` every `PACE` until told to stop; each call is awaited on
/// its own task, so a worker keeps calling through the outage.
async fn work(
    health: HealthClient<Transport>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<Call> {
    let mut tick = tokio::time::interval(PACE);
    let mut calls = JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let mut health = health.clone();
        calls.spawn(async move {
            let at = start.elapsed();
            let request = HealthCheckRequest {
                service: String::new(),
            };
            let result = health.check(request).await.and_then(|response| {
                match response.get_ref().status() {
                    ServingStatus::Serving => Ok(()),
                    other => Err(tonic::Status::unavailable(other.as_str_name())),
                }
            });
            Call {
                at,
                took: start.elapsed() - at,
                result,
            }
        });
    }
    let mut done = Vec::new();
    while let Some(call) = calls.join_next().await {
        done.push(call.expect("call task"));
    }
    done
}

/// Prints when the client loses its connection and when it has one again.
async fn watch_client(mut state: watch::Receiver<Snapshot>, start: Instant) {
    let mut connected = false;
    loop {
        let snapshot = state.borrow_and_update().clone();
        let at = stamp(snapshot.since().saturating_duration_since(start));
        match snapshot.phase() {
            Phase::Ready if !connected => {
                connected = true;
                println!("  {at}  client connected (dial {})", snapshot.attempt());
            }
            Phase::Connecting | Phase::Backoff | Phase::FailFast if connected => {
                connected = false;
                println!("  {at}  client lost its connection; redialing, calls wait in its queue");
            }
            _ => {}
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// tonic's own server with the health service. tonic runs each connection
/// on a task of its own, which outlives the server future; to crash, the
/// server keeps a clone of each accepted socket and shuts them all down.
struct GrpcServer {
    addr: SocketAddr,
    running: Mutex<Option<(JoinHandle<()>, Sockets)>>,
}

type Sockets = Arc<Mutex<Vec<std::net::TcpStream>>>;

impl GrpcServer {
    async fn start() -> Self {
        let listener = bind("127.0.0.1:0".parse().expect("address"));
        let server = Self {
            addr: listener.local_addr().expect("bound"),
            running: Mutex::new(None),
        };
        server.run(listener);
        server
    }

    fn run(&self, listener: TcpListener) {
        let sockets = Sockets::default();
        let incoming = futures::stream::unfold(
            (listener, sockets.clone()),
            |(listener, sockets)| async move {
                let accepted = listener.accept().await.and_then(|(io, _)| {
                    let io = io.into_std()?;
                    lock(&sockets).push(io.try_clone()?);
                    TcpStream::from_std(io)
                });
                Some((accepted, (listener, sockets)))
            },
        );
        let (_reporter, health) = tonic_health::server::health_reporter();
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await;
            if let Err(error) = served {
                eprintln!("server failed: {error}");
            }
        });
        *lock(&self.running) = Some((task, sockets));
    }

    /// Closes the listener, then every connection at once.
    async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some((task, sockets)) = running {
            task.abort();
            let _ = task.await;
            for socket in lock(&sockets).drain(..) {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
    }

    async fn restart(&self) {
        self.stop().await;
        self.run(bind(self.addr));
    }
}

/// A listener with `SO_REUSEADDR`, to restart on the same port at once.
fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind");
    socket.listen(128).expect("listen")
}

fn stamp(at: Duration) -> String {
    format!("+{:.2}s", at.as_secs_f64())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
