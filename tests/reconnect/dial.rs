//! `Dial`, the connector form, driven with scripted connectors and paused
//! time, so every delay is asserted exactly; and `TcpConnector`'s socket
//! options, read back from real sockets.

use std::collections::{HashMap, VecDeque};
use std::error::Error as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_redial::connect::{Keepalive, TcpConnector};
use tower_redial::dial::{Dial, DialLayer};
use tower_redial::error::{ConnectTimeout, DialError};
use tower_redial::{Backoff, BoxError, ReconnectPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// How long a paused-time test waits on a dial before it fails: far past
/// every delay the tests expect.
const DEADLINE: Duration = Duration::from_secs(60);

/// How long a test over real sockets waits on a dial before it fails, in
/// real time: far past a dial on loopback.
const REAL_DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `future`, or panics saying `what` did not happen within `limit`:
/// a test that waits on a dial fails instead of hanging.
async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Exponential 100 ms × 2 capped at 1 s, no jitter, so delays are exact.
fn exact() -> Backoff {
    Backoff::exponential(ms(100), 2.0, ms(1000))
}

/// A policy with a 2 s connect timeout and a wait limit of an hour, so that
/// only the limits a test sets matter.
fn policy(backoff: Backoff) -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(backoff)
        .connect_timeout(secs(2))
        .wait_limit(secs(3600))
        .build()
        .unwrap()
}

/// What one attempt does.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Fails with `ConnectionRefused`, saying which attempt it was.
    Refuse,
    /// Never completes.
    Hang,
    /// Connects.
    Connect,
}

/// The connection a scripted attempt hands out: which attempt made it.
#[derive(Debug, PartialEq)]
struct Conn(usize);

#[derive(Default)]
struct Inner {
    /// Per target; an empty script refuses.
    scripts: HashMap<&'static str, VecDeque<Step>>,
    dials: Vec<(Instant, &'static str)>,
    readied: usize,
    /// `poll_ready` fails once it has been ready this many times.
    fail_ready_after: Option<usize>,
}

/// A scripted connector. Clones share the script and the log, but not
/// readiness: like a real tower service, a clone must be polled ready
/// before it is called, or `call` panics.
#[derive(Default)]
struct Scripted {
    inner: Arc<Mutex<Inner>>,
    dropped_hangs: Arc<AtomicUsize>,
    ready: bool,
}

impl Clone for Scripted {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            dropped_hangs: self.dropped_hangs.clone(),
            ready: false,
        }
    }
}

impl Scripted {
    fn new(script: impl IntoIterator<Item = Step>) -> Self {
        let s = Self::default();
        s.script("db", script);
        s
    }

    fn script(&self, target: &'static str, steps: impl IntoIterator<Item = Step>) {
        let mut inner = self.inner.lock().unwrap();
        inner.scripts.entry(target).or_default().extend(steps);
    }

    fn dials(&self) -> usize {
        self.inner.lock().unwrap().dials.len()
    }

    /// When each dial to `target` started, in milliseconds after `start`.
    fn offsets(&self, target: &str, start: Instant) -> Vec<u128> {
        let inner = self.inner.lock().unwrap();
        inner
            .dials
            .iter()
            .filter(|(_, t)| *t == target)
            .map(|(at, _)| (*at - start).as_millis())
            .collect()
    }

    fn dropped_hangs(&self) -> usize {
        self.dropped_hangs.load(Ordering::SeqCst)
    }
}

/// Counts the hanging attempts that were dropped (cancelled).
struct DropGuard(Arc<AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

impl Service<&'static str> for Scripted {
    type Response = Conn;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.inner.lock().unwrap();
        if inner.fail_ready_after.is_some_and(|n| inner.readied >= n) {
            return Poll::Ready(Err(io::Error::other("connector closed")));
        }
        inner.readied += 1;
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: &'static str) -> Connecting {
        assert!(std::mem::take(&mut self.ready), "called without poll_ready");
        let mut inner = self.inner.lock().unwrap();
        inner.dials.push((Instant::now(), target));
        let attempt = inner.dials.iter().filter(|(_, t)| *t == target).count();
        let step = inner
            .scripts
            .get_mut(target)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Step::Refuse);
        match step {
            Step::Refuse => Box::pin(async move {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("refused attempt {attempt}"),
                ))
            }),
            Step::Hang => {
                let guard = DropGuard(self.dropped_hangs.clone());
                Box::pin(async move {
                    let _guard = guard;
                    std::future::pending().await
                })
            }
            Step::Connect => Box::pin(async move { Ok(Conn(attempt)) }),
        }
    }
}

fn dial(connector: &Scripted, policy: ReconnectPolicy) -> Dial<Scripted> {
    DialLayer::new(policy).layer(connector.clone())
}

fn dial_error(error: &BoxError) -> &DialError {
    error
        .downcast_ref::<DialError>()
        .unwrap_or_else(|| panic!("not a DialError: {error:?}"))
}

/// Failed attempts are retried exactly on the backoff schedule, from a
/// first attempt made at once, until one connects.
#[tokio::test(start_paused = true)]
async fn dials_follow_the_backoff_schedule() {
    use Step::*;
    let connector = Scripted::new([Refuse, Refuse, Refuse, Refuse, Connect]);
    let start = Instant::now();

    let dialing = dial(&connector, policy(exact())).oneshot("db");
    let conn = within(DEADLINE, "the dial", dialing).await.unwrap();

    assert_eq!(conn, Conn(5));
    assert_eq!(connector.offsets("db", start), [0, 100, 300, 700, 1500]);
    assert_eq!(start.elapsed(), ms(1500));
}

/// An attempt that hangs is cut off at the connect timeout and dropped; the
/// next attempt follows one backoff delay later.
#[tokio::test(start_paused = true)]
async fn a_hanging_attempt_times_out_and_is_retried() {
    let connector = Scripted::new([Step::Hang, Step::Connect]);
    let start = Instant::now();

    let dialing = dial(&connector, policy(exact())).oneshot("db");
    let conn = within(DEADLINE, "the dial", dialing).await.unwrap();

    assert_eq!(conn, Conn(2));
    assert_eq!(connector.offsets("db", start), [0, 2100]);
    assert_eq!(connector.dropped_hangs(), 1, "the hung attempt was dropped");
}

/// The attempt limit ends the dial with a `DialError` that counts the
/// attempts and whose source is the last attempt's own error.
#[tokio::test(start_paused = true)]
async fn attempt_limit_gives_a_typed_error_with_the_last_error() {
    let connector = Scripted::new([]);
    let start = Instant::now();

    let dialing = dial(&connector, policy(exact().max_attempts(3))).oneshot("db");
    let error = within(DEADLINE, "the dial", dialing).await.unwrap_err();

    let gave_up = dial_error(&error);
    assert_eq!(gave_up.attempts(), 3);
    assert_eq!(gave_up.elapsed(), ms(300));
    assert_eq!(
        gave_up.to_string(),
        "dial gave up after 3 attempts in 300ms"
    );
    let last = gave_up
        .source()
        .unwrap()
        .downcast_ref::<io::Error>()
        .unwrap();
    assert_eq!(last.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(last.to_string(), "refused attempt 3");
    assert_eq!(connector.offsets("db", start), [0, 100, 300]);

    tokio::time::advance(secs(60)).await;
    assert_eq!(connector.dials(), 3, "no dial after giving up");
}

/// When the last attempt timed out, the `DialError`'s source is a
/// `ConnectTimeout` naming the timeout.
#[tokio::test(start_paused = true)]
async fn a_timed_out_last_attempt_is_the_source() {
    let connector = Scripted::new([Step::Hang, Step::Hang]);
    let start = Instant::now();

    let dialing = dial(&connector, policy(exact().max_attempts(2))).oneshot("db");
    let error = within(DEADLINE, "the dial", dialing).await.unwrap_err();

    let gave_up = dial_error(&error);
    assert_eq!(gave_up.attempts(), 2);
    assert_eq!(start.elapsed(), ms(4100), "2 s + 100 ms + 2 s");
    let timeout = gave_up.source().unwrap().downcast_ref::<ConnectTimeout>();
    assert_eq!(timeout.unwrap().after(), secs(2));
    assert_eq!(connector.dropped_hangs(), 2);
}

/// The time limit ends the dial at the first attempt that fails at or past
/// it, counted from the call.
#[tokio::test(start_paused = true)]
async fn elapsed_limit_gives_up_at_the_first_failure_past_it() {
    let connector = Scripted::new([]);
    let start = Instant::now();

    let dialing = dial(&connector, policy(exact().max_elapsed(secs(1)))).oneshot("db");
    let error = within(DEADLINE, "the dial", dialing).await.unwrap_err();

    let gave_up = dial_error(&error);
    assert_eq!(connector.offsets("db", start), [0, 100, 300, 700, 1500]);
    assert_eq!(gave_up.attempts(), 5);
    assert_eq!(gave_up.elapsed(), ms(1500));
    assert_eq!(gave_up.to_string(), "dial gave up after 5 attempts in 1.5s");
}

/// With no attempt or time limit, the wait limit bounds the whole dial: it
/// gives up as soon as the next attempt could not start before it.
#[tokio::test(start_paused = true)]
async fn without_limits_the_wait_limit_bounds_the_dial() {
    let connector = Scripted::new([]);
    let policy = ReconnectPolicy::builder()
        .backoff(exact())
        .wait_limit(secs(1))
        .build()
        .unwrap();
    let start = Instant::now();

    let dialing = dial(&connector, policy).oneshot("db");
    let error = within(DEADLINE, "the dial", dialing).await.unwrap_err();

    // Attempts at 0, 100, 300 and 700 ms; the next would be at 1500 ms.
    assert_eq!(connector.offsets("db", start), [0, 100, 300, 700]);
    let gave_up = dial_error(&error);
    assert_eq!(gave_up.attempts(), 4);
    assert_eq!(gave_up.elapsed(), ms(700));
    assert_eq!(start.elapsed(), ms(700));
}

/// Under the wait limit, an attempt still running at the limit is cut short
/// there, even with a longer connect timeout.
#[tokio::test(start_paused = true)]
async fn the_wait_limit_cuts_a_hanging_attempt_short() {
    let connector = Scripted::new([Step::Hang]);
    let policy = ReconnectPolicy::builder()
        .backoff(exact())
        .connect_timeout(secs(10))
        .wait_limit(secs(1))
        .build()
        .unwrap();
    let start = Instant::now();

    let dialing = dial(&connector, policy).oneshot("db");
    let error = within(DEADLINE, "the dial", dialing).await.unwrap_err();

    assert_eq!(start.elapsed(), secs(1));
    let gave_up = dial_error(&error);
    assert_eq!(gave_up.attempts(), 1);
    assert_eq!(gave_up.to_string(), "dial gave up after 1 attempt in 1s");
    let timeout = gave_up.source().unwrap().downcast_ref::<ConnectTimeout>();
    assert_eq!(timeout.unwrap().after(), secs(1));
    assert_eq!(connector.dropped_hangs(), 1);
}

/// Each call walks its own schedule from the start: a call made while
/// another is deep in its backoff waits the first delay, not the other's.
#[tokio::test(start_paused = true)]
async fn each_call_walks_its_own_schedule() {
    use Step::*;
    let connector = Scripted::default();
    connector.script("a", [Refuse, Refuse, Refuse, Connect]);
    connector.script("b", [Refuse, Connect]);
    let mut dial = dial(&connector, policy(exact()));
    let start = Instant::now();

    let ready = within(DEADLINE, "poll_ready", dial.ready()).await;
    let a = tokio::spawn(ready.unwrap().call("a"));
    tokio::time::sleep(ms(250)).await;
    let ready = within(DEADLINE, "poll_ready", dial.ready()).await;
    let b = ready.unwrap().call("b");

    assert_eq!(within(DEADLINE, "the dial to b", b).await.unwrap(), Conn(2));
    assert_eq!(
        within(DEADLINE, "the dial to a", a).await.unwrap().unwrap(),
        Conn(4)
    );
    assert_eq!(connector.offsets("a", start), [0, 100, 300, 700]);
    assert_eq!(connector.offsets("b", start), [250, 350]);
}

/// The connector is polled ready before every attempt: `call` hands the
/// future the connector that was polled ready, and the future polls it
/// again before each retry. (The scripted connector panics otherwise.)
#[tokio::test(start_paused = true)]
async fn the_connector_is_polled_ready_before_every_attempt() {
    use Step::*;
    let connector = Scripted::new([Refuse, Refuse, Connect, Refuse, Connect]);
    let mut dial = dial(&connector, policy(exact()));

    let ready = within(DEADLINE, "poll_ready", dial.ready()).await;
    let first = ready.unwrap().call("db");
    let ready = within(DEADLINE, "poll_ready", dial.ready()).await;
    let second = ready.unwrap().call("db");
    let both = async { tokio::join!(first, second) };
    let (first, second) = within(DEADLINE, "both dials", both).await;

    assert!(first.is_ok() && second.is_ok());
    assert_eq!(connector.dials(), 5);
    assert_eq!(connector.inner.lock().unwrap().readied, 5);
}

/// A connector whose `poll_ready` fails cannot be used again, so the dial
/// ends at once with that error as it is, not a `DialError`.
#[tokio::test(start_paused = true)]
async fn a_failed_connector_ends_the_dial_at_once() {
    let connector = Scripted::new([Step::Refuse]);
    connector.inner.lock().unwrap().fail_ready_after = Some(1);
    let start = Instant::now();

    let dialing = dial(&connector, policy(exact())).oneshot("db");
    let error = within(DEADLINE, "the dial", dialing).await.unwrap_err();

    assert!(!error.is::<DialError>(), "{error:?}");
    assert_eq!(error.to_string(), "connector closed");
    assert_eq!(connector.dials(), 1);
    assert_eq!(start.elapsed(), ms(100), "failed when the retry was due");
}

/// A refused port, free to use: bound, then released.
async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Over real sockets, `Dial<TcpConnector>` gives up on a port nobody
/// listens on, with the kernel's refusal as the source.
#[tokio::test]
async fn dial_over_tcp_reports_the_refusal() {
    let addr = refused_addr().await;
    let policy = policy(Backoff::fixed(ms(10)).max_attempts(2));

    let dialing = DialLayer::new(policy)
        .layer(TcpConnector::new())
        .oneshot(addr);
    let error = within(REAL_DEADLINE, "the dial", dialing)
        .await
        .unwrap_err();

    let gave_up = dial_error(&error);
    assert_eq!(gave_up.attempts(), 2);
    let last = gave_up
        .source()
        .unwrap()
        .downcast_ref::<io::Error>()
        .unwrap();
    assert_eq!(last.kind(), io::ErrorKind::ConnectionRefused);
}

/// When a target has several addresses, `TcpConnector` tries them in turn
/// and connects to the first that answers.
#[tokio::test]
async fn tcp_connector_tries_each_address_in_turn() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap();
    let dead = refused_addr().await;
    let addrs: &'static [SocketAddr] = Box::leak(vec![dead, live].into_boxed_slice());

    let connecting = TcpConnector::new().oneshot(addrs);
    let stream = within(REAL_DEADLINE, "the connection", connecting)
        .await
        .unwrap();

    assert_eq!(stream.peer_addr().unwrap(), live);
}

/// `TcpConnector` sets its options on the connected socket: read back from
/// the socket, they match the presets and the builder settings.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn tcp_connector_sets_its_socket_options() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connect =
        |connector: TcpConnector| within(REAL_DEADLINE, "the connection", connector.oneshot(addr));

    let plain = connect(TcpConnector::new()).await.unwrap();
    let socket = socket2::SockRef::from(&plain);
    assert!(socket.nodelay().unwrap());
    assert!(!socket.keepalive().unwrap(), "keepalive left to the system");
    assert_eq!(socket.tcp_user_timeout().unwrap(), None);

    let preset = connect(TcpConnector::detect_dead_peers()).await.unwrap();
    let socket = socket2::SockRef::from(&preset);
    assert!(socket.nodelay().unwrap());
    assert!(socket.keepalive().unwrap());
    assert_eq!(socket.keepalive_time().unwrap(), secs(10));
    assert_eq!(socket.keepalive_interval().unwrap(), secs(5));
    assert_eq!(socket.keepalive_retries().unwrap(), 3);
    assert_eq!(socket.tcp_user_timeout().unwrap(), Some(secs(30)));

    let custom = TcpConnector::detect_dead_peers()
        .nodelay(false)
        .keepalive(Keepalive::new(secs(60)).interval(secs(7)).retries(4))
        .user_timeout(secs(45));
    let custom = connect(custom).await.unwrap();
    let socket = socket2::SockRef::from(&custom);
    assert!(!socket.nodelay().unwrap());
    assert_eq!(socket.keepalive_time().unwrap(), secs(60));
    assert_eq!(socket.keepalive_interval().unwrap(), secs(7));
    assert_eq!(socket.keepalive_retries().unwrap(), 4);
    assert_eq!(socket.tcp_user_timeout().unwrap(), Some(secs(45)));

    let off = TcpConnector::detect_dead_peers()
        .keepalive(None)
        .user_timeout(None);
    let off = connect(off).await.unwrap();
    let socket = socket2::SockRef::from(&off);
    assert!(!socket.keepalive().unwrap());
    assert_eq!(socket.tcp_user_timeout().unwrap(), None);
}
