//! hyper connections under the layer, against real hyper servers that are
//! killed and restarted on the same port: nothing unsent is lost, and nothing
//! that may have been sent is sent again unless opted in.
#![cfg(feature = "hyper")]

use support::listen;
use support::outcome::{Outcome, Tally};
use support::policy::quick_redial;
use support::redial_watch;

use redial_watch::{assert_one_drop_and_one_redial, ready_after_a_drop, record_phases};
use std::convert::Infallible;
use std::future::Future;
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::error::ConnectionLost;
use tower_redial::error::NotSent;
use tower_redial::hyper::{http1, http2, hyper_error, is_hyper_transport_error};
use tower_redial::retry::ResendPolicy;
use tower_redial::state::Phase;
use tower_redial::{BoxError, Client, ReconnectLayer, ReconnectPolicy};

type Body = Full<Bytes>;
type HttpClient = Client<Request<Body>, Response<Incoming>>;

// ---------------------------------------------------------------------------
// A restartable hyper server that keeps books
// ---------------------------------------------------------------------------

/// What the server executed, across restarts.
#[derive(Default)]
struct Books {
    /// Which run of the server this is: 1, then 2 after a restart.
    generation: AtomicU64,
    /// `POST /incr` and `POST /incr-then-die` executed.
    incr: AtomicU64,
    /// ...of which in the first run.
    incr_first_run: AtomicU64,
    /// `PUT /put-then-die` executed.
    puts: AtomicU64,
    /// A `GET /hold` arrived (and holds its stream open for good).
    held: Notify,
    /// Connections open now.
    open: watch::Sender<usize>,
}

/// An HTTP/1 + HTTP/2 server (hyper-util's `auto`) on 127.0.0.1.
///
/// - `POST /incr`: counts, and answers `"<generation> <count>"`.
/// - `GET /count`: answers the count.
/// - `GET /hold`: never answers.
/// - `POST /incr-then-die`: counts, then kills its connection unanswered.
/// - `PUT /put-then-die`: the first time, kills its connection unanswered;
///   after that, answers.
///
/// `stop` kills every connection at once, as a crash would; `restart` binds
/// the same port again. Dropping it aborts everything.
struct Server {
    addr: SocketAddr,
    books: Arc<Books>,
    max_streams: Option<u32>,
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// With HTTP/2's `SETTINGS_MAX_CONCURRENT_STREAMS` set.
    async fn start_with(max_streams: Option<u32>) -> Self {
        let listener = listen::reusable("127.0.0.1:0".parse().unwrap());
        let server = Self {
            addr: listener.local_addr().unwrap(),
            books: Arc::default(),
            max_streams,
            running: Mutex::new(None),
        };
        server.run(listener);
        server
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn run(&self, listener: TcpListener) {
        self.books.generation.fetch_add(1, Ordering::SeqCst);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http2().max_concurrent_streams(self.max_streams);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, builder, self.books.clone(), stopped));
        *lock(&self.running) = Some(Running { stop, task });
    }

    /// Closes the listener and kills every connection; returns once all are
    /// closed.
    async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(Running { stop, task }) = running {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }

    /// Kills the server, and starts it again on the same port.
    async fn restart(&self) {
        self.stop().await;
        self.run(listen::reusable(self.addr));
    }

    fn incr(&self) -> u64 {
        self.books.incr.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.running).take() {
            // Dropping the task's JoinSet aborts every connection task.
            running.task.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    books: Arc<Books>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                if let Ok((io, _)) = accepted {
                    connections.spawn(connection(io, builder.clone(), books.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Serves one connection until it ends or a handler kills it.
async fn connection(io: TcpStream, builder: auto::Builder<TokioExecutor>, books: Arc<Books>) {
    let _open = Open::new(books.clone());
    let kill = Arc::new(Notify::new());
    let service = service_fn({
        let kill = kill.clone();
        move |request| handle(request, books.clone(), kill.clone())
    });
    tokio::select! {
        _ = builder.serve_connection(TokioIo::new(io), service) => {}
        // Dropping the connection closes the socket with no answer.
        _ = kill.notified() => {}
    }
}

/// Counts a connection as open for as long as it lives (even if aborted).
struct Open(Arc<Books>);

impl Open {
    fn new(books: Arc<Books>) -> Self {
        books.open.send_modify(|n| *n += 1);
        Self(books)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.send_modify(|n| *n -= 1);
    }
}

async fn handle(
    request: Request<Incoming>,
    books: Arc<Books>,
    kill: Arc<Notify>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    // Read the whole request before acting on it.
    if body.collect().await.is_err() {
        return Ok(status(StatusCode::BAD_REQUEST));
    }
    let generation = books.generation.load(Ordering::SeqCst);
    let count = |books: &Books| {
        let n = books.incr.fetch_add(1, Ordering::SeqCst) + 1;
        if generation == 1 {
            books.incr_first_run.fetch_add(1, Ordering::SeqCst);
        }
        n
    };
    let reply = |n: u64| Ok(Response::new(Full::new(format!("{generation} {n}").into())));
    match (parts.method, parts.uri.path()) {
        (Method::POST, "/incr") => reply(count(&books)),
        (Method::GET, "/count") => reply(books.incr.load(Ordering::SeqCst)),
        (Method::GET, "/hold") => {
            books.held.notify_one();
            never().await
        }
        (Method::POST, "/incr-then-die") => {
            count(&books);
            kill.notify_one();
            never().await
        }
        (Method::PUT, "/put-then-die") => {
            let n = books.puts.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 1 {
                kill.notify_one();
                never().await
            } else {
                reply(n)
            }
        }
        _ => Ok(status(StatusCode::NOT_FOUND)),
    }
}

async fn never() -> Result<Response<Body>, Infallible> {
    std::future::pending().await
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = code;
    response
}

// ---------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Proto {
    Http1,
    Http2,
}

/// A generous wait limit: no request may fail fast in these tests, however
/// slow the machine.
fn policy() -> ReconnectPolicy {
    quick_redial()
        .wait_limit(Duration::from_secs(60))
        .seed(7)
        .build()
        .unwrap()
}

fn client<R>(proto: Proto, addr: SocketAddr, layer: ReconnectLayer<R>) -> HttpClient
where
    R: ResendPolicy<Request<Body>>,
{
    let builder = ServiceBuilder::new().layer(layer);
    match proto {
        Proto::Http1 => builder
            .service(Handshake::new(TcpConnector::new(), http1::<Body>))
            .client(addr),
        Proto::Http2 => builder
            .service(Handshake::new(TcpConnector::new(), http2::<Body>))
            .multiplexed(addr),
    }
}

/// A request in the form each protocol wants: origin-form with a `Host`
/// header for HTTP/1, an absolute URI for HTTP/2.
fn request(proto: Proto, addr: SocketAddr, method: Method, path: &str) -> Request<Body> {
    let builder = match proto {
        Proto::Http1 => Request::builder()
            .uri(path)
            .header(header::HOST, addr.to_string()),
        Proto::Http2 => Request::builder().uri(format!("http://{addr}{path}")),
    };
    builder
        .method(method)
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap()
}

/// A reply: the server's generation and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reply {
    generation: u64,
    n: u64,
}

/// Sends a request and reads the whole reply.
async fn send(client: HttpClient, request: Request<Body>) -> Result<Reply, BoxError> {
    let response = client.oneshot(request).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await?.to_bytes();
    let text = std::str::from_utf8(&body)?;
    let (generation, n) = text.split_once(' ').ok_or("bad reply")?;
    Ok(Reply {
        generation: generation.parse()?,
        n: n.parse()?,
    })
}

/// How a request ended: hyper's own error anywhere in the chain (a
/// response body cut short, which no connection sees) also makes it
/// ambiguous.
fn outcome(result: &Result<Reply, BoxError>) -> Outcome {
    Outcome::of_with(result, |error| hyper_error(error).is_some())
}

/// What the callers were told: how each request ended, and the count each
/// success was answered with.
#[derive(Default)]
struct Told {
    tally: Tally,
    replies: Vec<u64>,
}

impl Told {
    fn record(&mut self, result: &Result<Reply, BoxError>) {
        self.tally.record_as(outcome(result), result);
        if let Ok(reply) = result {
            self.replies.push(reply.n);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A hang guard, far longer than any test needs.
async fn guard<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("test hung")
}

// ---------------------------------------------------------------------------
// Restart during traffic
// ---------------------------------------------------------------------------

const WORKERS: usize = 4;
const OUTAGE_REQUESTS: usize = 4;

/// Kills and restarts the server while several tasks send `POST /incr`
/// through one client, and checks the books.
async fn restart_during_traffic(proto: Proto) {
    let server = Server::start().await;
    let addr = server.addr();
    let client = client(proto, addr, ReconnectLayer::new(policy()));

    // Workers send one request after another until told to stop.
    let told = Arc::new(Mutex::new(Told::default()));
    let (ok_tx, mut ok_rx) = watch::channel((0usize, 0usize)); // successes in runs 1 and 2
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        let (client, told, ok_tx, stop) =
            (client.clone(), told.clone(), ok_tx.clone(), stop_rx.clone());
        workers.spawn(async move {
            while !*stop.borrow() {
                let result =
                    send(client.clone(), request(proto, addr, Method::POST, "/incr")).await;
                if let Ok(reply) = &result {
                    ok_tx.send_modify(|(first, second)| match reply.generation {
                        1 => *first += 1,
                        _ => *second += 1,
                    });
                }
                lock(&told).record(&result);
            }
        });
    }

    // Traffic flows; then the server crashes.
    ok_rx.wait_for(|(first, _)| *first >= 20).await.unwrap();
    server.stop().await;

    // The client notices, and its redials are refused.
    let mut state = client.state();
    state
        .wait_for(|s| s.phase() == Phase::Backoff)
        .await
        .unwrap();

    // Requests sent during the outage wait in the queue...
    let during: Vec<_> = (0..OUTAGE_REQUESTS)
        .map(|_| {
            tokio::spawn(send(
                client.clone(),
                request(proto, addr, Method::POST, "/incr"),
            ))
        })
        .collect();
    tokio::task::yield_now().await;
    assert!(
        during.iter().all(|task| !task.is_finished()),
        "a request finished while the server was down"
    );

    // ...and are answered by the restarted server.
    server.restart().await;
    for task in during {
        let reply = task
            .await
            .unwrap()
            .expect("request sent during the outage failed");
        assert_eq!(reply.generation, 2, "answered after the restart");
        lock(&told).record(&Ok(reply));
    }

    // Traffic flows again.
    ok_rx.wait_for(|(_, second)| *second >= 20).await.unwrap();
    stop_tx.send_replace(true);
    while let Some(joined) = workers.join_next().await {
        joined.unwrap();
    }

    // Every request ended in exactly one outcome: answered, or ambiguous.
    let Told { tally, mut replies } = std::mem::take(&mut *lock(&told));
    tally.assert_ok_or_ambiguous();
    let (ok, ambiguous) = (tally.ok, tally.ambiguous);

    // Books: each success is its own execution, and nothing ran that the
    // client did not send once: answered <= executed <= answered + ambiguous.
    replies.sort_unstable();
    replies.dedup();
    assert_eq!(
        replies.len() as u64,
        ok,
        "two successes share one execution"
    );
    let executed = server.incr();
    let stats = client.stats();
    eprintln!(
        "{proto:?}: {} requests, {ok} answered, {ambiguous} ambiguous, {executed} run; {stats:?}; {tally:?}",
        tally.issued,
    );
    assert!(
        ok <= executed && executed <= ok + ambiguous,
        "{proto:?}: answered {ok}, ambiguous {ambiguous}, executed {executed}"
    );

    assert!(stats.drops >= 1, "{stats:?}");
    assert!(stats.dials >= 2, "{stats:?}");
    assert!(stats.dial_failures >= 1, "{stats:?}");
    assert_eq!(stats.fail_fast, 0, "{stats:?}");
}

/// HTTP/1: a server crash and restart during traffic from several tasks; every
/// request ends in one outcome, requests sent while the server is down wait and
/// succeed after the restart, and no `POST` runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http1_rides_through_a_restart_without_duplicates() {
    guard(restart_during_traffic(Proto::Http1)).await;
}

/// HTTP/2: the same, with requests multiplexed over one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_rides_through_a_restart_without_duplicates() {
    guard(restart_during_traffic(Proto::Http2)).await;
}

// ---------------------------------------------------------------------------
// Requests hyper hands back unsent
// ---------------------------------------------------------------------------

/// HTTP/2 requests still queued in hyper when the connection dies are handed
/// back unsent, re-sent on the next connection, and run exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_requests_handed_back_unsent_are_resent_once() {
    guard(async {
        // One stream at a time: a held request keeps the others in hyper's
        // queue, unsent.
        let server = Server::start_with(Some(1)).await;
        let addr = server.addr();
        let proto = Proto::Http2;

        // Count the requests that reach the connection service.
        let (calls_tx, mut calls) = watch::channel(0usize);
        let calls_tx = Arc::new(calls_tx);
        let handshake = move |io: TcpStream| {
            let calls_tx = calls_tx.clone();
            async move {
                let connection = http2::<Body>(io).await?;
                Ok::<_, hyper::Error>(
                    ServiceBuilder::new()
                        .map_request(move |request: Request<Body>| {
                            calls_tx.send_modify(|n| *n += 1);
                            request
                        })
                        .service(connection),
                )
            }
        };
        let client: HttpClient = ServiceBuilder::new()
            .layer(ReconnectLayer::new(policy()))
            .service(Handshake::new(TcpConnector::new(), handshake))
            .client(addr);

        // A first request: the client has the server's settings.
        send(client.clone(), request(proto, addr, Method::GET, "/count"))
            .await
            .unwrap();
        // The only stream is held...
        let held = tokio::spawn(send(
            client.clone(),
            request(proto, addr, Method::GET, "/hold"),
        ));
        server.books.held.notified().await;
        // ...so these reach hyper, and wait there.
        const POSTS: usize = 5;
        let posts: Vec<_> = (0..POSTS)
            .map(|_| {
                tokio::spawn(send(
                    client.clone(),
                    request(proto, addr, Method::POST, "/incr"),
                ))
            })
            .collect();
        calls.wait_for(|n| *n == 2 + POSTS).await.unwrap();
        assert_eq!(server.incr(), 0);

        server.restart().await;

        let held = held.await.unwrap();
        assert_eq!(outcome(&held), Outcome::Ambiguous, "{held:?}");
        let mut ok = 0;
        for post in posts {
            let result = post.await.unwrap();
            // A stream the server reset with REFUSED_STREAM (one stream at a
            // time) never ran: `NotSent`, without the request when hyper
            // had already read its body.
            if result.as_ref().is_err_and(|e| e.is::<NotSent>()) {
                continue;
            }
            match (outcome(&result), result) {
                (Outcome::Ok, Ok(reply)) => {
                    assert_eq!(reply.generation, 2);
                    ok += 1;
                }
                // The one hyper had taken from its queue, waiting for the
                // stream: hyper cannot tell that it was not sent.
                (Outcome::Ambiguous, _) => {}
                (other, result) => panic!("{other:?}: {result:?}"),
            }
        }
        let stats = client.stats();
        eprintln!("{ok} of {POSTS} handed back and answered; {stats:?}");
        assert!(ok >= 1, "no request was handed back");
        assert_eq!(server.books.incr_first_run.load(Ordering::SeqCst), 0);
        assert_eq!(server.incr(), ok, "each re-sent request ran exactly once");
        assert!(
            stats.retries >= ok,
            "every success was a re-send: {stats:?}"
        );
    })
    .await;
}

/// A connection that dies under a request comes back as `ConnectionLost`,
/// with hyper's error inside. That is the connection's own verdict: the
/// default classifier calls the `ConnectionLost` dead, but not hyper's bare
/// error, although this test is built with the `hyper` feature on. The
/// default classifier is the same whatever the cargo features.
async fn a_connection_dying_under_a_request_says_so(proto: Proto) {
    guard(async {
        let server = Server::start().await;
        let addr = server.addr();
        let io = TcpStream::connect(addr).await.unwrap();
        let request = request(proto, addr, Method::POST, "/incr-then-die");
        let error = match proto {
            Proto::Http1 => {
                let mut connection = http1::<Body>(io).await.unwrap();
                connection.ready().await.unwrap().call(request).await
            }
            Proto::Http2 => {
                let mut connection = http2::<Body>(io).await.unwrap();
                connection.ready().await.unwrap().call(request).await
            }
        }
        .unwrap_err();

        assert!(error.is::<ConnectionLost>(), "{error:?}");
        assert!(tower_redial::classify::is_transport_error(&*error));
        let hyper = hyper_error(&*error).expect("hyper's error inside");
        if let Proto::Http1 = proto {
            // "Connection closed before message completed" carries no IO
            // error: only the connection's verdict makes it dead. (HTTP/2
            // reports a broken pipe here, an IO error either way.)
            assert!(hyper.is_incomplete_message(), "{hyper:?}");
            assert!(is_hyper_transport_error(hyper));
            assert!(!tower_redial::classify::is_transport_error(hyper));
        }
        assert_eq!(server.incr(), 1);
    })
    .await;
}

#[tokio::test]
async fn http1_a_connection_dying_under_a_request_says_so() {
    a_connection_dying_under_a_request_says_so(Proto::Http1).await;
}

#[tokio::test]
async fn http2_a_connection_dying_under_a_request_says_so() {
    a_connection_dying_under_a_request_says_so(Proto::Http2).await;
}

/// A request sent on an HTTP/1 connection that closed after `poll_ready`
/// (the server closed an idle keep-alive connection) comes back as a
/// `NotSent` carrying the request itself, and the server never saw it.
#[tokio::test]
async fn http1_hands_back_a_request_on_a_closed_connection() {
    guard(async {
        let server = Server::start().await;
        let addr = server.addr();
        let io = TcpStream::connect(addr).await.unwrap();
        let mut connection = http1::<Body>(io).await.unwrap();
        let proto = Proto::Http1;

        let response = connection
            .ready()
            .await
            .unwrap()
            .call(request(proto, addr, Method::GET, "/count"))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();

        // Ready, then the server goes away before the request is sent.
        connection.ready().await.unwrap();
        server.stop().await;
        while !connection.is_closed() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        let mut error = connection
            .call(request(proto, addr, Method::POST, "/incr"))
            .await
            .unwrap_err();
        let not_sent = error.downcast_mut::<NotSent>().expect("NotSent");
        let request = not_sent
            .take_request::<Request<Body>>()
            .expect("the request is handed back");
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri().path(), "/incr");
        assert!(is_hyper_transport_error(&*error));
        assert!(tower_redial::classify::is_transport_error(&*error));
        assert_eq!(server.incr(), 0);
    })
    .await;
}

// ---------------------------------------------------------------------------
// An idle connection's death
// ---------------------------------------------------------------------------

/// How long the client may take to be ready again after a restart: a hang
/// guard, not a speed assumption.
const NOTICE_GUARD: Duration = Duration::from_secs(10);

/// Restarts the server while the client's connection is idle, and sends
/// nothing: the client notices, counts the drop, redials and is ready
/// again, connected to the new server; the next request then goes out once,
/// on that connection.
async fn idle_connection_death_is_noticed_without_traffic(proto: Proto) {
    let server = Server::start().await;
    let addr = server.addr();
    let client = client(proto, addr, ReconnectLayer::new(policy()));
    let phases = record_phases(client.state());

    let reply = send(client.clone(), request(proto, addr, Method::POST, "/incr"))
        .await
        .expect("the first request");
    assert_eq!(
        reply,
        Reply {
            generation: 1,
            n: 1
        }
    );
    let mut state = client.state();
    timeout(NOTICE_GUARD, state.wait_for(|s| s.phase() == Phase::Ready))
        .await
        .expect("ready after a request")
        .unwrap();
    let before = client.stats();
    assert_eq!((before.dials, before.drops), (1, 0), "{before:?}");

    // Kill every connection and start again on the same port; no request.
    let restarted = Instant::now();
    let (back, ready_at) = tokio::join!(
        async {
            server.restart().await;
            restarted.elapsed()
        },
        ready_after_a_drop(&client, &phases, NOTICE_GUARD),
    );
    let took = ready_at - restarted;
    let stats = client.stats();
    println!(
        "{proto:?}: ready {took:?} after the restart began (server listening again after \
         {back:?}); {stats:?}; states seen: {:#?}",
        lock(&phases)
    );
    assert_one_drop_and_one_redial(&stats);
    // The new connection is open at the new server, and nothing was sent.
    let mut open = server.books.open.subscribe();
    timeout(NOTICE_GUARD, open.wait_for(|n| *n == 1))
        .await
        .expect("the new server to see the connection")
        .unwrap();
    assert_eq!(server.incr(), 1, "no request was sent");

    let reply = timeout(
        NOTICE_GUARD,
        send(client.clone(), request(proto, addr, Method::POST, "/incr")),
    )
    .await
    .expect("the request after the restart hung")
    .expect("the request after the restart succeeds");
    assert_eq!(
        reply,
        Reply {
            generation: 2,
            n: 2
        }
    );
    let after = client.stats();
    assert_eq!(after.retries, 0, "not a re-send: {after:?}");
    assert_eq!(after, stats, "sent once, on the connection made while idle");
    assert_eq!(*open.borrow(), 1, "on the connection made while idle");
    println!("{proto:?}: states seen by the end: {:#?}", lock(&phases));
}

/// HTTP/1: a restart of the server under an idle connection is noticed, and
/// the client is connected again, with no request sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_idle_connection_death_is_noticed_without_traffic() {
    guard(idle_connection_death_is_noticed_without_traffic(
        Proto::Http1,
    ))
    .await;
}

/// HTTP/2: a restart of the server under an idle connection is noticed, and
/// the client is connected again, with no request sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_idle_connection_death_is_noticed_without_traffic() {
    guard(idle_connection_death_is_noticed_without_traffic(
        Proto::Http2,
    ))
    .await;
}

// ---------------------------------------------------------------------------
// Requests that may have been sent
// ---------------------------------------------------------------------------

/// A `POST` that the server ran before its connection died is not sent again
/// by default, even though the classifier calls the connection dead: the
/// caller gets the error, the server ran it once, and the client redials.
async fn possibly_sent_post_is_not_resent(proto: Proto) {
    let server = Server::start().await;
    let addr = server.addr();
    let client = client(proto, addr, ReconnectLayer::new(policy()));

    let result = send(
        client.clone(),
        request(proto, addr, Method::POST, "/incr-then-die"),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Ambiguous, "{result:?}");
    assert_eq!(server.incr(), 1, "ran once, not re-sent");
    assert_eq!(client.stats().retries, 0);

    // The next request goes out on a new connection.
    let reply = send(client.clone(), request(proto, addr, Method::POST, "/incr"))
        .await
        .unwrap();
    assert_eq!(reply.n, 2);
    let stats = client.stats();
    assert_eq!(stats.dials, 2, "{stats:?}");
    assert_eq!(stats.retries, 0, "{stats:?}");
}

/// HTTP/1: a possibly-sent `POST` is not re-sent by default.
#[tokio::test]
async fn http1_possibly_sent_post_is_not_resent() {
    guard(possibly_sent_post_is_not_resent(Proto::Http1)).await;
}

/// HTTP/2: a possibly-sent `POST` is not re-sent by default.
#[tokio::test]
async fn http2_possibly_sent_post_is_not_resent() {
    guard(possibly_sent_post_is_not_resent(Proto::Http2)).await;
}

/// With `resend_if` opting `PUT` in, a `PUT` whose connection died after the
/// server ran it is sent again and answered (the server ran it twice, which
/// is what opting in allows), while a `POST` in the same situation is not.
async fn opted_in_requests_are_resent(proto: Proto) {
    let server = Server::start().await;
    let addr = server.addr();
    let layer = ReconnectLayer::new(policy())
        .resend_if(|request: &Request<Body>| request.method() == Method::PUT);
    let client = client(proto, addr, layer);

    let reply = send(
        client.clone(),
        request(proto, addr, Method::PUT, "/put-then-die"),
    )
    .await
    .expect("the PUT is re-sent and answered");
    assert_eq!(reply.n, 2, "answered by its second run");
    assert_eq!(server.books.puts.load(Ordering::SeqCst), 2);
    assert_eq!(client.stats().retries, 1);

    let result = send(
        client.clone(),
        request(proto, addr, Method::POST, "/incr-then-die"),
    )
    .await;
    assert_eq!(outcome(&result), Outcome::Ambiguous, "{result:?}");
    assert_eq!(server.incr(), 1, "the POST ran once, not re-sent");
    assert_eq!(client.stats().retries, 1);
}

/// HTTP/1: only opted-in requests are re-sent after a possible send.
#[tokio::test]
async fn http1_opted_in_requests_are_resent() {
    guard(opted_in_requests_are_resent(Proto::Http1)).await;
}

/// HTTP/2: only opted-in requests are re-sent after a possible send.
#[tokio::test]
async fn http2_opted_in_requests_are_resent() {
    guard(opted_in_requests_are_resent(Proto::Http2)).await;
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

/// Dropping every handle of the client closes its connection: the driver
/// task spawned by the handshake ends, and the server sees the socket close.
async fn dropping_the_client_closes_its_connection(proto: Proto) {
    let server = Server::start().await;
    let addr = server.addr();
    let client = client(proto, addr, ReconnectLayer::new(policy()));
    send(client.clone(), request(proto, addr, Method::POST, "/incr"))
        .await
        .unwrap();
    let mut open = server.books.open.subscribe();
    assert_eq!(*open.borrow(), 1);

    drop(client);
    open.wait_for(|n| *n == 0).await.unwrap();
}

/// HTTP/1: dropping the client closes its connection.
#[tokio::test]
async fn http1_dropping_the_client_closes_its_connection() {
    guard(dropping_the_client_closes_its_connection(Proto::Http1)).await;
}

/// HTTP/2: dropping the client closes its connection.
#[tokio::test]
async fn http2_dropping_the_client_closes_its_connection() {
    guard(dropping_the_client_closes_its_connection(Proto::Http2)).await;
}
