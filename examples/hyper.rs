//! An HTTP client over hyper that rides through a server crash, over HTTP/1
//! and then HTTP/2.
//!
//! The example starts a small hyper server on `127.0.0.1` whose `POST /incr`
//! counts, and four workers that send it `POST /incr` through one client
//! built from `tower_redial::hyper` and [`ReconnectLayer`]. A second in, the
//! server crashes (every connection dropped at once); a second later it
//! restarts on the same port. The client redials with backoff, holds the
//! requests sent meanwhile in its queue, re-sends the ones hyper handed back
//! unsent, and never re-sends a `POST` that may have run. The tally at the
//! end checks the server's count against what the client saw.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example hyper --features hyper
//! ```
//!
//! It takes about 6 seconds and needs nothing but a free port on
//! `127.0.0.1`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::state::{Phase, Snapshot};
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};

type Body = Full<Bytes>;
type HttpClient = Client<Request<Body>, Response<Incoming>>;

const WORKERS: usize = 4;
/// How often each worker sends a request.
const PACE: Duration = Duration::from_millis(25);

#[derive(Clone, Copy, Debug)]
enum Proto {
    Http1,
    Http2,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!("tower-redial + hyper: a client that rides through a server crash\n");
    for proto in [Proto::Http1, Proto::Http2] {
        run(proto).await?;
    }
    Ok(())
}

async fn run(proto: Proto) -> Result<(), BoxError> {
    let server = Server::start().await;
    let addr = server.addr;
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(50),
            2.0,
            Duration::from_millis(500),
        ))
        .wait_limit(Duration::from_secs(5))
        .build()?;
    let layer = ServiceBuilder::new().layer(ReconnectLayer::new(policy));
    let client: HttpClient = match proto {
        Proto::Http1 => layer
            .service(Handshake::new(
                TcpConnector::new(),
                tower_redial::hyper::http1::<Body>,
            ))
            .client(addr),
        Proto::Http2 => layer
            .service(Handshake::new(
                TcpConnector::new(),
                tower_redial::hyper::http2::<Body>,
            ))
            .multiplexed(addr),
    };

    let start = Instant::now();
    println!(
        "{proto:?}: {WORKERS} workers send POST /incr to {addr}, each every {} ms",
        PACE.as_millis()
    );
    let timeline = tokio::spawn(watch_client(client.state(), start));
    let (stop, stopped) = watch::channel(false);
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        workers.spawn(work(proto, addr, client.clone(), start, stopped.clone()));
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
    let mut tally = Tally::default();
    while let Some(requests) = workers.join_next().await {
        for request in requests? {
            tally.add(&request, down, up);
        }
    }
    timeline.abort();
    let stats = client.stats();
    let ran = server.count.load(Ordering::SeqCst);
    println!("  {}  done\n", stamp(start.elapsed()));
    let row = |label: &str, value: String| println!("    {label:<48} {value:>6}");
    row("requests sent", tally.sent.to_string());
    row("  answered", tally.answered.to_string());
    row(
        "    of them sent while the server was down",
        tally.answered_from_outage.to_string(),
    );
    row(
        "  lost on the wire (may have run; not re-sent)",
        tally.lost.to_string(),
    );
    row("  other errors", tally.other.to_string());
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
        format!("{} ms", tally.slowest.as_millis()),
    );
    row("POSTs the server ran", ran.to_string());
    let most = tally.answered + tally.lost;
    if (tally.answered..=most).contains(&ran) && tally.other == 0 {
        println!(
            "    books: {} answered <= {ran} ran <= {most} answered + lost: no POST ran twice\n",
            tally.answered
        );
        Ok(())
    } else {
        Err(format!(
            "books do not add up: answered {}, lost {}, ran {ran}",
            tally.answered, tally.lost
        )
        .into())
    }
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
                println!(
                    "  {at}  client lost its connection; redialing, requests wait in its queue"
                );
            }
            _ => {}
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// One request, as a worker saw it.
struct Sent {
    at: Duration,
    took: Duration,
    result: Result<(), String>,
    /// The error chain holds a hyper or IO error: the connection broke while
    /// the request may have been on the wire.
    on_the_wire: bool,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    answered: u64,
    answered_from_outage: u64,
    lost: u64,
    other: u64,
    slowest: Duration,
}

impl Tally {
    fn add(&mut self, request: &Sent, down: Duration, up: Duration) {
        self.sent += 1;
        match &request.result {
            Ok(()) => {
                self.answered += 1;
                self.slowest = self.slowest.max(request.took);
                if (down..up).contains(&request.at) {
                    self.answered_from_outage += 1;
                }
            }
            Err(_) if request.on_the_wire => self.lost += 1,
            Err(error) => {
                println!("    unexpected error: {error}");
                self.other += 1;
            }
        }
    }
}

/// Sends `POST /incr` every `PACE` until told to stop; each reply is
/// awaited on its own task, so a worker keeps sending through the outage.
async fn work(
    proto: Proto,
    addr: SocketAddr,
    client: HttpClient,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sent> {
    let mut tick = tokio::time::interval(PACE);
    let mut replies = JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let request = post(proto, addr);
        let client = client.clone();
        replies.spawn(async move {
            let at = start.elapsed();
            let result = send(client, request).await;
            let took = start.elapsed() - at;
            let on_the_wire = result.as_ref().err().is_some_and(|e| {
                chain(&**e).any(|e| e.is::<hyper::Error>() || e.is::<std::io::Error>())
                    && !chain(&**e).any(|e| {
                        e.is::<tower_redial::error::NotSent>()
                            || e.is::<tower_redial::error::Unavailable>()
                            || e.is::<tower_redial::error::Closed>()
                    })
            });
            Sent {
                at,
                took,
                result: result.map_err(|e| e.to_string()),
                on_the_wire,
            }
        });
    }
    let mut sent = Vec::new();
    while let Some(reply) = replies.join_next().await {
        sent.push(reply.expect("reply task"));
    }
    sent
}

/// Sends a request and reads the whole reply.
async fn send(client: HttpClient, request: Request<Body>) -> Result<(), BoxError> {
    let response = client.oneshot(request).await?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()).into());
    }
    response.into_body().collect().await?;
    Ok(())
}

/// `POST /incr`, in the form each protocol wants: origin-form with a `Host`
/// header for HTTP/1, an absolute URI for HTTP/2.
fn post(proto: Proto, addr: SocketAddr) -> Request<Body> {
    let builder = match proto {
        Proto::Http1 => Request::post("/incr").header(header::HOST, addr.to_string()),
        Proto::Http2 => Request::post(format!("http://{addr}/incr")),
    };
    builder
        .body(Full::new(Bytes::from_static(b"+1")))
        .expect("valid request")
}

fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn std::error::Error + 'static)| {
        (*e).source()
    })
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// A hyper server (HTTP/1 and HTTP/2) whose `POST /incr` counts. `stop`
/// crashes it: the listener and every connection close at once.
struct Server {
    addr: SocketAddr,
    count: Arc<AtomicU64>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    async fn start() -> Self {
        let listener = bind("127.0.0.1:0".parse().expect("address"));
        let server = Self {
            addr: listener.local_addr().expect("bound"),
            count: Arc::default(),
            task: Mutex::new(None),
        };
        server.run(listener);
        server
    }

    fn run(&self, listener: TcpListener) {
        let count = self.count.clone();
        *lock(&self.task) = Some(tokio::spawn(async move {
            // Dropping this task drops the listener and, with the JoinSet,
            // aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((io, _)) = listener.accept().await else {
                    continue;
                };
                let count = count.clone();
                let service = service_fn(move |request| incr(request, count.clone()));
                connections.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(io), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    async fn stop(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&self) {
        self.stop().await;
        self.run(bind(self.addr));
    }
}

async fn incr(
    request: Request<Incoming>,
    count: Arc<AtomicU64>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let _ = body.collect().await;
    if parts.method == Method::POST && parts.uri.path() == "/incr" {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Response::new(Full::new(n.to_string().into())))
    } else {
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::NOT_FOUND;
        Ok(response)
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
