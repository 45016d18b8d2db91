//! The `Reconnect` state machine, driven by hand with a scripted factory,
//! tower-test mock connections and paused time. Every delay is asserted
//! exactly.

use support::scripted;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scripted::{within, ConnHandle, Dial, Dialer};
use tokio::time::{advance, Instant};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower::service_fn;
use tower_redial::classify::Classifier;
use tower_redial::error::{Closed, ConnectTimeout};
use tower_redial::reconnect::Reconnect;
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, ReconnectPolicy};
use tower_test::mock::{SendResponse, Spawn};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How long a test waits on a connection or a response before it fails: far
/// past every delay the tests expect.
const DEADLINE: Duration = Duration::from_secs(60);

/// The next request on `conn`, or `None` once the service has closed it.
async fn next_request(conn: &mut ConnHandle) -> Option<(String, SendResponse<String>)> {
    within(DEADLINE, "the next request", conn.next_request()).await
}

/// Exponential 100 ms × 2 capped at 1 s, no jitter, so delays are exact.
fn exact() -> Backoff {
    Backoff::exponential(ms(100), 2.0, ms(1000))
}

fn policy(backoff: Backoff) -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(backoff)
        .wait_limit(Duration::from_secs(3600))
        .build()
        .unwrap()
}

type Svc = Spawn<Reconnect<Dialer, &'static str>>;

fn reconnect(dialer: &Dialer, policy: ReconnectPolicy) -> Svc {
    Spawn::new(Reconnect::new(dialer.clone(), "db", policy))
}

fn poll_ready(svc: &mut Svc) -> std::task::Poll<Result<(), BoxError>> {
    svc.poll_ready::<String>()
}

/// Advances paused time to just before `delay` from now and checks that no
/// dial happens, then to `delay` and checks that exactly one does.
async fn expect_dial_after(svc: &mut Svc, dialer: &Dialer, delay: Duration) {
    let before = dialer.dials();
    advance(delay - ms(1)).await;
    assert_pending!(poll_ready(svc));
    assert_eq!(dialer.dials(), before, "dialed before {delay:?}");
    advance(ms(1)).await;
    assert_pending!(poll_ready(svc));
    assert_eq!(dialer.dials(), before + 1, "no dial at {delay:?}");
}

/// (a) Failed dials are retried exactly on the backoff schedule.
#[tokio::test(start_paused = true)]
async fn dials_follow_the_backoff_schedule() {
    let dialer = Dialer::new([]);
    let mut svc = reconnect(&dialer, policy(exact()));
    let start = Instant::now();

    assert_pending!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 1, "the first dial is immediate");
    for delay in [100, 200, 400, 800, 1000, 1000] {
        expect_dial_after(&mut svc, &dialer, ms(delay)).await;
    }
    let offsets: Vec<_> = dialer
        .dial_offsets(start)
        .iter()
        .map(Duration::as_millis)
        .collect();
    assert_eq!(offsets, [0, 100, 300, 700, 1500, 2500, 3500]);
    assert_eq!(svc.get_ref().stats().dial_failures, 7);
}

/// (b) The first redial after a healthy connection drops is immediate; the
/// ones after it follow the schedule from the start.
#[tokio::test(start_paused = true)]
async fn first_redial_after_healthy_drop_is_immediate() {
    let dialer = Dialer::new([Dial::Connect]);
    let mut svc = reconnect(&dialer, policy(exact()));

    assert_ready_ok!(poll_ready(&mut svc));
    let mut conn = dialer.take_conn(0);
    // One successful response proves the connection healthy.
    let response = svc.call("PING".to_string());
    let (_, reply) = next_request(&mut conn).await.unwrap();
    reply.send_response("PONG".to_string());
    assert_eq!(
        within(DEADLINE, "the response", response).await.unwrap(),
        "PONG"
    );
    assert_ready_ok!(poll_ready(&mut svc));

    // The server goes away: the connection's poll_ready fails.
    drop(conn);
    assert_pending!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 2, "redialed at once, without waiting");
    assert_eq!(svc.get_ref().stats().drops, 1);

    // That redial was refused: now the schedule applies, from its start.
    expect_dial_after(&mut svc, &dialer, ms(100)).await;
    expect_dial_after(&mut svc, &dialer, ms(200)).await;
}

/// (c) A server that accepts and at once closes does not reset the backoff:
/// dials stay on the schedule instead of looping hot.
#[tokio::test(start_paused = true)]
async fn accept_then_close_keeps_backing_off() {
    let dialer = Dialer::new([Dial::ConnectClosed; 64]);
    let mut svc = reconnect(&dialer, policy(exact()));
    let start = Instant::now();

    assert_pending!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 1);
    for delay in [100, 200, 400, 800, 1000, 1000, 1000] {
        expect_dial_after(&mut svc, &dialer, ms(delay)).await;
    }
    let offsets: Vec<_> = dialer
        .dial_offsets(start)
        .iter()
        .map(Duration::as_millis)
        .collect();
    assert_eq!(offsets, [0, 100, 300, 700, 1500, 2500, 3500, 4500]);
    let stats = svc.get_ref().stats();
    assert_eq!(stats.dials, 8);
    assert_eq!(stats.drops, 8, "each accepted connection was found dead");
    assert_eq!(svc.get_ref().state().borrow().phase(), Phase::Backoff);
}

/// A server that accepts and at once closes does not restart the wait-limit
/// clock: past the wait limit, requests fail fast instead of waiting forever.
#[tokio::test(start_paused = true)]
async fn accept_then_close_still_fails_fast_at_the_wait_limit() {
    let dialer = Dialer::new([Dial::ConnectClosed; 64]);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(100)))
        .wait_limit(ms(1000))
        .build()
        .unwrap();
    let mut svc = reconnect(&dialer, policy);

    assert_pending!(poll_ready(&mut svc));
    for _ in 0..9 {
        expect_dial_after(&mut svc, &dialer, ms(100)).await;
    }
    advance(ms(100)).await;
    assert_ready_ok!(poll_ready(&mut svc));
    assert_eq!(svc.get_ref().state().borrow().phase(), Phase::FailFast);
    let error = within(DEADLINE, "the response", svc.call("GET".to_string()))
        .await
        .unwrap_err();
    let unavailable = error
        .downcast_ref::<tower_redial::error::Unavailable>()
        .unwrap();
    assert_eq!(unavailable.down_for(), ms(1000));
    // Every dial of the outage counts, the accepted ones included: the
    // server took each connection, and closed it before it proved healthy.
    assert_eq!(unavailable.attempts(), dialer.dials() as u32);
    assert!(unavailable.attempts() >= 10, "{unavailable}");
}

/// A connection that stays up for `healthy_after` counts as healthy even
/// without a response, so its drop is redialed at once.
#[tokio::test(start_paused = true)]
async fn staying_up_proves_health() {
    let dialer = Dialer::new([Dial::Refuse, Dial::Connect, Dial::Refuse]);
    let policy = ReconnectPolicy::builder()
        .backoff(exact())
        .healthy_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut svc = reconnect(&dialer, policy);

    assert_pending!(poll_ready(&mut svc));
    advance(ms(100)).await;
    assert_ready_ok!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 2);
    let conn = dialer.take_conn(0);

    advance(Duration::from_secs(2)).await;
    drop(conn);
    assert_pending!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 3, "healthy connection: redialed at once");
    // And the schedule starts over at 100 ms, not at 200 ms.
    expect_dial_after(&mut svc, &dialer, ms(100)).await;
}

/// (d) While redialing, `poll_ready` is `Pending`, never `Err` and never a
/// fake `Ready`, for as long as it takes.
#[tokio::test(start_paused = true)]
async fn poll_ready_stays_pending_while_redialing() {
    let dialer = Dialer::new([]);
    let mut svc = reconnect(&dialer, policy(exact()));

    for _ in 0..2000 {
        assert_pending!(poll_ready(&mut svc));
        advance(ms(50)).await;
    }
    assert!(dialer.dials() > 90, "it kept redialing: {}", dialer.dials());
    let phase = svc.get_ref().state().borrow().phase();
    assert!(
        matches!(phase, Phase::Backoff | Phase::Connecting),
        "{phase:?}"
    );
}

/// (d, g) With an attempt limit, the service ends Closed; `Closed` is the
/// only error `poll_ready` returns, and its source is the last dial error.
#[tokio::test(start_paused = true)]
async fn attempt_limit_ends_closed() {
    let dialer = Dialer::new([]);
    let mut svc = reconnect(&dialer, policy(exact().max_attempts(3)));

    assert_pending!(poll_ready(&mut svc));
    expect_dial_after(&mut svc, &dialer, ms(100)).await;
    advance(ms(200)).await;
    let error = assert_ready_err!(poll_ready(&mut svc));
    let closed = error.downcast_ref::<Closed>().expect("a Closed error");
    assert_eq!(closed.attempts(), 3);
    let source = std::error::Error::source(closed).unwrap();
    let io = source.downcast_ref::<io::Error>().unwrap();
    assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);

    // It stays closed, and dials no more.
    advance(Duration::from_secs(60)).await;
    assert_ready_err!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 3);
    assert_eq!(svc.get_ref().state().borrow().phase(), Phase::Closed);
}

/// A time limit ends Closed too, on the first failed dial past it.
#[tokio::test(start_paused = true)]
async fn elapsed_limit_ends_closed() {
    let dialer = Dialer::new([]);
    let mut svc = reconnect(&dialer, policy(exact().max_elapsed(ms(1000))));

    assert_pending!(poll_ready(&mut svc));
    for delay in [100, 200, 400] {
        expect_dial_after(&mut svc, &dialer, ms(delay)).await;
    }
    // The dial at 1500 ms fails past the 1 s limit.
    advance(ms(800)).await;
    assert_ready_err!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 5);
}

/// (e) A dial that hangs is abandoned at the connect timeout, and counts as
/// a failed dial whose error is `ConnectTimeout`. The next dial was due
/// 100 ms after the hung one *started*, so it follows at once.
#[tokio::test(start_paused = true)]
async fn connect_timeout_fires_for_a_hanging_dial() {
    let dialer = Dialer::new([Dial::Hang, Dial::Hang, Dial::Connect]);
    let policy = ReconnectPolicy::builder()
        .backoff(exact())
        .connect_timeout(Duration::from_secs(2))
        .wait_limit(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut svc = reconnect(&dialer, policy);
    let state = svc.get_ref().state();
    let start = Instant::now();

    assert_pending!(poll_ready(&mut svc));
    advance(ms(1999)).await;
    assert_pending!(poll_ready(&mut svc));
    assert_eq!(svc.get_ref().stats().dial_failures, 0);

    advance(ms(1)).await;
    assert_pending!(poll_ready(&mut svc));
    assert_eq!(svc.get_ref().stats().dial_failures, 1);
    {
        let snapshot = state.borrow();
        assert_eq!(snapshot.phase(), Phase::Connecting);
        assert_eq!(snapshot.attempt(), 2);
        let error = snapshot.last_error().unwrap();
        assert_eq!(
            error.downcast_ref::<ConnectTimeout>().unwrap().after(),
            Duration::from_secs(2)
        );
    }

    advance(Duration::from_secs(2)).await;
    assert_ready_ok!(poll_ready(&mut svc));
    let offsets: Vec<_> = dialer.dial_offsets(start);
    assert_eq!(offsets, [ms(0), ms(2000), ms(4000)]);
}

/// (h) Polling `poll_ready` again before `call` starts no second dial.
#[tokio::test(start_paused = true)]
async fn polling_twice_dials_once() {
    let dialer = Dialer::new([Dial::Hang]);
    let mut svc = reconnect(&dialer, policy(exact()));
    for _ in 0..5 {
        assert_pending!(poll_ready(&mut svc));
    }
    assert_eq!(dialer.dials(), 1);

    let dialer = Dialer::new([Dial::Connect]);
    let mut svc = reconnect(&dialer, policy(exact()));
    for _ in 0..5 {
        assert_ready_ok!(poll_ready(&mut svc));
    }
    assert_eq!(dialer.dials(), 1);
}

/// (i) Every redial makes a fresh connection: requests after each drop go to
/// the next connection, never an old one.
#[tokio::test(start_paused = true)]
async fn every_redial_makes_a_fresh_connection() {
    let dialer = Dialer::new([Dial::Connect; 4]);
    let mut svc = reconnect(&dialer, policy(exact()));

    for id in 0..4 {
        assert_ready_ok!(poll_ready(&mut svc));
        assert_eq!(dialer.connections(), id + 1);
        let mut conn = dialer.take_conn(id);
        let response = svc.call("WHO".to_string());
        let (request, reply) = next_request(&mut conn).await.unwrap();
        assert_eq!(request, "WHO");
        reply.send_response(format!("conn-{id}"));
        assert_eq!(
            within(DEADLINE, "the response", response).await.unwrap(),
            format!("conn-{id}")
        );
        drop(conn);
    }
    assert_eq!(svc.get_ref().stats().drops, 3);
}

/// Promise 8: a response error kills the connection only if the classifier
/// says so; the error itself still reaches the caller.
#[tokio::test(start_paused = true)]
async fn response_errors_are_classified_by_type() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let mut svc = reconnect(&dialer, policy(exact()));
    assert_ready_ok!(poll_ready(&mut svc));
    let mut conn = dialer.take_conn(0);

    // An application error whose text mentions a reset: the connection lives.
    let response = svc.call("GET".to_string());
    let (_, reply) = next_request(&mut conn).await.unwrap();
    reply.send_error(io::Error::other("ERR connection reset by peer (just text)"));
    assert!(within(DEADLINE, "the response", response).await.is_err());
    assert_ready_ok!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 1);

    // A transport error: the next poll_ready redials.
    let response = svc.call("GET".to_string());
    let (_, reply) = next_request(&mut conn).await.unwrap();
    reply.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let error = within(DEADLINE, "the response", response)
        .await
        .unwrap_err();
    assert_eq!(
        error.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_ready_ok!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 2);
    assert_eq!(dialer.connections(), 2);
}

/// Promise 8: a user classifier replaces the default.
#[tokio::test(start_paused = true)]
async fn user_classifier_replaces_the_default() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let policy = ReconnectPolicy::builder()
        .backoff(exact())
        .classifier(Classifier::new(|e| e.to_string() == "desync"))
        .build()
        .unwrap();
    let mut svc = reconnect(&dialer, policy);
    assert_ready_ok!(poll_ready(&mut svc));
    let mut conn = dialer.take_conn(0);

    let response = svc.call("GET".to_string());
    let (_, reply) = next_request(&mut conn).await.unwrap();
    reply.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    assert!(within(DEADLINE, "the response", response).await.is_err());
    assert_ready_ok!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 1, "the user's classifier kept it");

    let response = svc.call("GET".to_string());
    let (_, reply) = next_request(&mut conn).await.unwrap();
    reply.send_error("desync");
    assert!(within(DEADLINE, "the response", response).await.is_err());
    assert_ready_ok!(poll_ready(&mut svc));
    assert_eq!(dialer.dials(), 2);
}

/// Promise 9: every dial hands the factory the target afresh, so a target
/// that resolves differently after a restart is followed.
#[tokio::test(start_paused = true)]
async fn every_dial_resolves_the_target_afresh() {
    /// A name whose address the test controls, resolved at each dial.
    #[derive(Clone, Debug)]
    struct Name(Arc<Mutex<&'static str>>);

    let dns = Name(Arc::new(Mutex::new("10.0.0.1")));
    let dialed = Arc::new(Mutex::new(Vec::new()));
    let log = dialed.clone();
    let make = service_fn(move |name: Name| {
        let addr = *name.0.lock().unwrap();
        log.lock().unwrap().push(addr);
        let (conn, handle) = tower_test::mock::pair::<(), ()>();
        drop(handle); // each connection dies at once
        async move { Ok::<_, BoxError>(conn) }
    });
    let mut svc = Spawn::new(Reconnect::new(make, dns.clone(), policy(exact())));

    assert_pending!(svc.poll_ready::<()>());
    *dns.0.lock().unwrap() = "10.0.0.2";
    advance(ms(100)).await;
    assert_pending!(svc.poll_ready::<()>());
    assert_eq!(*dialed.lock().unwrap(), ["10.0.0.1", "10.0.0.2"]);
}
