//! Rolling restarts under gRPC: a tonic server stopped gracefully (tonic's
//! `serve_with_incoming_shutdown`: it stops accepting, sends GOAWAY on every
//! connection and drains the calls in flight) and started again on the same
//! port, ten times, under unary calls from 16 tasks through one generated
//! tonic client over this crate's HTTP/2 transport.
//!
//! Every call carries an id in its metadata, and the server records the ids
//! it runs, so the books tell "the server never saw it" from "it ran". gRPC
//! requests have a streaming body and are not `Clone`, so they cannot be
//! opted in to re-sending: only what hyper hands back unsent goes again.
//! The books, printed and asserted: no call runs twice; a call fails unrun
//! only when the connection broke under it: by the server's GOAWAY, which
//! hyper also reports on a stream it had just opened, or by the socket
//! closing as the server finishes its shutdown; the transport (`Grpc`'s)
//! answers both with `Code::Unavailable` and `tower-redial-error:
//! connection-lost` (tonic alone would say `Internal` and `Unknown`); and
//! the client never gives up.
//!
//! Last, a stream the server refuses: hyper reads a gRPC body as it opens
//! the stream, so a refused call cannot come back whole and is not sent
//! again; its caller gets `Unavailable` (`not-sent`).

use support::listen;
use support::listen::{Restartable, Shutdown};
use support::policy::quick_redial;

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::codegen::BoxStream;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_redial_interop::{redial_error, GrpcClient, Transport};

/// Restarts per run.
const CYCLES: usize = 10;
/// Calls each task makes between two restarts.
const PER_CYCLE: usize = 8;
/// The metadata key that carries a call's id.
const ID: &str = "x-call-id";
/// A hang guard, far longer than the test needs.
const GUARD: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// A tonic server that restarts gracefully and records what it ran
// ---------------------------------------------------------------------------

/// The id of every call the server ran, with the client address (so the
/// connection) of each run, and a watch of how many runs there were.
struct Seen(Mutex<HashMap<u64, Vec<SocketAddr>>>, watch::Sender<usize>);

impl Seen {
    fn new() -> Self {
        Self(Mutex::default(), watch::Sender::new(0))
    }

    fn record(&self, id: u64, peer: SocketAddr) {
        lock(&self.0).entry(id).or_default().push(peer);
        self.1.send_modify(|runs| *runs += 1);
    }

    /// Runs so far, each run of a call counted.
    fn runs(&self) -> usize {
        *self.1.borrow()
    }

    /// Waits until the server has run `runs` calls in all.
    async fn wait_for_runs(&self, runs: usize) {
        let mut watch = self.1.subscribe();
        watch.wait_for(|n| *n >= runs).await.unwrap();
    }

    fn times(&self, id: u64) -> usize {
        lock(&self.0).get(&id).map_or(0, Vec::len)
    }

    /// Calls run, counted once each.
    fn ran(&self) -> usize {
        lock(&self.0).len()
    }

    /// Calls that ran more than once, with the connections they ran on.
    fn duplicates(&self) -> Vec<(u64, Vec<SocketAddr>)> {
        lock(&self.0)
            .iter()
            .filter(|(_, peers)| peers.len() > 1)
            .map(|(&id, peers)| (id, peers.clone()))
            .collect()
    }
}

/// The `grpc.health.v1` service, as our own implementation of tonic's
/// generated trait: `Check` records the call's id, then answers `SERVING` a
/// little later, so that calls are in flight when the server shuts down.
struct Recorder(Arc<Seen>);

#[tonic::codegen::async_trait]
impl Health for Recorder {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let id = request
            .metadata()
            .get(ID)
            .and_then(|id| id.to_str().ok()?.parse().ok())
            .expect("every call carries an id");
        let peer = request.remote_addr().expect("a TCP peer");
        self.0.record(id, peer);
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not watched here"))
    }
}

/// The tonic server, restartable gracefully on its port, and its books.
fn start() -> (Restartable, Arc<Seen>) {
    let seen = Arc::new(Seen::new());
    let books = seen.clone();
    let server = Restartable::start(move |listener, stop| serve(listener, books.clone(), stop));
    (server, seen)
}

/// Serves until `stop`, then stops accepting, sends GOAWAY on every
/// connection and returns once the calls in flight are answered and the
/// connections closed (tonic's graceful shutdown).
async fn serve(listener: TcpListener, seen: Arc<Seen>, stop: Shutdown) {
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(io, _)| io);
        Some((accepted, listener))
    });
    Server::builder()
        .add_service(HealthServer::new(Recorder(seen)))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        })
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// The client and its books
// ---------------------------------------------------------------------------

/// No opt-in to re-sending: gRPC requests are not `Clone`.
fn grpc_client(addr: SocketAddr) -> (GrpcClient, Transport) {
    tower_redial_interop::grpc_client(addr, quick_redial().build().unwrap())
}

/// How a failed call failed, read from the `Status` its caller got: the
/// crate's error from its metadata (`tower-redial-error`), and hyper's and
/// h2's from its message (the crate's error and its `source()` chain) or,
/// for an error of hyper's own, its chain.
#[derive(Debug)]
struct Failure {
    code: Code,
    /// The server's HTTP/2 GOAWAY: h2's "connection error received".
    go_away: bool,
    /// The server's `REFUSED_STREAM`.
    refused: bool,
    /// The crate's `NotSent`: the call came back unsent and was not sent
    /// again.
    not_sent: bool,
    /// The client's own answer: it failed fast, or was closed.
    given_up: bool,
    /// The crate's `ConnectionLost`: the connection broke under the call,
    /// which may have run.
    lost: bool,
    status: String,
}

async fn call(mut health: GrpcClient, id: u64) -> Result<(), Failure> {
    let mut request = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert(ID, id.to_string().parse().unwrap());
    let status = match health.check(request).await {
        Ok(response) => {
            assert_eq!(response.get_ref().status, ServingStatus::Serving as i32);
            return Ok(());
        }
        Err(status) => status,
    };
    let chain = || {
        std::iter::successors(
            Some(&status as &(dyn Error + 'static)),
            |e: &&(dyn Error + 'static)| (*e).source(),
        )
    };
    let h2 =
        |is: fn(&h2::Error) -> bool| chain().any(|e| e.downcast_ref::<h2::Error>().is_some_and(is));
    let said = |text: &str| status.message().contains(text);
    let kind = redial_error(&status);
    Err(Failure {
        code: status.code(),
        go_away: h2(|e| e.is_go_away() && e.is_remote()) || said("connection error received"),
        refused: h2(|e| {
            e.is_reset() && e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM)
        }) || said("refused stream before processing any application logic"),
        not_sent: kind == Some("not-sent"),
        given_up: matches!(kind, Some("unavailable" | "closed")),
        lost: kind == Some("connection-lost"),
        status: format!("{status:?}"),
    })
}

/// What became of the calls.
#[derive(Debug, Default)]
struct Books {
    sent: usize,
    succeeded: usize,
    /// Failed, and the server ran them: the caller cannot know.
    failed_ambiguous: usize,
    /// Failed, though the server never ran them.
    failed_not_seen: usize,
    /// The failed calls by the `Status` code their caller got.
    codes: BTreeMap<String, usize>,
}

/// `tasks` tasks make unary calls with unique ids through one client while
/// the tonic server restarts gracefully on the same port, `CYCLES` times,
/// then the books are checked.
async fn rolling_restarts(tasks: usize) {
    let test = async {
        let (mut server, seen) = start();
        let (health, transport) = grpc_client(server.addr());
        let next_id = Arc::new(AtomicU64::new(0));
        let mut results = Vec::new();
        for _ in 0..CYCLES {
            let runs = seen.runs();
            let mut workers = JoinSet::new();
            for _ in 0..tasks {
                let (health, next_id) = (health.clone(), next_id.clone());
                workers.spawn(async move {
                    let mut results = Vec::new();
                    for _ in 0..PER_CYCLE {
                        let id = next_id.fetch_add(1, Ordering::SeqCst);
                        results.push((id, call(health.clone(), id).await));
                    }
                    results
                });
            }
            // Restart while the tasks are busy: once the server has run
            // about one call per task this cycle, so that the client's
            // connection is open and calls are in flight on it.
            seen.wait_for_runs(runs + tasks).await;
            server.restart_gracefully().await;
            while let Some(done) = workers.join_next().await {
                results.extend(done.expect("worker"));
            }
        }

        // The client is back on the last server.
        let last = next_id.fetch_add(1, Ordering::SeqCst);
        let result = call(health.clone(), last).await;
        if let Err(failure) = &result {
            panic!("a call after the last restart failed: {failure:?}");
        }
        results.push((last, result));

        let seen = &seen;
        let mut books = Books::default();
        let mut not_seen = Vec::new();
        let mut given_up = Vec::new();
        for (id, result) in &results {
            books.sent += 1;
            let Err(failure) = result else {
                books.succeeded += 1;
                continue;
            };
            *books
                .codes
                .entry(format!("{:?}", failure.code))
                .or_default() += 1;
            println!(
                "call {id} (ran {} times): {}",
                seen.times(*id),
                failure.status
            );
            if failure.given_up || failure.not_sent {
                given_up.push(failure);
            }
            if seen.times(*id) > 0 {
                books.failed_ambiguous += 1;
            } else {
                books.failed_not_seen += 1;
                not_seen.push(failure);
            }
        }
        let duplicates = seen.duplicates();
        let stats = transport.stats();
        println!(
            "tonic unary, {tasks} tasks: sent {}, succeeded {}, failed ambiguous {}, failed not seen {}, \
             re-sent {}, server ran {}, ran twice {}; failed calls by code {:?}; {stats:?}",
            books.sent,
            books.succeeded,
            books.failed_ambiguous,
            books.failed_not_seen,
            stats.retries,
            seen.ran(),
            duplicates.len(),
            books.codes,
        );

        // Not opted in, and not `Clone`: nothing that may have run is sent
        // again.
        assert!(duplicates.is_empty(), "ran twice: {duplicates:?}");
        // The client never answers for the server here: no fail-fast, and
        // every call hyper handed back unsent was sent again (`re-sent`).
        assert!(given_up.is_empty(), "the client gave up: {given_up:#?}");
        assert_eq!(stats.fail_fast, 0, "{stats:?}");
        // What failed unrun failed only because the connection broke under
        // the call, which the crate cannot tell from a call that ran: the
        // server's GOAWAY, which hyper also reports on a stream it had just
        // opened (hyper #2500); or, when the client had not yet read the
        // GOAWAY, the socket closing under the call as the server finished
        // its shutdown. Both are `Unavailable` (`connection-lost`), as
        // grpc-go reports a lost connection (tonic alone: `Internal` and
        // `Unknown`).
        let other: Vec<_> = not_seen
            .iter()
            .filter(|f| !(f.lost && f.code == Code::Unavailable))
            .collect();
        assert!(
            other.is_empty(),
            "failed unrun, and not by the connection breaking under the call: {other:#?}"
        );
        assert_eq!(books.sent, CYCLES * tasks * PER_CYCLE + 1);
        assert!(books.succeeded <= seen.ran());
        assert!(seen.ran() <= books.succeeded + books.failed_ambiguous);
        // Every restart closed a connection the client had calls on, and
        // the client dialed again.
        assert!(stats.drops >= CYCLES as u64, "{stats:?}");
        assert!(stats.dials > CYCLES as u64, "{stats:?}");
    };
    tokio::time::timeout(GUARD, test).await.expect("test hung");
}

/// 16 tasks of unary calls through one client, across ten graceful
/// restarts of the tonic server: no call runs twice, a call fails unrun
/// only when the connection broke under it, and the client never gives up
/// on a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_rolling_restarts_run_no_call_twice() {
    rolling_restarts(16).await;
}

/// The same with 64 tasks: enough calls in flight at each GOAWAY that some
/// fail in many runs, so the books above are checked on failures too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_rolling_restarts_under_heavier_load() {
    rolling_restarts(64).await;
}

// ---------------------------------------------------------------------------
// REFUSED_STREAM: the server's word that a call did not run
// ---------------------------------------------------------------------------

/// A bare h2 server that resets every other stream it gets (the first, the
/// third, ...) with `REFUSED_STREAM`, unread, and answers the others with a
/// gRPC `SERVING`, recording their ids.
fn refusing_server() -> (SocketAddr, Arc<Seen>, JoinHandle<()>) {
    let listener = listen::reusable("127.0.0.1:0".parse().unwrap());
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::new());
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            let mut connections = JoinSet::new();
            while let Ok((io, peer)) = listener.accept().await {
                let seen = seen.clone();
                connections.spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(io).await else {
                        return;
                    };
                    let mut streams = 0_u64;
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        streams += 1;
                        if streams % 2 == 1 {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let id = request.headers()[ID].to_str().unwrap().parse().unwrap();
                        seen.record(id, peer);
                        let _ = answer_serving(&mut respond);
                    }
                });
            }
        }
    });
    (addr, seen, task)
}

/// A gRPC answer by hand: `SERVING` (field 1, varint 1) in one
/// length-prefixed message, then `grpc-status: 0`.
fn answer_serving(respond: &mut h2::server::SendResponse<bytes::Bytes>) -> Result<(), h2::Error> {
    let head = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let mut stream = respond.send_response(head, false)?;
    stream.send_data(
        bytes::Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]),
        false,
    )?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    stream.send_trailers(trailers)
}

/// A gRPC call whose HTTP/2 stream the server refuses is not sent again,
/// though `REFUSED_STREAM` says it did not run: hyper reads a streaming
/// body as soon as it opens the stream, so the request cannot come back
/// whole, and the crate cannot rebuild it (a `Full` body's `POST` is sent
/// again: see `graceful_restart.rs`). The caller gets `Unavailable`, what
/// gRPC clients retry on, and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grpc_call_fails_unavailable_and_is_not_sent_again() {
    let test = async {
        let (addr, seen, server) = refusing_server();
        let (health, transport) = grpc_client(addr);
        for id in 0..10 {
            let result = call(health.clone(), id).await;
            if id % 2 == 1 {
                assert!(result.is_ok(), "call {id}: {result:?}");
                assert_eq!(seen.times(id), 1, "call {id} ran once");
                continue;
            }
            let failure = result.expect_err("the server refused it");
            assert_eq!(seen.times(id), 0, "call {id} did not run");
            assert_eq!(failure.code, Code::Unavailable, "{failure:?}");
            assert!(
                failure.refused && failure.not_sent && !failure.go_away && !failure.given_up,
                "{failure:?}"
            );
        }
        let stats = transport.stats();
        assert_eq!(
            (stats.dials, stats.drops, stats.retries),
            (1, 0, 0),
            "one connection, nothing re-sent: {stats:?}"
        );
        server.abort();
    };
    tokio::time::timeout(GUARD, test).await.expect("test hung");
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
