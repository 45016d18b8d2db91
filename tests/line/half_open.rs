//! Half-open connections detected by the kernel: a real peer (`redis-server`,
//! answering inline `PING`) in a network namespace of the test's own, behind
//! a veth pair, silenced mid-connection by an iptables `DROP` rule, so that
//! it sends neither FIN nor RST.
//!
//! With Linux's defaults such a connection is noticed after ≈ 15 min (data
//! in flight, `tcp_retries2`) or never / ≈ 2 h 11 min (idle). With the
//! connector's `TCP_USER_TIMEOUT` and keepalive settings it is noticed within
//! a few seconds, and the layer redials.
//!
//! Linux only, and root only (namespaces and iptables): a run without root
//! fails with a message saying so. Each test creates and removes its own
//! namespace (named after the process id and the test) and talks only to the
//! namespace's address. The bounds asserted are derived from the socket
//! settings, which are kernel timers, plus a generous margin; the lower
//! bounds show that detection came from those timers.
#![cfg(target_os = "linux")]

use std::io;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::line::LineConnection;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::{Keepalive, TcpConnector};
use tower_redial::state::{Phase, Stats};
use tower_redial::{Backoff, BoxError, Client, Jitter, ReconnectLayer, ReconnectPolicy};

type LineClient = Client<String, String>;

const PORT: u16 = 6379;
/// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
const USER_TIMEOUT: Duration = Duration::from_secs(2);
/// Keepalive: probes after 1 s idle, every 1 s, 2 of them.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 2;
/// Slack on top of the configured timers, for scheduling and for the
/// commands that set the rule up.
const MARGIN: Duration = Duration::from_secs(3);
/// The kernel's timers tick in jiffies; allow a little early firing.
const EPSILON: Duration = Duration::from_millis(100);
/// Hang guard for waits that are not timing assertions.
const GUARD: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// The namespace
// ---------------------------------------------------------------------------

/// A `redis-server` inside a network namespace of the test's own. Dropping
/// it kills the server, then deletes the namespace.
struct Netns {
    server: Child,
    /// The server's address, inside the namespace.
    addr: SocketAddr,
    ns: support::netns::Netns,
}

impl Netns {
    /// Sets up namespace `tag` (one letter) on `10.231.7.<base>/30`, and
    /// starts the server in it.
    async fn start(tag: &str, base: u8) -> io::Result<Netns> {
        let ns = support::netns::Netns::create("tests/line/half_open.rs", "r", tag, 7, base)?;
        let addr = SocketAddr::from((ns.ip(), PORT));
        let server = ns
            .command("redis-server")
            .args(["--bind", &ns.ip().to_string(), "--port", &PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let ns = Netns { server, addr, ns };

        // Wait until it listens.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Ok(_)) =
                timeout(Duration::from_millis(500), TcpStream::connect(ns.addr)).await
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("redis-server did not start listening"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ns)
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
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/// A client of the server in `ns`, with the socket settings under test. Each
/// dialed socket is also sent, as a duplicated descriptor, on the returned
/// channel, so the test can watch the kernel's view of the connection.
fn client(ns: &Netns) -> (LineClient, mpsc::UnboundedReceiver<std::net::TcpStream>) {
    let (sockets, dialed) = mpsc::unbounded_channel();
    let connector = TcpConnector::new()
        .keepalive(
            Keepalive::new(KEEPALIVE_IDLE)
                .interval(KEEPALIVE_INTERVAL)
                .retries(KEEPALIVE_RETRIES),
        )
        .user_timeout(USER_TIMEOUT);
    let handshake = move |io: TcpStream| {
        let sockets = sockets.clone();
        async move {
            let io = io.into_std()?;
            let _ = sockets.send(io.try_clone()?);
            LineConnection::handshake(TcpStream::from_std(io)?).await
        }
    };
    let policy = ReconnectPolicy::builder()
        .backoff(
            Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_millis(500))
                .jitter(Jitter::None),
        )
        .connect_timeout(Duration::from_secs(1))
        .wait_limit(Duration::from_secs(60))
        .seed(1)
        .build()
        .expect("valid policy");
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(Handshake::new(connector, handshake))
        .client(ns.addr);
    (client, dialed)
}

async fn ping(client: &LineClient) -> Result<String, BoxError> {
    client
        .clone()
        .oneshot("PING".to_owned())
        .await
        .map(|reply| reply.trim().to_owned())
}

/// Waits until the kernel has dropped the connection of `socket` (a
/// duplicate of its descriptor): `getpeername` fails with `ENOTCONN` once
/// the socket is closed, and does not disturb the socket's pending error.
async fn kernel_dropped(socket: std::net::TcpStream) -> Instant {
    loop {
        if socket.peer_addr().is_err() {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn io_kind(error: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        next = error.source();
    }
    None
}

/// The dead connection is gone from the layer: a new request is not sent on
/// it but waits while the client redials (dials fail while the rule is in
/// place), and succeeds on a new connection once the rule is removed.
/// `before` are the client's counters from before the connection died.
async fn redials_after_outage(ns: &Netns, client: &LineClient, before: Stats) {
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { ping(&client).await }
    });
    let mut state = client.state();
    timeout(GUARD, state.wait_for(|s| s.phase() != Phase::Ready))
        .await
        .expect("the client leaves Ready")
        .expect("state watch");
    let stats = client.stats();
    assert_eq!(
        stats.drops,
        before.drops + 1,
        "the dead connection was dropped"
    );
    // A redial begins, and cannot get through the rule: SYNs are dropped,
    // and each attempt ends at the 1 s connect timeout.
    let deadline = Instant::now() + GUARD;
    loop {
        let stats = client.stats();
        if stats.dials > before.dials && stats.dial_failures > before.dial_failures {
            break;
        }
        assert!(Instant::now() < deadline, "no redial failed: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!waiting.is_finished(), "the request waits for a connection");

    ns.restore_traffic();
    let reply = timeout(GUARD, waiting)
        .await
        .expect("the waiting request completes")
        .expect("task")
        .expect("the waiting request succeeds on a new connection");
    assert_eq!(reply, "+PONG");
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
    let stats = client.stats();
    assert_eq!(stats.drops, before.drops + 1);
    println!("after the outage: {stats:?}");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A silenced peer with a request in flight is detected by `TCP_USER_TIMEOUT`
/// within its bound (not Linux's ≈ 15 min): the request fails with the
/// kernel's `TimedOut`, the client drops the connection and redials, and
/// succeeds once the peer is reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_half_open_connection_is_detected_by_user_timeout() {
    let ns = Netns::start("b", 0).await.expect("set up the namespace");
    let (client, mut dialed) = client(&ns);

    assert_eq!(ping(&client).await.expect("connected"), "+PONG");
    let socket = dialed.try_recv().expect("the dialed socket");
    assert_eq!(client.state().borrow().phase(), Phase::Ready);

    let before = client.stats();
    ns.drop_traffic();
    let sent = Instant::now();
    let watch = tokio::spawn(kernel_dropped(socket));
    let error = timeout(GUARD, ping(&client))
        .await
        .expect("the request ends")
        .expect_err("the peer never answers");
    let failed = sent.elapsed();
    let detected = timeout(GUARD, watch)
        .await
        .expect("the kernel drops the connection")
        .expect("task")
        - sent;
    println!(
        "busy: kernel dropped the connection {detected:?} after the request; the request failed after {failed:?} with {error}"
    );

    assert_eq!(
        io_kind(&*error),
        Some(io::ErrorKind::TimedOut),
        "the socket's ETIMEDOUT: {error:?}"
    );
    assert_eq!(client.stats().retries, 0, "a sent request is not re-sent");
    assert!(
        detected + EPSILON >= USER_TIMEOUT,
        "detected after {detected:?}, before the user timeout: not the timer's doing"
    );
    assert!(
        detected <= USER_TIMEOUT + MARGIN,
        "detected after {detected:?}, past the user timeout {USER_TIMEOUT:?} + {MARGIN:?}"
    );
    assert!(failed <= USER_TIMEOUT + MARGIN, "failed after {failed:?}");

    redials_after_outage(&ns, &client, before).await;
}

/// A silenced peer on an idle connection is detected by keepalive probes
/// within idle + interval × retries (not never, or Linux's ≈ 2 h 11 min with
/// `SO_KEEPALIVE` alone): the next request is not sent on the dead
/// connection but waits for a redial, and succeeds once the peer is
/// reachable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_open_connection_is_detected_by_keepalive() {
    let ns = Netns::start("i", 4).await.expect("set up the namespace");
    let (client, mut dialed) = client(&ns);

    assert_eq!(ping(&client).await.expect("connected"), "+PONG");
    // The connection is idle from the reply on.
    let idle_since = Instant::now();
    let socket = dialed.try_recv().expect("the dialed socket");
    let before = client.stats();

    ns.drop_traffic();
    let detected = timeout(GUARD, kernel_dropped(socket))
        .await
        .expect("the kernel drops the idle connection")
        - idle_since;
    println!("idle: kernel dropped the connection {detected:?} after the last traffic");

    // Death needs at least one unanswered probe: sent after `idle`, judged
    // at the next probe time.
    let earliest = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL;
    let bound = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES;
    assert!(
        detected + EPSILON >= earliest,
        "detected after {detected:?}, before a probe went unanswered"
    );
    assert!(
        detected <= bound + MARGIN,
        "detected after {detected:?}, past idle + interval × retries {bound:?} + {MARGIN:?}"
    );
    // The client's own task watches the idle connection: it learns of the
    // death with no request sent, and starts redialing. No request was
    // lost, as none was in flight.
    let mut state = client.state();
    timeout(GUARD, state.wait_for(|s| s.phase() != Phase::Ready))
        .await
        .expect("the client notices the death with no request")
        .expect("state watch");
    assert_eq!(client.stats().drops, before.drops + 1);

    redials_after_outage(&ns, &client, before).await;
    assert_eq!(client.stats().retries, 0, "nothing needed re-sending");
}
