//! Rolling restarts: a hyper server stopped gracefully (HTTP/2 GOAWAY, or
//! HTTP/1 keep-alive connections closed between requests, with the requests
//! in flight drained) and started again on the same port, ten times, under
//! load from many tasks through one client.
//!
//! The server records the id of every request it runs. The books, printed
//! and asserted per test: `GET`s, opted in to re-sending, never fail unrun;
//! `POST`s, not opted in, never run twice, and fail unrun only with an
//! error the protocol cannot tell from a request that ran. Also: a GOAWAY
//! drains the old connection while a new one takes the requests, and a
//! stream the server refuses is sent again.

use support::listen;
use support::listen::{Restartable, Shutdown};
use support::policy::quick_redial;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::hyper::{http1, http2};
use tower_redial::retry::ResendPolicy;
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};

type Body = Full<Bytes>;
type HttpClient = Client<Request<Body>, Response<Incoming>>;

/// Restarts per test.
const CYCLES: usize = 10;
/// Requests each task sends between two restarts.
const PER_CYCLE: usize = 8;
/// A hang guard, far longer than any test needs.
const GUARD: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// A server that restarts gracefully and records what it ran
// ---------------------------------------------------------------------------

/// The id of every request the server ran, with how many times.
#[derive(Default)]
struct Seen(Mutex<HashMap<u64, Vec<u64>>>, AtomicU64);

impl Seen {
    /// Request `id` ran on connection `conn`.
    fn record(&self, id: u64, conn: u64) {
        lock(&self.0).entry(id).or_default().push(conn);
    }

    /// A number for a new connection.
    fn connection(&self) -> u64 {
        self.1.fetch_add(1, Ordering::SeqCst)
    }

    fn times(&self, id: u64) -> usize {
        lock(&self.0).get(&id).map_or(0, Vec::len)
    }

    fn ran(&self) -> usize {
        lock(&self.0).len()
    }

    /// Requests that ran more than once, with the connections they ran on.
    fn duplicates(&self) -> Vec<(u64, Vec<u64>)> {
        let seen = lock(&self.0);
        seen.iter()
            .filter(|(_, conns)| conns.len() > 1)
            .map(|(&id, conns)| (id, conns.clone()))
            .collect()
    }
}

/// The server, restartable gracefully on its port, and its books.
fn start() -> (Restartable, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let books = seen.clone();
    let server = Restartable::start(move |listener, stop| serve(listener, books.clone(), stop));
    (server, seen)
}

/// Serves until `stop`, then shuts every connection down gracefully and
/// returns once the requests in flight are answered.
async fn serve(listener: TcpListener, seen: Arc<Seen>, mut stop: Shutdown) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((io, _)) = accepted else { continue };
                let (seen, conn) = (seen.clone(), seen.connection());
                let service = service_fn(move |request| handle(request, seen.clone(), conn));
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                connections.spawn(graceful.watch(connection));
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    // Each connection's task has ended once its future finished.
    while connections.join_next().await.is_some() {}
}

/// Runs the request: records its id, then answers a little later, so that
/// requests are in flight when the server shuts down.
async fn handle(
    request: Request<Incoming>,
    seen: Arc<Seen>,
    conn: u64,
) -> Result<Response<Body>, Infallible> {
    let id = request
        .headers()
        .get("x-id")
        .and_then(|id| id.to_str().ok()?.parse().ok())
        .expect("every request carries an id");
    seen.record(id, conn);
    tokio::time::sleep(Duration::from_millis(2)).await;
    Ok(Response::new(Full::new(Bytes::from(id.to_string()))))
}

// ---------------------------------------------------------------------------
// The client and its books
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Proto {
    Http1,
    Http2,
}

fn policy() -> ReconnectPolicy {
    quick_redial().build().unwrap()
}

/// The client, with `GET` opted in to re-sending: for the one race each
/// protocol cannot tell apart (below).
fn client(proto: Proto, addr: SocketAddr) -> HttpClient {
    match proto {
        Proto::Http1 => ServiceBuilder::new()
            .layer(
                ReconnectLayer::new(policy())
                    .resend_if(|r: &Request<Body>| r.method() == Method::GET),
            )
            .service(Handshake::new(TcpConnector::new(), http1::<Body>))
            .client(addr),
        Proto::Http2 => ServiceBuilder::new()
            .layer(
                ReconnectLayer::new(policy())
                    .resend_if(|r: &Request<Body>| r.method() == Method::GET),
            )
            .service(Handshake::new(TcpConnector::new(), http2::<Body>))
            .multiplexed(addr),
    }
}

/// A `GET` (opted in) or a `POST` (not). A graceful HTTP/1 server closes an idle keep-alive connection;
/// a request written at that moment meets the close unanswered, and nothing
/// on the wire tells that apart from a server that read the request and
/// died. hyper reports an HTTP/2 GOAWAY that arrives just after it opened a
/// stream as that stream's error, though the server may have run it. So
/// only a request that is safe to repeat may go again.
fn request(proto: Proto, addr: SocketAddr, method: &Method, id: u64) -> Request<Body> {
    let builder = match proto {
        Proto::Http1 => Request::builder()
            .uri("/")
            .header(header::HOST, addr.to_string()),
        Proto::Http2 => Request::builder().uri(format!("http://{addr}/")),
    };
    builder
        .method(method.clone())
        .header("x-id", id)
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap()
}

async fn send(client: HttpClient, request: Request<Body>) -> Result<(), BoxError> {
    let response = client.oneshot(request).await?;
    response.into_body().collect().await?;
    Ok(())
}

/// What became of the requests.
#[derive(Debug, Default)]
struct Books {
    sent: usize,
    succeeded: usize,
    /// Failed, and the server ran them: the caller cannot know, so they
    /// may not be re-sent.
    failed_ambiguous: usize,
    /// Failed, though the server never ran them.
    failed_not_seen: Vec<String>,
    /// Of those, how many failed with an error that says nothing of whether
    /// the server ran them (see `unknowable`).
    failed_unknowable: usize,
}

/// `tasks` tasks send `POST`s with unique ids through one client while the
/// server restarts gracefully `CYCLES` times.
async fn rolling_restarts(proto: Proto, tasks: u64, method: Method) {
    let (mut server, seen) = start();
    let addr = server.addr();
    let client = client(proto, addr);
    let next_id = Arc::new(AtomicU64::new(0));
    let mut results = Vec::new();
    for _ in 0..CYCLES {
        let mut workers = JoinSet::new();
        for _ in 0..tasks {
            let (client, next_id, method) = (client.clone(), next_id.clone(), method.clone());
            workers.spawn(async move {
                let mut results = Vec::new();
                for _ in 0..PER_CYCLE {
                    let id = next_id.fetch_add(1, Ordering::SeqCst);
                    let result = send(client.clone(), request(proto, addr, &method, id)).await;
                    results.push((id, result.map_err(|e| (format!("{e:?}"), unknowable(&*e)))));
                }
                results
            });
        }
        // Restart while the tasks are busy.
        tokio::time::sleep(Duration::from_millis(5)).await;
        server.restart_gracefully().await;
        while let Some(done) = workers.join_next().await {
            results.extend(done.expect("worker"));
        }
    }

    let seen = &seen;
    let mut books = Books::default();
    for (id, result) in &results {
        books.sent += 1;
        match result {
            Ok(()) => books.succeeded += 1,
            Err(_) if seen.times(*id) > 0 => books.failed_ambiguous += 1,
            Err((error, unknowable)) => {
                books.failed_unknowable += usize::from(*unknowable);
                books.failed_not_seen.push(error.clone());
            }
        }
    }
    let duplicates = seen.duplicates();
    for (id, result) in &results {
        if let Err((error, _)) = result {
            println!("request {id} (ran {} times): {error}", seen.times(*id));
        }
    }
    println!(
        "{proto:?} {method}: sent {}, succeeded {}, failed ambiguous {}, failed not seen {} \
         ({} unknowable), server ran {}, ran twice {}",
        books.sent,
        books.succeeded,
        books.failed_ambiguous,
        books.failed_not_seen.len(),
        books.failed_unknowable,
        seen.ran(),
        duplicates.len(),
    );
    if method == Method::GET {
        // Opted in: every request the server did not run is sent again.
        // One that may have run is sent again too, as it is safe to repeat.
        assert!(
            books.failed_not_seen.is_empty(),
            "failed though the server never ran them: {:#?}",
            &books.failed_not_seen[..books.failed_not_seen.len().min(5)]
        );
    } else {
        // Not opted in: nothing that may have run is sent again. What the
        // server did not run but failed is only what the protocol cannot
        // tell apart from a request the server ran.
        assert!(duplicates.is_empty(), "ran twice: {duplicates:?}");
        assert_eq!(
            books.failed_unknowable,
            books.failed_not_seen.len(),
            "failed though the server never ran them: {:#?}",
            &books.failed_not_seen[..books.failed_not_seen.len().min(5)]
        );
    }
    assert_eq!(books.sent, CYCLES * PER_CYCLE * tasks as usize);
    assert!(books.succeeded <= seen.ran());
    assert!(seen.ran() <= books.succeeded + books.failed_ambiguous);
}

/// Whether the error says nothing of whether the server ran the request:
/// the server's HTTP/2 GOAWAY, which hyper also reports on a stream it had
/// just opened; or an HTTP/1 connection closed before the response began,
/// as a graceful server closes an idle keep-alive connection and as a
/// crashed one does too.
fn unknowable(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| {
        e.downcast_ref::<h2::Error>()
            .is_some_and(|e| e.is_go_away() && e.is_remote())
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_incomplete_message)
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// HTTP/2, 32 tasks of `GET` opted in to re-sending: a GOAWAY'd connection
/// drains, and no request fails that the server did not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rolling_restarts_lose_no_get() {
    tokio::time::timeout(GUARD, rolling_restarts(Proto::Http2, 32, Method::GET))
        .await
        .expect("test hung");
}

/// HTTP/2, 32 tasks of `POST` with the default policy: nothing runs twice,
/// and a request fails unrun only with hyper's report of the GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rolling_restarts_run_no_post_twice() {
    tokio::time::timeout(GUARD, rolling_restarts(Proto::Http2, 32, Method::POST))
        .await
        .expect("test hung");
}

/// HTTP/1, 16 tasks of `GET` opted in to re-sending: a keep-alive
/// connection the server closes between requests loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_rolling_restarts_lose_no_get() {
    tokio::time::timeout(GUARD, rolling_restarts(Proto::Http1, 16, Method::GET))
        .await
        .expect("test hung");
}

/// HTTP/1, 16 tasks of `POST` with the default policy: nothing runs twice,
/// and a request fails unrun only when the server closed its keep-alive
/// connection just as the request was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_rolling_restarts_run_no_post_twice() {
    tokio::time::timeout(GUARD, rolling_restarts(Proto::Http1, 16, Method::POST))
        .await
        .expect("test hung");
}

// ---------------------------------------------------------------------------
// Draining: one GOAWAY, watched closely
// ---------------------------------------------------------------------------

/// A server that sends GOAWAY on its open connections when told, and goes
/// on accepting new ones. `GET /hold` answers only when released; every
/// answer names the connection it came on.
struct GoAwayServer {
    addr: SocketAddr,
    go_away: tokio::sync::mpsc::UnboundedSender<()>,
    held: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
}

impl GoAwayServer {
    async fn start() -> Self {
        let listener = listen::reusable("127.0.0.1:0".parse().unwrap());
        let addr = listener.local_addr().unwrap();
        let (go_away, mut told) = tokio::sync::mpsc::unbounded_channel();
        let held = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let (h, r) = (held.clone(), release.clone());
        let task = tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let mut graceful = GracefulShutdown::new();
            let mut ids = 0_u64;
            let mut draining = JoinSet::new();
            loop {
                tokio::select! {
                    Some(()) = told.recv() => {
                        let old = std::mem::replace(&mut graceful, GracefulShutdown::new());
                        draining.spawn(old.shutdown());
                    }
                    accepted = listener.accept() => {
                        let Ok((io, _)) = accepted else { continue };
                        ids += 1;
                        let (conn, held, release) = (ids, h.clone(), r.clone());
                        let service = service_fn(move |request: Request<Incoming>| {
                            let (held, release) = (held.clone(), release.clone());
                            async move {
                                if request.uri().path() == "/hold" {
                                    held.notify_one();
                                    release.notified().await;
                                }
                                let body = Full::new(Bytes::from(conn.to_string()));
                                Ok::<_, Infallible>(Response::new(body))
                            }
                        });
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(io), service)
                            .into_owned();
                        tokio::spawn(graceful.watch(connection));
                    }
                }
            }
        });
        Self {
            addr,
            go_away,
            held,
            release,
            task,
        }
    }
}

impl Drop for GoAwayServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `GET path` and returns the number of the connection that answered.
async fn answered_on(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<u64, BoxError> {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.clone().oneshot(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(std::str::from_utf8(&body)?.parse()?)
}

/// HTTP/2 GOAWAY: the request in flight finishes on the old connection;
/// new requests soon go to a fresh connection, dialed at once (the backoff
/// here is an hour), while the old one still drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_goaway_drains_the_old_connection_and_dials_a_new_one_at_once() {
    let test = async {
        let server = GoAwayServer::start().await;
        let addr = server.addr;
        let policy = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::from_secs(3600)))
            .build()
            .unwrap();
        let layer =
            ReconnectLayer::new(policy).resend_if(|r: &Request<Body>| r.method() == Method::GET);
        let client: HttpClient = ServiceBuilder::new()
            .layer(layer)
            .service(Handshake::new(TcpConnector::new(), http2::<Body>))
            .multiplexed(addr);
        assert_eq!(answered_on(&client, addr, "/").await.unwrap(), 1);

        let held = server.held.notified();
        let hold = tokio::spawn({
            let client = client.clone();
            async move { answered_on(&client, addr, "/hold").await }
        });
        held.await;
        server.go_away.send(()).unwrap();

        // hyper shows the GOAWAY to the client only when it next sends: the
        // next requests may still go to the old connection (the server takes
        // new streams until its final GOAWAY), and soon go to a fresh one,
        // dialed at once (the backoff is an hour), while the held request
        // is still in flight.
        let mut conn = 1;
        while conn == 1 {
            conn = answered_on(&client, addr, "/").await.unwrap();
        }
        assert_eq!(conn, 2);
        assert!(!hold.is_finished(), "the held request is still in flight");
        server.release.notify_one();
        assert_eq!(
            hold.await.unwrap().unwrap(),
            1,
            "finished on the old connection"
        );
        assert_eq!(answered_on(&client, addr, "/").await.unwrap(), 2);
    };
    tokio::time::timeout(GUARD, test).await.expect("test hung");
}

// ---------------------------------------------------------------------------
// REFUSED_STREAM: the server's word that a request did not run
// ---------------------------------------------------------------------------

/// A bare h2 server that resets with `REFUSED_STREAM`, unread, every
/// `every`-th stream it gets (the first, then every `every`-th after it),
/// and answers the others, recording their ids.
async fn refusing_server(every: u64) -> (SocketAddr, Arc<Seen>, JoinHandle<()>) {
    let listener = listen::reusable("127.0.0.1:0".parse().unwrap());
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let streams = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut connections = JoinSet::new();
            while let Ok((io, _)) = listener.accept().await {
                let (seen, streams, conn) = (seen.clone(), streams.clone(), seen.connection());
                connections.spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(io).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        if streams.fetch_add(1, Ordering::SeqCst) % every == 0 {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let id = request.headers()["x-id"].to_str().unwrap().parse().unwrap();
                        seen.record(id, conn);
                        let _ = respond.send_response(Response::new(()), true);
                    }
                });
            }
        }
    });
    (addr, seen, task)
}

/// Sends `requests` `POST`s with `body`, one after another, through a
/// client with `layer` to a server that refuses every `every`-th stream.
/// Checks that each ran once and that the one connection stayed up, and
/// returns how many were sent again.
async fn through_refusals(
    every: u64,
    layer: ReconnectLayer<impl ResendPolicy<Request<Body>>>,
    body: &'static [u8],
    requests: u64,
) -> u64 {
    let test = async {
        let (addr, seen, server) = refusing_server(every).await;
        let client: HttpClient = ServiceBuilder::new()
            .layer(layer)
            .service(Handshake::new(TcpConnector::new(), http2::<Body>))
            .multiplexed(addr);
        for id in 0..requests {
            let request = Request::post(format!("http://{addr}/"))
                .header("x-id", id)
                .body(Full::new(Bytes::from_static(body)))
                .unwrap();
            let response = client.clone().oneshot(request).await.expect("answered");
            assert_eq!(response.status(), http::StatusCode::OK);
            assert_eq!(seen.times(id), 1, "request {id} ran once");
        }
        let stats = client.stats();
        assert_eq!(
            (stats.dials, stats.drops),
            (1, 0),
            "one connection: {stats:?}"
        );
        server.abort();
        stats.retries
    };
    tokio::time::timeout(GUARD, test).await.expect("test hung")
}

/// A `POST` whose HTTP/2 stream the server refuses is sent again with the
/// default policy (no opt-in), and runs once: `REFUSED_STREAM` says it did
/// not run, and hyper had not read its (empty) body, so the request came
/// back whole. The connection stays up: the refusal was for one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_sent_again_and_runs_once() {
    let retries = through_refusals(u64::MAX, ReconnectLayer::new(policy()), b"", 1).await;
    assert_eq!(retries, 1);
}

/// A server that refuses every other stream costs one re-send each, on the
/// same connection: every request is answered and runs once, and the
/// client never dials again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_keep_the_connection() {
    let retries = through_refusals(2, ReconnectLayer::new(policy()), b"", 20).await;
    assert_eq!(retries, 20);
}

/// A refused `POST` whose body hyper may already have read is sent again
/// from the copy kept when it is opted in, on the same connection, and
/// runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_opted_in_is_sent_again_from_its_copy() {
    let layer = ReconnectLayer::new(policy()).resend_if(|_: &Request<Body>| true);
    let retries = through_refusals(u64::MAX, layer, b"payload", 1).await;
    assert_eq!(retries, 1);
}
