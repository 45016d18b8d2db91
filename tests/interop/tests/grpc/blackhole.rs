//! HTTP/2 keep-alive pings find a blackholed gRPC server: a tonic server in
//! a network namespace of the test's own, behind a veth pair, silenced
//! mid-connection by an iptables `DROP` rule, so that it sends neither FIN
//! nor RST and acknowledges nothing.
//!
//! With keep-alive pings (1 s interval, 1 s timeout, while idle), the
//! transport finds the dead peer within interval + timeout plus a margin,
//! with no call made, drops the connection and redials; calls made
//! meanwhile wait, and succeed once the path is back. Without keep-alive
//! (the control), the idle connection looks healthy for as long as the
//! test watches it: with Linux's defaults nothing would notice for hours.
//!
//! Linux only, and root only (namespaces and iptables), as
//! `tests/line/half_open.rs`: a run without root fails with a message
//! saying so. The server's listening socket is made in the namespace by a
//! thread that enters it (`setns`), then served by the test's runtime. Each
//! test creates and removes its own namespace, named after the process id
//! and the test. The bounds are derived from the ping settings (hyper's
//! timers) plus a generous margin; the lower bound shows that the ping
//! timeout did it.
#![cfg(target_os = "linux")]

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tonic::transport::Server;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_redial::hyper::{grpc, Grpc, Http2};
use tower_redial::state::Phase;
use tower_redial::{Backoff, Jitter, ReconnectPolicy};
use tower_redial_interop::Transport;

const PORT: u16 = 50051;
const INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Slack on top of the ping timers, for scheduling and for the commands
/// that set the rule up.
const MARGIN: Duration = Duration::from_secs(6);
/// Timers may fire a little early against our clock.
const EPSILON: Duration = Duration::from_millis(100);
/// Hang guard for waits that are not timing assertions.
const GUARD: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The namespace
// ---------------------------------------------------------------------------

/// A tonic health server inside a network namespace of the test's own.
/// Dropping it stops the server, then deletes the namespace.
struct Netns {
    server: JoinHandle<()>,
    /// The server's address, inside the namespace.
    addr: SocketAddr,
    ns: support::netns::Netns,
}

/// A listening socket made inside namespace `name`: a thread enters the
/// namespace, binds, and ends; the socket stays in the namespace.
fn listen_in(name: &str, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let path = format!("/var/run/netns/{name}");
    let listener = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let namespace = std::fs::File::open(&path)?;
                move_into_link_name_space(namespace.as_fd(), Some(LinkNameSpaceType::Network))?;
                std::net::TcpListener::bind(addr)
            })
            .join()
            .expect("the thread that binds in the namespace")
    })?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

impl Netns {
    /// Sets up namespace `tag` (one letter) on `10.231.9.<base>/30`, and
    /// starts the server in it.
    fn start(tag: &str, base: u8) -> io::Result<Netns> {
        let ns = support::netns::Netns::create(
            "tests/interop/tests/grpc/blackhole.rs",
            "g",
            tag,
            9,
            base,
        )?;
        let addr = SocketAddr::from((ns.ip(), PORT));
        let listener = listen_in(ns.name(), addr)?;
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(io, _)| io);
            Some((accepted, listener))
        });
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(async move {
            Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        Ok(Netns { server, addr, ns })
    }

    /// Silences the server: everything sent to its port is dropped, with no
    /// RST and no FIN back (new SYNs too).
    fn drop_traffic(&self) {
        self.ns.drop_traffic(PORT);
    }

    /// Removes the rule again.
    fn restore_traffic(&self) {
        self.ns.restore_traffic(PORT);
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/// Each dial through the blackhole ends at the 1 s connect timeout.
fn policy() -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(
            Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_millis(500))
                .jitter(Jitter::None),
        )
        .connect_timeout(Duration::from_secs(1))
        .wait_limit(Duration::from_secs(60))
        .build()
        .expect("valid policy")
}

async fn check(transport: &Transport) -> Result<(), tonic::Status> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = HealthClient::new(transport.clone()).check(request).await?;
    assert_eq!(response.get_ref().status(), ServingStatus::Serving);
    Ok(())
}

async fn guard<F: std::future::Future>(what: &str, future: F) -> F::Output {
    timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// With keep-alive pings, an idle connection to a blackholed server is
/// found dead within interval + timeout (plus the margin), with no call
/// made: the transport leaves `Ready` and redials (dials fail while the
/// rule holds). A call made meanwhile waits, and succeeds on a new
/// connection once the rule is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pings_find_a_blackholed_grpc_server() {
    let ns = Netns::start("k", 0).expect("set up the namespace");
    let http2 = Http2::new()
        .keep_alive_interval(INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true);
    let transport: Transport = Grpc::builder(ns.origin())
        .policy(policy())
        .http2(http2)
        .build()
        .unwrap();
    guard("the first call", check(&transport)).await.unwrap();
    let before = transport.stats();

    ns.drop_traffic();
    let silenced = Instant::now();
    let mut state = transport.state();
    guard(
        "the transport notices",
        state.wait_for(|s| s.phase() != Phase::Ready),
    )
    .await
    .unwrap();
    let noticed = silenced.elapsed();
    println!("keep-alive: the dead peer was found {noticed:?} after the rule went in");
    assert!(
        noticed + EPSILON >= PING_TIMEOUT,
        "found after {noticed:?}, before a ping could time out"
    );
    assert!(
        noticed <= INTERVAL + PING_TIMEOUT + MARGIN,
        "found after {noticed:?}, past interval + timeout + {MARGIN:?}"
    );
    assert_eq!(transport.stats().drops, before.drops + 1);

    // A call waits while the redials fail against the rule.
    let waiting = tokio::spawn({
        let transport = transport.clone();
        async move { check(&transport).await }
    });
    let deadline = Instant::now() + GUARD;
    while transport.stats().dial_failures == before.dial_failures {
        assert!(Instant::now() < deadline, "no redial failed");
        sleep(Duration::from_millis(20)).await;
    }
    assert!(!waiting.is_finished(), "the call waits for a connection");

    ns.restore_traffic();
    guard("the waiting call", waiting)
        .await
        .unwrap()
        .expect("the waiting call succeeds on a new connection");
    assert_eq!(transport.state().borrow().phase(), Phase::Ready);
    let stats = transport.stats();
    println!("after the outage: {stats:?}");
    assert_eq!(stats.drops, before.drops + 1);
    assert_eq!(stats.retries, 0, "nothing needed re-sending");
}

/// The control: without keep-alive, the same blackhole goes unnoticed for
/// the whole bound: the transport stays `Ready` on the dead connection.
/// Once the rule is gone, TCP carries on, and a call succeeds on the same
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keep_alive_the_blackhole_goes_unnoticed() {
    let ns = Netns::start("c", 4).expect("set up the namespace");
    let transport: Transport = grpc(ns.origin(), policy()).unwrap();
    guard("the first call", check(&transport)).await.unwrap();

    ns.drop_traffic();
    // As long as the pinging transport may take to find it.
    sleep(INTERVAL + PING_TIMEOUT + MARGIN).await;
    assert_eq!(transport.state().borrow().phase(), Phase::Ready);
    let stats = transport.stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");

    ns.restore_traffic();
    guard("a call after the rule is gone", check(&transport))
        .await
        .unwrap();
    let stats = transport.stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");
}
