//! The idle probe ([`IdleProbe`]): a silent dead connection is found by a
//! probe sent after an idle period, and dropped before the next request.
//!
//! The first tests run on a paused clock with a `service_fn` connection, to
//! pin down when the probe is sent and when the connection is marked dead.
//! The last two run on real sockets through a [`FaultProxy`] blackhole,
//! where no kernel error ever arrives. They assert no speed: waits are
//! events with hang guards, and the only time assertions are lower bounds
//! that a slow machine can only exceed.

use support::fault_proxy;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fault_proxy::{Fault, FaultProxy};
use support::line::*;
use tokio::time::Instant;
use tower::buffer::Buffer;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::probe::IdleProbe;
use tower_redial::probe::ProbeFailed;
use tower_redial::{Backoff, BoxError, Client, Jitter, ReconnectLayer, ReconnectPolicy};

const IDLE: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(300);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a toy connection answers the probe.
#[derive(Clone, Copy)]
enum Answer {
    Pong,
    Never,
    Error,
}

/// A toy connection: records when each `PING` arrives and answers it as
/// told; `HANG` is never answered, `SLOW` is answered after 350 ms, and
/// every other request is echoed at once.
fn toy_connection(
    answer: Answer,
    probes: Arc<Mutex<Vec<Instant>>>,
) -> impl Service<&'static str, Response = &'static str, Error = BoxError, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |request: &'static str| {
        let probes = probes.clone();
        async move {
            match request {
                "PING" => {}
                "HANG" => std::future::pending().await,
                "SLOW" => {
                    tokio::time::sleep(ms(350)).await;
                    return Ok(request);
                }
                _ => return Ok(request),
            }
            lock(&probes).push(Instant::now());
            match answer {
                Answer::Pong => Ok("PONG"),
                Answer::Error => Err("connection reset".into()),
                Answer::Never => std::future::pending().await,
            }
        }
    })
}

/// The probe is sent exactly `idle` after the connection was made, and a
/// probe that never answers marks the connection dead exactly `timeout`
/// later (to the millisecond, on a paused clock); from then on `poll_ready`
/// fails with a timeout `ProbeFailed`, and the probe task has ended.
#[tokio::test(start_paused = true)]
async fn unanswered_probe_marks_dead_at_idle_plus_timeout() {
    let t0 = Instant::now();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let mut conn = IdleProbe::new(
        toy_connection(Answer::Never, probes.clone()),
        "PING",
        IDLE,
        TIMEOUT,
    );

    tokio::time::sleep_until(t0 + IDLE + TIMEOUT - ms(1)).await;
    assert_eq!(*lock(&probes), vec![t0 + IDLE], "one probe, sent at idle");
    assert!(!conn.is_dead());
    conn.ready().await.expect("alive until the timeout");

    tokio::time::sleep_until(t0 + IDLE + TIMEOUT + ms(1)).await;
    assert!(conn.is_dead());
    let error = conn
        .ready()
        .await
        .map(drop)
        .expect_err("dead after the timeout");
    let failed = error.downcast_ref::<ProbeFailed>().expect("a ProbeFailed");
    assert!(failed.is_timeout());
    assert_eq!(lock(&probes).len(), 1, "no probe after the connection died");
    // The test, and the wrapper's connection: the task's clone is gone.
    assert_eq!(Arc::strong_count(&probes), 2);
}

/// A response through the wrapper postpones the probe; a probe that is
/// answered starts the idle period over.
#[tokio::test(start_paused = true)]
async fn a_response_postpones_the_probe() {
    let t0 = Instant::now();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let mut conn = IdleProbe::new(
        toy_connection(Answer::Pong, probes.clone()),
        "PING",
        IDLE,
        TIMEOUT,
    );

    tokio::time::sleep_until(t0 + ms(150)).await;
    assert_eq!(
        conn.ready().await.unwrap().call("GET a").await.unwrap(),
        "GET a"
    );

    tokio::time::sleep_until(t0 + ms(600)).await;
    assert_eq!(
        *lock(&probes),
        vec![t0 + ms(150) + IDLE, t0 + ms(150) + 2 * IDLE],
        "first probe idle after the call, the next idle after the first"
    );
    assert!(!conn.is_dead());
    conn.ready().await.expect("answered probes keep it alive");
}

/// A probe that fails with an error marks the connection dead at once, with
/// that error as the `source()`.
#[tokio::test(start_paused = true)]
async fn failed_probe_marks_dead_with_its_error() {
    let t0 = Instant::now();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let mut conn = IdleProbe::new(
        toy_connection(Answer::Error, probes.clone()),
        "PING",
        IDLE,
        TIMEOUT,
    );

    tokio::time::sleep_until(t0 + IDLE + ms(1)).await;
    assert!(conn.is_dead());
    let error = conn.ready().await.map(drop).expect_err("dead");
    let failed = error.downcast_ref::<ProbeFailed>().expect("a ProbeFailed");
    assert!(!failed.is_timeout());
    assert_eq!(failed.to_string(), "idle probe failed");
    let source = std::error::Error::source(failed).expect("the probe's error");
    assert_eq!(source.to_string(), "connection reset");
}

/// Dropping the wrapper (and its clones) ends the probe task: no more
/// probes, and the task's clone of the connection is released.
#[tokio::test(start_paused = true)]
async fn dropping_the_wrapper_ends_the_probe_task() {
    let t0 = Instant::now();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let conn = IdleProbe::new(
        toy_connection(Answer::Pong, probes.clone()),
        "PING",
        IDLE,
        TIMEOUT,
    );
    let clone = conn.clone();

    tokio::time::sleep_until(t0 + IDLE + ms(1)).await;
    assert_eq!(lock(&probes).len(), 1);
    drop(conn);
    tokio::time::sleep_until(t0 + 3 * IDLE + ms(1)).await;
    assert_eq!(lock(&probes).len(), 3, "a clone keeps the probe running");

    drop(clone);
    tokio::time::sleep(10 * IDLE).await;
    assert_eq!(lock(&probes).len(), 3, "no probe after the last drop");
    assert_eq!(Arc::strong_count(&probes), 1, "the task's clone is gone");
}

// ---------------------------------------------------------------------------
// Real sockets, blackhole fault
// ---------------------------------------------------------------------------

type LineFuture = <LineConnection as Service<String>>::Future;
/// A connection as the probed client makes it.
type ProbedLine = IdleProbe<Buffer<String, LineFuture>>;
type LineClient = Client<String, String>;

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(20), 2.0, ms(200)).jitter(Jitter::None))
        .wait_limit(Duration::from_secs(2))
        .connect_timeout(ms(500))
        .seed(1)
        .build()
        .unwrap()
}

/// A client of the line server behind `addr` whose connections are probed
/// with `PING`; each connection made is also kept in `made`, so the test can
/// see its verdict.
fn probed_client(addr: SocketAddr, made: Arc<Mutex<Vec<ProbedLine>>>) -> LineClient {
    let make = Handshake::new(TcpConnector::new(), move |io| {
        let made = made.clone();
        async move {
            // `Buffer` makes the pipelined connection `Clone`, as the probe needs.
            let connection = Buffer::new(LineConnection::handshake(io).await?, 64);
            let probed = IdleProbe::new(connection, "PING".to_string(), IDLE, TIMEOUT);
            lock(&made).push(probed.clone());
            Ok::<_, BoxError>(probed)
        }
    });
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(make)
        .client(addr)
}

fn plain_client(addr: SocketAddr) -> LineClient {
    let make = Handshake::new(TcpConnector::new(), LineConnection::handshake);
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(make)
        .client(addr)
}

async fn send(client: &LineClient, line: &str) -> Result<String, BoxError> {
    client.clone().oneshot(line.to_string()).await
}

/// Blackhole, where no kernel error ever arrives: with no traffic at all,
/// the idle probe goes unanswered and marks the connection dead (no sooner
/// than idle + timeout after the last request), and the client drops it
/// and redials with no request sent. The next request is not sent on it.
#[tokio::test]
async fn blackhole_is_found_by_the_idle_probe() {
    let server = LineServer::start().await;
    let proxy = FaultProxy::start(server.addr()).await;
    let made = Arc::new(Mutex::new(Vec::new()));
    let client = probed_client(proxy.addr(), made.clone());

    let sent_at = Instant::now();
    let reply = deadline("first request", send(&client, "PING")).await;
    assert_eq!(reply.unwrap(), "PONG");
    proxy.set_fault(Fault::Blackhole);

    let mut first = lock(&made)[0].clone();
    deadline("the probe marks the connection dead", async {
        while !first.is_dead() {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    assert!(
        sent_at.elapsed() >= IDLE + TIMEOUT,
        "dead only after idle + timeout"
    );
    let error = first.ready().await.map(drop).expect_err("dead");
    let failed = error.downcast_ref::<ProbeFailed>().expect("a ProbeFailed");
    assert!(failed.is_timeout());
    // The client's task is woken by the failed probe: it drops the dead
    // connection and redials with no request sent.
    deadline("the client drops the dead connection", async {
        while client.stats().drops == 0 || client.stats().dials < 2 {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;

    proxy.clear();
    let reply = deadline("request after the probe failed", send(&client, "PING")).await;
    assert_eq!(reply.unwrap(), "PONG");
    let stats = client.stats();
    assert!(
        stats.drops >= 1,
        "the dead connection was dropped: {stats:?}"
    );
    assert_eq!(stats.retries, 0, "the request was not sent on the dead one");
}

/// The contrast: without the probe, the same idle blackhole goes unnoticed,
/// and the next request is sent on the dead connection, where it hangs (at
/// least 1 s here; nothing but a request timeout would end it).
#[tokio::test]
async fn blackhole_without_probe_swallows_the_next_request() {
    let server = LineServer::start().await;
    let proxy = FaultProxy::start(server.addr()).await;
    let client = plain_client(proxy.addr());

    let reply = deadline("first request", send(&client, "PING")).await;
    assert_eq!(reply.unwrap(), "PONG");
    proxy.set_fault(Fault::Blackhole);
    // As long as the probed client needs to find the blackhole.
    tokio::time::sleep(IDLE + TIMEOUT + ms(100)).await;

    let hung = tokio::time::timeout(Duration::from_secs(1), send(&client, "PING")).await;
    assert!(hung.is_err(), "the request is lost in the blackhole");
    let stats = client.stats();
    assert_eq!(stats.drops, 0, "the dead connection was kept");
    assert_eq!(stats.dials, 1);
}

/// A request sent is no sign of life: one that gets no answer does not
/// postpone the probe, so a connection swallowing requests is probed even
/// under traffic.
#[tokio::test(start_paused = true)]
async fn unanswered_requests_do_not_postpone_the_probe() {
    let t0 = Instant::now();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let mut conn = IdleProbe::new(
        toy_connection(Answer::Never, probes.clone()),
        "PING",
        IDLE,
        TIMEOUT,
    );

    let mut hung = Vec::new();
    for at in [50, 100, 150, 250, 400] {
        tokio::time::sleep_until(t0 + ms(at)).await;
        hung.push(tokio::spawn(conn.ready().await.unwrap().call("HANG")));
    }
    tokio::time::sleep_until(t0 + IDLE + TIMEOUT + ms(1)).await;
    assert_eq!(*lock(&probes), vec![t0 + IDLE]);
    assert!(conn.is_dead(), "dead at idle + timeout despite the traffic");
    assert!(hung.iter().all(|task| !task.is_finished()));
}

/// While the probe waits, any other response proves the connection alive
/// and moves its deadline on: the probe times out only after `timeout` of
/// silence (here, behind a slow request on a pipelined connection).
#[tokio::test(start_paused = true)]
async fn a_response_during_the_probe_moves_its_deadline() {
    let t0 = Instant::now();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let mut conn = IdleProbe::new(
        toy_connection(Answer::Never, probes.clone()),
        "PING",
        IDLE,
        TIMEOUT,
    );

    // Sent at 0, answered at 350 ms: after the probe went out at 200 ms.
    let slow = tokio::spawn(conn.ready().await.unwrap().call("SLOW"));
    tokio::time::sleep_until(t0 + ms(351)).await;
    assert_eq!(*lock(&probes), vec![t0 + IDLE]);
    assert_eq!(slow.await.unwrap().unwrap(), "SLOW");

    tokio::time::sleep_until(t0 + ms(350) + TIMEOUT - ms(1)).await;
    assert!(!conn.is_dead(), "the slow response moved the deadline");
    tokio::time::sleep_until(t0 + ms(350) + TIMEOUT + ms(1)).await;
    assert!(conn.is_dead(), "timeout of silence after the last response");
}
