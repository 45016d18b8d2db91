//! Edges of the core that the other suites leave open, found by mutation
//! testing (`scripts/mutants`): what the state watch says a connection died
//! of, how soon a multiplexed connection found dead leaves the direct lane,
//! when a redial may start past the wait limit, and what a connection lost
//! before it proved healthy counts as. Scripted factory and paused time;
//! every await on the client has a deadline.

use support::scripted;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use scripted::{within, ConnHandle, Dial, Dialer};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::error::{ConnectTimeout, Unavailable};
use tower_redial::reconnect::Reconnect;
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, Client, Jitter, ReconnectLayer, ReconnectPolicy};

/// How long a test waits on the client or a connection before it fails.
const DEADLINE: Duration = Duration::from_secs(10);

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .wait_limit(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn reset() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionReset)
}

/// Sends `request` through a clone of `client`, answers it on `conn` with
/// `reply`, and returns what the caller got.
async fn answered(
    client: &Client<String, String>,
    conn: &mut ConnHandle,
    request: &str,
    reply: Result<&str, io::Error>,
) -> Result<String, BoxError> {
    let response = tokio::spawn(client.clone().oneshot(request.to_string()));
    let (got, send) = within(DEADLINE, "the request", conn.next_request())
        .await
        .expect("the connection is open");
    assert_eq!(got, request);
    match reply {
        Ok(reply) => send.send_response(reply.to_string()),
        Err(error) => send.send_error(error),
    }
    within(DEADLINE, "the reply", response)
        .await
        .expect("caller task")
}

/// When a response finds a healthy connection dead, the state watch names
/// what the response failed with while the client redials.
#[tokio::test(start_paused = true)]
async fn the_state_watch_names_what_killed_the_connection() {
    let dialer = Dialer::new([Dial::Connect, Dial::Hang]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(dialer.clone())
        .client("db");
    let request = tokio::spawn(client.clone().oneshot("PING".to_string()));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (_, send) = within(DEADLINE, "the first request", conn.next_request())
        .await
        .unwrap();
    send.send_response("PONG".to_string());
    within(DEADLINE, "the reply", request)
        .await
        .unwrap()
        .unwrap();

    let error = answered(&client, &mut conn, "GET", Err(reset()))
        .await
        .unwrap_err();
    assert!(error.is::<io::Error>(), "{error}");

    // The redial hangs: the outage shows the reset as its latest error.
    let mut state = client.state();
    let snapshot = within(
        DEADLINE,
        "the redial",
        state.wait_for(|s| s.phase() == Phase::Connecting),
    )
    .await
    .expect("the state watch is open")
    .clone();
    let cause = snapshot.last_error().expect("a cause").to_string();
    assert_eq!(cause, reset().to_string());
    assert_eq!(dialer.dials(), 2);
}

/// A response that went through the queue and found a published
/// multiplexed connection dead withdraws it at once: the very next request,
/// made before the client's task has run, is not sent on the dead
/// connection.
#[tokio::test(start_paused = true)]
async fn a_queued_response_that_finds_the_connection_dead_withdraws_the_lane_at_once() {
    let dialer = Dialer::new([Dial::Connect, Dial::Hang]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(dialer.clone())
        .multiplexed("cache");

    // The first request queues and dials; it stays unanswered.
    let mut first = Box::pin(client.clone().oneshot("SLOW".to_string()));
    assert!((&mut first).now_or_never().is_none());
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (_, slow) = within(DEADLINE, "the first request", conn.next_request())
        .await
        .unwrap();

    // A second one is answered: the connection is proven, and published.
    answered(&client, &mut conn, "PING", Ok("PONG"))
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }

    // The queued first request now dies with a transport error, polled
    // here, on this task.
    slow.send_error(reset());
    let error = (&mut first)
        .now_or_never()
        .expect("the error is in")
        .unwrap_err();
    assert!(error.is::<io::Error>(), "{error}");

    // With no yield since: the next request is not sent on connection 0.
    let mut next = client.clone();
    let ready = next.ready().now_or_never();
    assert!(matches!(ready, Some(Ok(_))), "room in the queue");
    let _pending = next.call("GET".to_string());
    assert!(
        conn.next_request().now_or_never().is_none(),
        "a request went to the dead connection"
    );
}

/// A backoff reports the limits it was given, and none when given none:
/// what `Dial` reads to decide whether the wait limit bounds it.
#[test]
fn a_backoff_reports_its_limits() {
    let none = Backoff::fixed(Duration::from_secs(1));
    assert_eq!(none.attempt_limit(), None);
    assert_eq!(none.elapsed_limit(), None);
    let both = none
        .clone()
        .max_attempts(7)
        .max_elapsed(Duration::from_secs(90));
    assert_eq!(both.attempt_limit(), Some(7));
    assert_eq!(both.elapsed_limit(), Some(Duration::from_secs(90)));
}

/// A raw delay that reaches the cap is the cap to the nanosecond, even where
/// a float of seconds cannot hold the cap exactly: a constant schedule at
/// `2⁴⁰ s + 1 ns` never waits 1 ns less.
#[test]
fn a_delay_at_the_cap_is_the_cap_exactly() {
    let cap = Duration::new(1 << 40, 1);
    let constant = Backoff::exponential(cap, 2.0, cap);
    for failures in 1..=3 {
        assert_eq!(constant.raw_delay(failures), cap, "after {failures}");
    }
    assert_eq!(constant.schedule(1).next(), Some(cap));
}

fn plain_client(dialer: &Dialer, policy: ReconnectPolicy) -> Client<String, String> {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(dialer.clone())
        .client("db")
}

/// `connected()` on a client that gave up for good fails with `Closed`, not
/// `Unavailable`: the client will not try again.
#[tokio::test(start_paused = true)]
async fn connected_on_a_client_that_gave_up_is_closed() {
    let dialer = Dialer::new([]);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(Duration::from_millis(100)).max_attempts(1))
        .build()
        .unwrap();
    let client = plain_client(&dialer, policy);
    let error = within(DEADLINE, "connected", client.connected())
        .await
        .unwrap_err();
    assert!(
        error.is::<tower_redial::error::Closed>(),
        "not Closed: {error}"
    );
    assert_eq!(dialer.dials(), 1);
}

/// A client that is never used never dials, however long it waits: it is
/// lazy until its first request or `connected()`.
#[tokio::test(start_paused = true)]
async fn an_unused_client_never_dials() {
    let dialer = Dialer::new([Dial::Connect]);
    let client = plain_client(&dialer, policy());
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(dialer.dials(), 0);
    assert_eq!(client.state().borrow().phase(), Phase::Idle);
}

/// `connected()` wakes a client's task that has already run and gone idle,
/// and the connection is up at once: it does not wait for the bound.
#[tokio::test(start_paused = true)]
async fn connected_wakes_an_idle_client_task() {
    let dialer = Dialer::new([Dial::Connect]);
    let client = plain_client(&dialer, policy());
    // The client's task runs, finds the client unused, and waits.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let start = tokio::time::Instant::now();
    within(DEADLINE, "connected", client.connected())
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(dialer.dials(), 1);
}

/// A connection that answers every request with "OK" and counts how often
/// its `poll_ready` is called.
#[derive(Clone)]
struct Counting(Arc<AtomicUsize>);

impl Service<String> for Counting {
    type Response = String;
    type Error = BoxError;
    type Future = std::future::Ready<Result<String, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: String) -> Self::Future {
        std::future::ready(Ok("OK".to_string()))
    }
}

/// A connected client with nothing to do goes quiet: its task does not
/// keep polling the connection (no busy loop), while the test task runs a
/// hundred times.
#[tokio::test(start_paused = true)]
async fn an_idle_connected_client_does_not_spin() {
    let polls = Arc::new(AtomicUsize::new(0));
    let make = {
        let polls = polls.clone();
        tower::service_fn(move |_: &'static str| {
            let conn = Counting(polls.clone());
            async move { Ok::<_, BoxError>(conn) }
        })
    };
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(make)
        .client("db");
    within(DEADLINE, "connected", client.connected())
        .await
        .unwrap();
    let reply = within(DEADLINE, "a reply", client.clone().oneshot("GET".into())).await;
    assert_eq!(reply.unwrap(), "OK");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let settled = polls.load(Ordering::SeqCst);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let more = polls.load(Ordering::SeqCst) - settled;
    assert!(
        more <= 2,
        "the idle connection was polled {more} more times"
    );
}

/// A handle whose `poll_ready` finds the published connection failed lets
/// go of its copy at once: once the client has redialed, nothing holds the
/// dead connection any more, though the handle lives on.
#[tokio::test(start_paused = true)]
async fn a_handle_lets_go_of_a_connection_that_failed_readiness() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let (client, mut conn) = published(&dialer).await;

    conn.send_error(reset());
    let mut handle = client.clone();
    within(DEADLINE, "poll_ready", handle.ready())
        .await
        .expect("ready, through the queue");
    let response = tokio::spawn(handle.call("GET".to_string()));
    let mut conn1 = dialer.conn_within(1, DEADLINE).await;
    let (_, send) = within(DEADLINE, "the request", conn1.next_request())
        .await
        .unwrap();
    send.send_response("VALUE".to_string());
    let reply = within(DEADLINE, "the reply", response).await.unwrap();
    assert_eq!(reply.unwrap(), "VALUE");

    let released = within(DEADLINE, "connection 0 released", conn.next_request()).await;
    assert!(released.is_none(), "connection 0 still takes requests");
    drop(handle);
}

/// A published connection that closes while the client is idle is let go
/// of entirely once the client notices: when the client has redialed,
/// nothing holds the closed connection, with no request made meanwhile. The
/// client withdraws it from the direct lane itself, at once: not only when
/// the new connection proves healthy (after 2 s) and replaces it there.
#[tokio::test(start_paused = true)]
async fn an_idle_published_connection_that_closes_is_let_go_of() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let (_client, mut conn) = published(&dialer).await;

    dialer.hang_up(0);
    let _conn1 = dialer.conn_within(1, DEADLINE).await;
    let before_proven = Duration::from_secs(1);
    let released = within(before_proven, "connection 0 released", conn.next_request()).await;
    assert!(released.is_none(), "connection 0 still takes requests");
}

/// A policy reports every setting it was built with.
#[test]
fn a_policy_reports_its_settings() {
    let backoff = Backoff::fixed(Duration::from_millis(250)).max_attempts(4);
    let policy = ReconnectPolicy::builder()
        .backoff(backoff.clone())
        .connect_timeout(Duration::from_secs(3))
        .wait_limit(Duration::from_secs(7))
        .queue_capacity(9)
        .healthy_after(Duration::from_secs(11))
        .response_timeout(Duration::from_secs(13))
        .retry_attempts(5)
        .build()
        .unwrap();
    assert_eq!(policy.backoff(), &backoff);
    assert_eq!(policy.connect_timeout(), Duration::from_secs(3));
    assert_eq!(policy.wait_limit(), Duration::from_secs(7));
    assert_eq!(policy.queue_capacity(), 9);
    assert_eq!(policy.healthy_after(), Duration::from_secs(11));
    assert_eq!(policy.response_timeout(), Some(Duration::from_secs(13)));
    assert_eq!(policy.retry_attempts(), 5);
    assert_eq!(ReconnectPolicy::default().response_timeout(), None);
}

/// The queue capacity may be as large as tokio's `Semaphore` can count
/// (`Semaphore::MAX_PERMITS`, as the builder documents), and no larger.
#[test]
fn the_queue_capacity_may_reach_the_semaphore_limit() {
    let with = |capacity| ReconnectPolicy::builder().queue_capacity(capacity).build();
    let max = tokio::sync::Semaphore::MAX_PERMITS;
    assert_eq!(with(max).unwrap().queue_capacity(), max);
    assert!(with(max + 1).is_err());
}

/// Runs `test` on a multi-thread runtime of its own, shut down without
/// waiting: a client task stuck in a loop inside one poll then fails the
/// test (by `test`'s real-time deadline) instead of hanging it.
fn on_own_runtime<F: std::future::Future>(test: impl FnOnce() -> F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let output = runtime.block_on(test());
    runtime.shutdown_background();
    output
}

/// The first dial starts and ends at once: `connected()` on a server that
/// accepts returns well within a real-time deadline.
#[test]
fn connected_returns_at_once_on_a_multi_thread_runtime() {
    let dialer = Dialer::new([Dial::Connect]);
    let result = on_own_runtime(|| async {
        let client = plain_client(&dialer, policy());
        tokio::time::timeout(Duration::from_secs(10), client.connected()).await
    });
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    assert_eq!(dialer.dials(), 1);
}

/// Refused dials back off and give up at the attempt limit: two dials,
/// then `Closed`, well within a real-time deadline, on a multi-thread
/// runtime.
#[test]
fn refused_dials_give_up_at_once_on_a_multi_thread_runtime() {
    let dialer = Dialer::new([]);
    let start = tokio::time::Instant::now();
    let result = on_own_runtime(|| async {
        let policy = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::from_millis(10)).max_attempts(2))
            .build()
            .unwrap();
        let client = plain_client(&dialer, policy);
        tokio::time::timeout(Duration::from_secs(10), client.connected()).await
    });
    let error = result.expect("not within 10 s").unwrap_err();
    assert!(error.is::<tower_redial::error::Closed>(), "{error}");
    assert_eq!(dialer.dials(), 2);
    // The second dial waited out the backoff delay (a lower bound, which a
    // slow machine cannot fail).
    let offsets = dialer.dial_offsets(start);
    assert!(
        offsets[1] - offsets[0] >= Duration::from_millis(10),
        "{offsets:?}"
    );
}

/// A connection that closes is redialed, on a multi-thread runtime, well
/// within a real-time deadline.
#[test]
fn a_closed_connection_is_redialed_on_a_multi_thread_runtime() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let redialed = on_own_runtime(|| async {
        let client = plain_client(&dialer, policy());
        let limit = Duration::from_secs(10);
        if !matches!(
            tokio::time::timeout(limit, client.connected()).await,
            Ok(Ok(()))
        ) {
            return false;
        }
        dialer.hang_up(0);
        tokio::time::timeout(limit, dialer.conn(1)).await.is_ok()
    });
    assert!(redialed, "not redialed within 10 s");
    assert_eq!(dialer.dials(), 2);
}

/// Past the wait limit, on a multi-thread runtime and well within a
/// real-time deadline: a request on a client whose dials are refused
/// fails fast with `Unavailable`, and the client goes on dialing with no
/// request waiting.
#[test]
fn past_the_wait_limit_requests_fail_fast_on_a_multi_thread_runtime() {
    let dialer = Dialer::new([]);
    let (failed, dials_then, redialed) = on_own_runtime(|| async {
        let policy = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::from_millis(10)))
            .wait_limit(Duration::from_millis(30))
            .build()
            .unwrap();
        let client = plain_client(&dialer, policy);
        let limit = Duration::from_secs(10);
        let failed = tokio::time::timeout(limit, client.clone().oneshot("A".into())).await;
        let dials_then = dialer.dials();
        let redialed = tokio::time::timeout(limit, async {
            while dialer.dials() <= dials_then {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        (failed, dials_then, redialed)
    });
    let error = failed.expect("not within 10 s").unwrap_err();
    assert!(error.is::<Unavailable>(), "{error}");
    assert!(dials_then >= 1, "{dials_then} dials");
    assert!(redialed.is_ok(), "no dial within 10 s of the failure");
}

/// Past the wait limit, a request that waited through a dial gets that
/// dial's failure as soon as it fails, even when the next dial is due at
/// once (the failed dial took longer than the backoff delay): it does not
/// wait through the next dial too.
#[tokio::test(start_paused = true)]
async fn past_the_wait_limit_a_request_gets_the_failure_of_the_dial_it_waited_for() {
    let dialer = Dialer::new([Dial::Hang; 8]);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .connect_timeout(Duration::from_millis(500))
        .wait_limit(Duration::from_secs(1))
        .build()
        .unwrap();
    let client = plain_client(&dialer, policy);
    let start = tokio::time::Instant::now();
    let first = within(
        DEADLINE,
        "the first answer",
        client.clone().oneshot("A".into()),
    )
    .await;
    assert!(first.unwrap_err().is::<Unavailable>());
    assert_eq!(start.elapsed(), Duration::from_secs(1), "at the wait limit");

    // A dial is in flight (from 1 s to its timeout at 1.5 s): a request
    // made meanwhile waits for it, and fails when it does.
    tokio::time::sleep_until(start + Duration::from_millis(1100)).await;
    let second = within(
        DEADLINE,
        "the second answer",
        client.clone().oneshot("B".into()),
    )
    .await;
    let error = second.unwrap_err();
    let unavailable = error
        .downcast_ref::<Unavailable>()
        .unwrap_or_else(|| panic!("not Unavailable: {error}"));
    let cause = std::error::Error::source(unavailable).expect("a cause");
    assert!(cause.is::<ConnectTimeout>(), "{cause}");
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
    assert_eq!(
        dialer.dial_offsets(start),
        [0, 500, 1000, 1500].map(Duration::from_millis)
    );
}

/// Sends the first request, answers it on connection 0 (which proves the
/// connection) and returns the test's end of that connection.
async fn proven_connection(
    dialer: &Dialer,
    client: &Client<String, String>,
) -> scripted::ConnHandle {
    let first = tokio::spawn(client.clone().oneshot("PING".to_string()));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (_, send) = within(DEADLINE, "the first request", conn.next_request())
        .await
        .unwrap();
    send.send_response("PONG".to_string());
    within(DEADLINE, "the reply", first).await.unwrap().unwrap();
    conn
}

/// A multiplexed client whose connection 0 is proven and published to the
/// direct lane; returns the client and the test's end of the connection.
async fn published(dialer: &Dialer) -> (Client<String, String>, scripted::ConnHandle) {
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(dialer.clone())
        .multiplexed("cache");
    let conn = proven_connection(dialer, &client).await;
    // The answer proved the connection; the client's task publishes it.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    (client, conn)
}

/// Polls `reconnect` for readiness once: `None` while it is pending.
fn poll_ready_once<M>(reconnect: &mut Reconnect<M, &'static str>) -> Option<Result<(), BoxError>>
where
    M: Service<&'static str, Response = scripted::Conn>,
    M::Error: Into<BoxError>,
{
    std::future::poll_fn(|cx| Service::<String>::poll_ready(reconnect, cx)).now_or_never()
}

/// A connection that dies before it has proved healthy does not end the
/// outage: its loss counts as a failed attempt, and the redial waits for
/// the backoff from that dial's start, instead of starting at once as after
/// the loss of a healthy connection.
#[tokio::test(start_paused = true)]
async fn a_connection_lost_before_it_proved_healthy_is_redialed_after_the_backoff() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    // Backoff 100 ms; a connection proves healthy after 2 s.
    let mut reconnect = Reconnect::new(dialer.clone(), "db", policy());
    let start = tokio::time::Instant::now();
    assert!(matches!(poll_ready_once(&mut reconnect), Some(Ok(()))));

    tokio::time::sleep(Duration::from_millis(50)).await;
    dialer.hang_up(0);
    assert!(poll_ready_once(&mut reconnect).is_none(), "backing off");
    assert_eq!(reconnect.state().borrow().phase(), Phase::Backoff);
    assert_eq!(dialer.dials(), 1);

    tokio::time::sleep_until(start + Duration::from_millis(100)).await;
    assert!(matches!(poll_ready_once(&mut reconnect), Some(Ok(()))));
    assert_eq!(
        dialer.dial_offsets(start),
        [0, 100].map(Duration::from_millis)
    );
}

/// A factory that dials with a [`Dialer`], except that its `call` number
/// `panic_at` (counted from 0) panics.
#[derive(Clone)]
struct PanicsAt {
    dialer: Dialer,
    calls: Arc<AtomicUsize>,
    panic_at: usize,
}

impl Service<&'static str> for PanicsAt {
    type Response = scripted::Conn;
    type Error = BoxError;
    type Future = <Dialer as Service<&'static str>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: &'static str) -> Self::Future {
        if self.calls.fetch_add(1, Ordering::SeqCst) == self.panic_at {
            panic!("the factory broke");
        }
        self.dialer.call(target)
    }
}

/// Past the wait limit, with the next dial due at once (a zero backoff
/// delay), a `Reconnect` used on its own lets each request that waited
/// through a failed dial fail fast before the next dial starts: a dial that
/// failed later than its backoff delay, and a dial that failed at once
/// because the factory's `call` panicked. The dial after each starts on the
/// next `poll_ready`.
#[tokio::test(start_paused = true)]
async fn past_the_wait_limit_each_failed_dial_lets_its_request_fail_before_the_next_dial() {
    // Full jitter on a 1 ns delay rounds to zero about half the time: a
    // seed whose first two delays are zero.
    let backoff = Backoff::fixed(Duration::from_nanos(1)).jitter(Jitter::Full);
    let seed = (0..)
        .find(|&seed| backoff.schedule(seed).take(2).all(|delay| delay.is_zero()))
        .unwrap();
    let policy = ReconnectPolicy::builder()
        .backoff(backoff)
        .connect_timeout(Duration::from_secs(10))
        .wait_limit(Duration::from_secs(1))
        .seed(seed)
        .build()
        .unwrap();
    let dialer = Dialer::new([
        Dial::FailAfter(Duration::from_millis(1500), io::ErrorKind::TimedOut),
        Dial::Hang,
    ]);
    let factory = PanicsAt {
        dialer: dialer.clone(),
        calls: Arc::default(),
        panic_at: 1,
    };
    let mut reconnect = Reconnect::new(factory, "db", policy);
    let start = tokio::time::Instant::now();
    assert!(poll_ready_once(&mut reconnect).is_none(), "dialing");

    // The first dial fails at 1.5 s, past the wait limit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(matches!(poll_ready_once(&mut reconnect), Some(Ok(()))));
    assert_eq!(
        reconnect.stats().dials,
        1,
        "no dial before the request fails"
    );
    let failed = within(DEADLINE, "fail fast", reconnect.call("A".into())).await;
    assert!(failed.unwrap_err().is::<Unavailable>());

    // The next poll dials, and the factory panics.
    assert!(matches!(poll_ready_once(&mut reconnect), Some(Ok(()))));
    assert_eq!(
        reconnect.stats().dials,
        2,
        "no dial before the request fails"
    );
    let failed = within(DEADLINE, "fail fast", reconnect.call("B".into())).await;
    assert!(failed.unwrap_err().is::<Unavailable>());

    // The next poll starts the third dial, which hangs.
    assert!(poll_ready_once(&mut reconnect).is_none(), "dialing");
    assert_eq!(reconnect.stats().dials, 3);
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
}

/// A request of a multiplexed client that goes through the queue (the
/// connection has not proved healthy yet) and is dropped by its caller
/// leaves the connection alone: other requests share it, so the dropped
/// one cannot desynchronise it.
#[tokio::test(start_paused = true)]
async fn a_dropped_queued_request_keeps_a_multiplexed_connection() {
    let dialer = Dialer::new([Dial::Connect, Dial::Hang]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(dialer.clone())
        .multiplexed("cache");
    let first = tokio::spawn(client.clone().oneshot("SLOW".to_string()));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (_, _unanswered) = within(DEADLINE, "the first request", conn.next_request())
        .await
        .unwrap();
    first.abort();
    assert!(within(DEADLINE, "the abort", first)
        .await
        .unwrap_err()
        .is_cancelled());
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }

    let reply = answered(&client, &mut conn, "PING", Ok("PONG")).await;
    assert_eq!(reply.unwrap(), "PONG", "on the same connection");
    assert_eq!((client.stats().drops, dialer.dials()), (0, 1));
}
