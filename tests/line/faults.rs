//! Fault injection between a `Client` and a `LineServer`: each test puts a
//! `FaultProxy` between them, applies one fault during steady traffic,
//! checks what the client sees (by error type), clears the fault and checks
//! that the client recovers. The last tests run a seeded random schedule.
//!
//! Real time and real sockets on 127.0.0.1. Nothing asserts how fast
//! anything was: waits are events (the client's state, server and proxy
//! counts) or hang guards; sleeps only pace the faults. The only time
//! assertions are lower bounds a fault imposes (latency, slow close), which a
//! slow machine can only exceed.

use support::fault_proxy;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fault_proxy::{Direction, Fault, FaultProxy};
use support::line::*;
use support::outcome::{Outcome, Tally};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::state::Phase;
use tower_redial::{
    Backoff, BoxError, Client, Jitter, ReconnectLayer, ReconnectPolicy, ReconnectPolicyBuilder,
};

type LineClient = Client<String, String>;

/// The per-request timeout inside each connection of a [`timeout_client`].
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// Hang guard for every wait.
const HANG: Duration = Duration::from_secs(20);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn guard<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG, future).await {
        Ok(output) => output,
        Err(_) => panic!("hung for {HANG:?}: {what}"),
    }
}

fn policy_builder() -> ReconnectPolicyBuilder {
    ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(20), 2.0, ms(200)).jitter(Jitter::None))
        .wait_limit(Duration::from_secs(2))
        .connect_timeout(ms(500))
        .seed(1)
}

/// A client of the line server behind `addr`.
fn client_for(addr: SocketAddr) -> LineClient {
    let make = Handshake::new(TcpConnector::new(), LineConnection::handshake);
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy_builder().build().unwrap()))
        .service(make)
        .client(addr)
}

/// A client of `addr` whose requests time out after [`REQUEST_TIMEOUT`].
fn timeout_client(addr: SocketAddr) -> LineClient {
    support::outcome::timeout_client(addr, policy_builder(), REQUEST_TIMEOUT)
}

async fn send(client: &LineClient, line: impl Into<String>) -> Result<String, BoxError> {
    client.clone().oneshot(line.into()).await
}

fn spawn_send(
    client: &LineClient,
    line: impl Into<String>,
) -> JoinHandle<Result<String, BoxError>> {
    tokio::spawn(client.clone().oneshot(line.into()))
}

// ---------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------

/// Callers sending `INCR <key>` in a loop until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

impl Traffic {
    fn start(client: &LineClient, key: &str, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (client, stop) = (client.clone(), stop.clone());
                let line = format!("INCR {key}");
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::SeqCst) {
                        let result = send(&client, line.as_str()).await;
                        if tally.record(&result) != Outcome::Ok {
                            // Paced, so that failing requests do not spin.
                            tokio::time::sleep(ms(5)).await;
                        }
                    }
                    tally
                })
            })
            .collect();
        Self { stop, workers }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for worker in self.workers {
            tally.add(&guard("a traffic worker", worker).await.expect("worker"));
        }
        tally
    }
}

/// Sends `PING` until one succeeds; every failure on the way must be one the
/// fault explains. Returns the failures seen.
async fn recover(client: &LineClient) -> Tally {
    guard("the client to recover", async {
        let mut tally = Tally::default();
        loop {
            let result = send(client, "PING").await;
            match tally.record(&result) {
                Outcome::Ok => {
                    assert_eq!(result.unwrap(), "PONG");
                    break;
                }
                Outcome::Closed | Outcome::Unexpected => panic!("{result:?}"),
                _ => tokio::time::sleep(ms(10)).await,
            }
        }
        tally
    })
    .await
}

/// The server ran every acknowledged INCR, and at most those plus the ones
/// whose outcome was ambiguous: nothing acknowledged was lost, nothing ran
/// twice, nothing unsent ran.
fn assert_books(server: &LineServer, key: &str, tally: &Tally) {
    let count = server.counter(key) as u64;
    assert!(
        count >= tally.ok,
        "acknowledged INCR lost: {count} < {tally:?}"
    );
    assert!(
        count <= tally.ok + tally.maybe_ran(),
        "an INCR ran twice or unsent: {count} > {tally:?}"
    );
}

async fn setup(timeouts: bool) -> (LineServer, FaultProxy, LineClient) {
    let server = LineServer::start().await;
    let proxy = FaultProxy::start_seeded(server.addr(), 42).await;
    let client = if timeouts {
        timeout_client(proxy.addr())
    } else {
        client_for(proxy.addr())
    };
    assert_eq!(send(&client, "PING").await.unwrap(), "PONG");
    (server, proxy, client)
}

/// Waits until the server has run `more` further commands.
async fn more_commands(server: &LineServer, more: u64) {
    let target = server.commands() + more;
    guard("traffic to flow", server.wait_for_commands(target)).await;
}

// ---------------------------------------------------------------------------
// One test per fault
// ---------------------------------------------------------------------------

/// Down: the open connection is closed and dials are refused (counted as dial
/// failures); requests issued meanwhile wait in the queue, and all succeed
/// once the proxy listens again. The INCR books reconcile.
#[tokio::test]
async fn down_refuses_dials_then_queued_requests_succeed() {
    let (server, proxy, client) = setup(false).await;
    let traffic = Traffic::start(&client, "down", 2);
    more_commands(&server, 50).await;

    proxy.set_fault(Fault::Down);
    guard("the listener to close", proxy.wait_listening(false)).await;
    let mut state = client.state();
    guard("refused dials", state.wait_for(|s| s.attempt() >= 3))
        .await
        .expect("the client is alive");
    let queued: Vec<_> = (0..4).map(|_| spawn_send(&client, "INCR down")).collect();
    tokio::time::sleep(ms(200)).await;
    assert!(queued.iter().all(|r| !r.is_finished()), "requests wait");
    let stats = client.stats();
    assert!(stats.dial_failures >= 2, "{stats:?}");
    assert!(proxy.stats().down_closes >= 1, "{:?}", proxy.stats());
    let accepted = proxy.stats().accepted;
    assert_eq!(accepted, 1, "no dial got through: {:?}", proxy.stats());

    proxy.clear();
    let mut tally = Tally::default();
    for request in queued {
        let result = guard("a queued request", request).await.expect("task");
        assert_eq!(tally.record(&result), Outcome::Ok, "{result:?}");
    }
    tally.add(&traffic.finish().await);
    tally.assert_sane();
    assert_eq!(tally.unavailable + tally.timed_out, 0, "{tally:?}");
    assert!(tally.ambiguous <= 2, "only in-flight requests: {tally:?}");
    assert_books(&server, "down", &tally);
    recover(&client).await.assert_sane();
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
}

/// ResetPeer: an in-flight INCR (the server ran it, its reply held) fails
/// with a reset, EOF or broken pipe (whichever the socket reported first,
/// with pipelined requests behind it), an ambiguous transport error that is not re-sent;
/// after clearing, the client redials and requests succeed, and the INCR ran
/// exactly once.
#[tokio::test]
async fn reset_peer_fails_in_flight_ambiguously_then_recovers() {
    let (server, proxy, client) = setup(false).await;
    let traffic = Traffic::start(&client, "steady", 2);
    more_commands(&server, 50).await;
    let before = traffic.finish().await;
    before.assert_sane();

    server.set_hold_replies(true);
    let incr = spawn_send(&client, "INCR once");
    guard(
        "the INCR to run",
        server.wait_for_incr_executions(before.ok + 1),
    )
    .await;
    let traffic = Traffic::start(&client, "steady", 2);
    proxy.set_fault(Fault::ResetPeer);

    let result = guard("the INCR to fail", incr).await.expect("task");
    assert_eq!(Outcome::of(&result), Outcome::Ambiguous, "{result:?}");
    let kind = io_kind(&*result.unwrap_err());
    assert!(
        matches!(
            kind,
            Some(
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
            )
        ),
        "{kind:?}"
    );
    assert!(proxy.stats().resets >= 1, "{:?}", proxy.stats());
    tokio::time::sleep(ms(100)).await;

    proxy.clear();
    server.set_hold_replies(false);
    recover(&client).await.assert_sane();
    let during = traffic.finish().await;
    during.assert_sane();
    assert_eq!(send(&client, "GET once").await.unwrap(), "VALUE 1");
    let mut all = before;
    all.add(&during);
    assert_books(&server, "steady", &all);
    let stats = client.stats();
    assert!(stats.drops >= 1 && stats.dials >= 2, "{stats:?}");
}

/// Blackhole: no kernel error ever arrives, so requests time out (inside the
/// connection); the classifier counts a timeout as a dead connection, so the
/// client drops it and redials. Nothing reaches the server while the fault
/// holds. After clearing, requests succeed again on a new connection.
#[tokio::test]
async fn blackhole_times_out_marks_dead_then_recovers() {
    let (server, proxy, client) = setup(true).await;
    let traffic = Traffic::start(&client, "bh", 2);
    more_commands(&server, 50).await;

    proxy.set_fault(Fault::Blackhole);
    let mut state = client.state();
    guard(
        "a timed-out connection to be dropped",
        state.wait_for(|s| s.phase() != Phase::Ready),
    )
    .await
    .expect("the client is alive");
    // Let the client go through a few blackholed connections.
    let dials = client.stats().dials;
    guard("another dial", async {
        while client.stats().dials < dials + 1 {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    let commands = server.commands();
    tokio::time::sleep(ms(400)).await;
    assert_eq!(server.commands(), commands, "nothing gets through");

    proxy.clear();
    recover(&client).await.assert_sane();
    let tally = traffic.finish().await;
    tally.assert_sane();
    assert!(tally.timed_out >= 1, "{tally:?}");
    assert_eq!(tally.ambiguous + tally.unavailable, 0, "{tally:?}");
    let stats = client.stats();
    assert!(stats.drops >= 1, "{stats:?}");
    assert!(stats.dials >= 2, "{stats:?}");
    assert_books(&server, "bh", &tally);
}

/// Latency (30 ms + up to 20 ms jitter each way): every request still
/// succeeds on the same connection (no drop, no redial), and each round trip
/// takes at least the added delay both ways.
#[tokio::test]
async fn latency_slows_but_never_fails() {
    let (server, proxy, client) = setup(false).await;
    let traffic = Traffic::start(&client, "lat", 2);
    more_commands(&server, 20).await;

    proxy.set_fault(Fault::Latency {
        direction: Direction::Both,
        delay: ms(30),
        jitter: ms(20),
    });
    // Let the change reach requests already in flight.
    tokio::time::sleep(ms(100)).await;
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(send(&client, "PING").await.unwrap(), "PONG");
        assert!(start.elapsed() >= ms(60), "{:?}", start.elapsed());
    }
    proxy.clear();
    more_commands(&server, 20).await;

    let tally = traffic.finish().await;
    tally.assert_sane();
    assert_eq!(tally.ok, tally.issued, "{tally:?}");
    assert_eq!(server.counter("lat") as u64, tally.ok);
    let stats = client.stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");
    assert_eq!(proxy.stats().accepted, 1);
}

/// LimitData (64 bytes upstream): each connection is closed after carrying
/// 64 bytes of requests; the client keeps going on new connections, with
/// only transport errors for the requests caught at the cut. After
/// clearing, everything succeeds. The books reconcile.
#[tokio::test]
async fn limit_data_closes_connections_and_requests_continue() {
    let (server, proxy, client) = setup(false).await;
    let traffic = Traffic::start(&client, "lim", 1);
    more_commands(&server, 20).await;

    proxy.set_fault(Fault::LimitData {
        direction: Direction::Upstream,
        bytes: 64,
    });
    guard("three connections cut", async {
        while proxy.stats().limit_closes < 3 {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    let ok_during = server.counter("lim");
    proxy.clear();
    recover(&client).await.assert_sane();
    more_commands(&server, 20).await;

    let tally = traffic.finish().await;
    tally.assert_sane();
    assert_eq!(tally.unavailable + tally.timed_out, 0, "{tally:?}");
    assert!(ok_during > 0);
    let stats = client.stats();
    assert!(stats.drops >= 3, "{stats:?}");
    assert!(proxy.stats().accepted >= 4, "{:?}", proxy.stats());
    assert_books(&server, "lim", &tally);
}

/// SlowClose (300 ms): when the server restarts, its close reaches the
/// client only after the delay (a lower bound); the in-flight request then
/// fails with a transport error, and the client redials and succeeds.
#[tokio::test]
async fn slow_close_delays_the_close_then_recovers() {
    let (server, proxy, client) = setup(false).await;
    proxy.set_fault(Fault::SlowClose { delay: ms(300) });
    assert_eq!(send(&client, "PING").await.unwrap(), "PONG");

    server.set_hold_replies(true);
    let incr = spawn_send(&client, "INCR slow");
    guard("the INCR to run", server.wait_for_incr_executions(1)).await;
    let start = Instant::now();
    guard("restart", server.restart()).await;
    let result = guard("the INCR to fail", incr).await.expect("task");
    let waited = start.elapsed();
    assert_eq!(Outcome::of(&result), Outcome::Ambiguous, "{result:?}");
    assert!(waited >= ms(300), "the close came early: {waited:?}");
    assert!(proxy.stats().slow_closes >= 1, "{:?}", proxy.stats());

    server.set_hold_replies(false);
    proxy.clear();
    recover(&client).await.assert_sane();
    assert_eq!(send(&client, "GET slow").await.unwrap(), "VALUE 1");
    assert!(client.stats().drops >= 1);
}

/// HalfOpen with the server-to-client direction stopped: requests still
/// reach the server and run, but no reply comes back, so the client sees
/// only timeouts, drops the connection and redials. After clearing, it
/// recovers. The books reconcile (timed-out INCRs count as maybe run).
#[tokio::test]
async fn half_open_downstream_times_out_then_recovers() {
    let (server, proxy, client) = setup(true).await;
    let traffic = Traffic::start(&client, "half", 2);
    more_commands(&server, 50).await;

    proxy.set_fault(Fault::HalfOpen {
        stopped: Direction::Downstream,
    });
    let mut state = client.state();
    guard(
        "a timed-out connection to be dropped",
        state.wait_for(|s| s.phase() != Phase::Ready),
    )
    .await
    .expect("the client is alive");
    // Requests still reach the server: only replies are lost.
    more_commands(&server, 2).await;

    proxy.clear();
    recover(&client).await.assert_sane();
    let tally = traffic.finish().await;
    tally.assert_sane();
    assert!(tally.timed_out >= 1, "{tally:?}");
    assert_eq!(tally.unavailable, 0, "{tally:?}");
    assert!(client.stats().drops >= 1, "{:?}", client.stats());
    assert_books(&server, "half", &tally);
}

// ---------------------------------------------------------------------------
// A seeded random schedule
// ---------------------------------------------------------------------------

/// The schedule is a pure function of the seed: the same seed gives the same
/// schedule, another seed a different one.
#[test]
fn same_seed_same_schedule() {
    let a = FaultProxy::schedule(7, Duration::from_secs(3));
    assert_eq!(a, FaultProxy::schedule(7, Duration::from_secs(3)));
    assert_ne!(a, FaultProxy::schedule(8, Duration::from_secs(3)));
    assert!(!a.is_empty());
    assert!(a.windows(2).all(|w| w[0].at + w[0].hold <= w[1].at));
}

/// Three seconds of random faults under four callers of INCR: every
/// request ends in exactly one expected outcome, the server's count lies
/// between the acknowledged INCRs and those plus the ambiguous ones, the
/// schedule applied is the seed's, and the client recovers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_schedule_books_reconcile() {
    // Seed 9 covers six of the seven kinds, blackhole and half-open included.
    const SEED: u64 = 9;
    let (server, proxy, client) = setup(true).await;
    let traffic = Traffic::start(&client, "sched", 4);

    let schedule = guard(
        "the schedule",
        proxy.run_schedule(SEED, Duration::from_secs(3)),
    )
    .await;
    println!("seed {SEED}: {schedule:#?}");
    assert_eq!(schedule, FaultProxy::schedule(SEED, Duration::from_secs(3)));
    assert_eq!(proxy.fault(), None);

    recover(&client).await.assert_sane();
    more_commands(&server, 20).await;
    let tally = traffic.finish().await;
    println!(
        "tally {tally:?}; client {:?}; proxy {:?}",
        client.stats(),
        proxy.stats()
    );
    tally.assert_sane();
    assert!(tally.ok > 0, "{tally:?}");
    assert_books(&server, "sched", &tally);
}
