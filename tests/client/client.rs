//! The assembled `Client` (Retry + Buffer + Reconnect): the queue, fail-fast,
//! safe re-sends, shutdown and logs, with a scripted factory and paused time.

use support::scripted;

use std::io;
use std::time::Duration;

use scripted::{within, ConnHandle, Dial, Dialer};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_test::assert_pending;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::{Closed, NotSent, Unavailable};
use tower_redial::retry::ResendPolicy;
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};
use tower_test::mock::SendResponse;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How long a test waits on the client, a connection or a task before it
/// fails: far past every delay the tests expect.
const DEADLINE: Duration = Duration::from_secs(60);

fn policy() -> tower_redial::ReconnectPolicyBuilder {
    ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(100), 2.0, ms(1000)))
        .wait_limit(Duration::from_secs(1))
}

fn client(dialer: &Dialer, policy: ReconnectPolicy) -> Client<String, String> {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(dialer.clone())
        .client("db")
}

/// Sends one request, and fails the test if no answer comes.
async fn send(client: Client<String, String>, request: &str) -> Result<String, BoxError> {
    let answer = format!("the answer to {request}");
    within(DEADLINE, &answer, client.oneshot(request.to_string())).await
}

/// The next request on `conn`, or `None` once the client has closed it.
async fn next_request(conn: &mut ConnHandle) -> Option<(String, SendResponse<String>)> {
    within(DEADLINE, "the next request", conn.next_request()).await
}

/// Waits for a spawned task to end, and fails the test if it does not.
async fn join<T>(task: JoinHandle<T>) -> Result<T, tokio::task::JoinError> {
    within(DEADLINE, "the spawned task", task).await
}

fn root_io_kind(error: &BoxError) -> Option<io::ErrorKind> {
    tower_redial::classify::io_error_kind(&**error)
}

/// The client handle is cheap to share: `Clone + Send + Sync`.
#[test]
fn client_is_clone_send_sync() {
    fn assert<T: Clone + Send + Sync + 'static>() {}
    assert::<Client<String, String>>();
    assert::<Client<&'static str, Vec<u8>>>();
}

/// (f) Requests queue while the connection is down, all fail fast with
/// `Unavailable` at the wait limit (source: the last dial error), new ones
/// fail at once, and requests flow again once a dial succeeds.
#[tokio::test(start_paused = true)]
async fn wait_limit_fails_fast_then_recovers() {
    let dialer = Dialer::new([]);
    let client = client(&dialer, policy().build().unwrap());
    let start = Instant::now();

    let queued: Vec<_> = (0..3)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { (send(c, "GET").await, Instant::now()) })
        })
        .collect();
    for task in queued {
        let (result, at) = join(task).await.unwrap();
        assert_eq!(at - start, ms(1000), "failed exactly at the wait limit");
        let error = result.unwrap_err();
        let unavailable = error.downcast_ref::<Unavailable>().expect("Unavailable");
        assert_eq!(unavailable.down_for(), ms(1000));
        let source = std::error::Error::source(unavailable).unwrap();
        assert_eq!(
            source.downcast_ref::<io::Error>().unwrap().kind(),
            io::ErrorKind::ConnectionRefused
        );
    }
    assert_eq!(client.state().borrow().phase(), Phase::FailFast);

    // A new request fails at once.
    let before = Instant::now();
    let error = send(client.clone(), "GET").await.unwrap_err();
    assert!(error.is::<Unavailable>());
    assert_eq!(Instant::now(), before);
    assert_eq!(client.stats().fail_fast, 4);

    // The server comes back: the next dial is due at 1.5 s.
    dialer.push([Dial::Connect]);
    sleep_until(start + ms(1500)).await;
    let request = tokio::spawn(send(client.clone(), "GET"));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (_, reply) = next_request(&mut conn).await.unwrap();
    reply.send_response("VALUE 1".to_string());
    assert_eq!(join(request).await.unwrap().unwrap(), "VALUE 1");
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
    assert_eq!(dialer.dials(), 5);
}

/// Requests issued during a short outage wait and then succeed; none fails.
#[tokio::test(start_paused = true)]
async fn short_outage_is_ridden_through() {
    let dialer = Dialer::new([Dial::Refuse, Dial::Refuse, Dial::Connect]);
    let client = client(&dialer, policy().build().unwrap());
    let start = Instant::now();

    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(send(client.clone(), "GET")))
        .collect();
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    assert_eq!(Instant::now() - start, ms(300), "dials at 0, 100, 300 ms");
    for _ in 0..5 {
        let (_, reply) = next_request(&mut conn).await.unwrap();
        reply.send_response("OK".to_string());
    }
    for request in requests {
        assert_eq!(join(request).await.unwrap().unwrap(), "OK");
    }
    assert_eq!(client.stats().fail_fast, 0);
}

/// The queue is bounded: once full, `poll_ready` waits for room.
#[tokio::test(start_paused = true)]
async fn full_queue_applies_backpressure() {
    let dialer = Dialer::new([Dial::Hang]);
    let client = client(&dialer, policy().queue_capacity(2).build().unwrap());

    let _queued: Vec<_> = (0..3)
        .map(|_| tokio::spawn(send(client.clone(), "GET")))
        .collect();
    tokio::task::yield_now().await;
    let mut next = tokio_test::task::spawn(client.clone().ready_oneshot());
    assert_pending!(next.poll());
}

/// With load shedding on, a full queue refuses the request at once with the
/// typed `Overloaded` error instead of waiting; it never reaches a connection.
#[tokio::test(start_paused = true)]
async fn full_queue_sheds_load_when_asked() {
    let dialer = Dialer::new([Dial::Hang]);
    let client = client(
        &dialer,
        policy().queue_capacity(2).load_shed(true).build().unwrap(),
    );

    // One request for the worker to hold while it dials...
    let first = tokio::spawn(send(client.clone(), "GET"));
    within(DEADLINE, "the first dial", async {
        while dialer.dials() == 0 {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
    // ...and two to fill the queue.
    let queued: Vec<_> = (0..2)
        .map(|_| tokio::spawn(send(client.clone(), "GET")))
        .collect();
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    assert!(!first.is_finished() && queued.iter().all(|q| !q.is_finished()));
    let before = Instant::now();
    let error = send(client.clone(), "GET").await.unwrap_err();
    assert!(error.is::<tower_redial::error::Overloaded>(), "{error}");
    assert_eq!(Instant::now(), before, "refused at once");
    assert_eq!(dialer.dials(), 1);
}

/// (g) Past the attempt limit, requests and `poll_ready` fail with our
/// `Closed`, not tower's buffer errors.
#[tokio::test(start_paused = true)]
async fn attempt_limit_closes_the_client() {
    let dialer = Dialer::new([]);
    let policy = policy()
        .backoff(Backoff::fixed(ms(100)).max_attempts(2))
        .build()
        .unwrap();
    let client = client(&dialer, policy);

    let error = send(client.clone(), "GET").await.unwrap_err();
    let closed = error.downcast_ref::<Closed>().expect("Closed");
    assert_eq!(closed.attempts(), 2);
    let error = within(DEADLINE, "poll_ready", client.clone().ready())
        .await
        .unwrap_err();
    assert!(error.is::<Closed>(), "{error}");
    assert_eq!(dialer.dials(), 2);
    assert_eq!(client.state().borrow().phase(), Phase::Closed);
}

/// Promise 7: a request the connection hands back unsent is re-sent on the
/// next connection, exactly once, without being `Clone`.
#[tokio::test(start_paused = true)]
async fn not_sent_requests_are_resent_on_the_next_connection() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let client = client(&dialer, policy().build().unwrap());

    let request = tokio::spawn(send(client.clone(), "INCR hits"));
    let mut first = dialer.conn_within(0, DEADLINE).await;
    let (req, reply) = next_request(&mut first).await.unwrap();
    reply.send_error(NotSent::with_request(
        req,
        io::Error::from(io::ErrorKind::BrokenPipe),
    ));

    let mut second = dialer.conn_within(1, DEADLINE).await;
    let (req, reply) = next_request(&mut second).await.unwrap();
    assert_eq!(req, "INCR hits");
    reply.send_response("INT 1".to_string());
    assert_eq!(join(request).await.unwrap().unwrap(), "INT 1");
    assert_eq!(client.stats().retries, 1);
    drop(first);
}

/// Promise 7: a request that may have reached the peer is not re-sent by
/// default; the caller gets the transport error.
#[tokio::test(start_paused = true)]
async fn possibly_sent_requests_are_not_resent_by_default() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let client = client(&dialer, policy().build().unwrap());

    let request = tokio::spawn(send(client.clone(), "INCR hits"));
    let mut first = dialer.conn_within(0, DEADLINE).await;
    let (_, reply) = next_request(&mut first).await.unwrap();
    reply.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let error = join(request).await.unwrap().unwrap_err();
    assert_eq!(root_io_kind(&error), Some(io::ErrorKind::ConnectionReset));
    assert_eq!(client.stats().retries, 0);

    // The next request goes to a new connection, and it is not the INCR.
    let request = tokio::spawn(send(client.clone(), "GET hits"));
    let mut second = dialer.conn_within(1, DEADLINE).await;
    let (req, reply) = next_request(&mut second).await.unwrap();
    assert_eq!(req, "GET hits");
    reply.send_response("VALUE 1".to_string());
    assert_eq!(join(request).await.unwrap().unwrap(), "VALUE 1");
}

/// Promise 7: with `resend_if`, idempotent requests are re-sent after a
/// transport error; others still are not.
#[tokio::test(start_paused = true)]
async fn idempotent_requests_are_resent_when_opted_in() {
    let dialer = Dialer::new([Dial::Connect; 3]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(
            ReconnectLayer::new(policy().build().unwrap())
                .resend_if(|req: &String| req.starts_with("GET")),
        )
        .service(dialer.clone())
        .client("db");

    let request = tokio::spawn(send(client.clone(), "GET hits"));
    let mut first = dialer.conn_within(0, DEADLINE).await;
    let (_, reply) = next_request(&mut first).await.unwrap();
    reply.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let mut second = dialer.conn_within(1, DEADLINE).await;
    let (req, reply) = next_request(&mut second).await.unwrap();
    assert_eq!(req, "GET hits");
    reply.send_response("VALUE 7".to_string());
    assert_eq!(join(request).await.unwrap().unwrap(), "VALUE 7");
    assert_eq!(client.stats().retries, 1);

    let request = tokio::spawn(send(client.clone(), "INCR hits"));
    let (_, reply) = next_request(&mut second).await.unwrap();
    reply.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    assert!(join(request).await.unwrap().is_err());
    assert_eq!(client.stats().retries, 1, "INCR was not re-sent");
}

/// Re-sends only what it copies; here, it copies `GET`s and marks the copy.
#[derive(Clone)]
struct MarkedGets;

impl ResendPolicy<String> for MarkedGets {
    fn copy_if_idempotent(&self, request: &String) -> Option<String> {
        request
            .starts_with("GET")
            .then(|| format!("{request} (again)"))
    }
}

/// A `ResendPolicy` of one's own, installed with `resend_with`, decides
/// what is sent again, and its copy is what goes: a `GET` caught by a reset
/// is re-sent as the policy's copy; an `INCR` is not re-sent.
#[tokio::test(start_paused = true)]
async fn a_resend_policy_of_ones_own_decides_what_is_sent_again() {
    let dialer = Dialer::new([Dial::Connect; 3]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy().build().unwrap()).resend_with(MarkedGets))
        .service(dialer.clone())
        .client("db");

    let request = tokio::spawn(send(client.clone(), "GET hits"));
    let mut first = dialer.conn_within(0, DEADLINE).await;
    let (req, reply) = next_request(&mut first).await.unwrap();
    assert_eq!(req, "GET hits", "the original goes first");
    reply.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let mut second = dialer.conn_within(1, DEADLINE).await;
    let (req, reply) = next_request(&mut second).await.unwrap();
    assert_eq!(req, "GET hits (again)", "the policy's copy is re-sent");
    reply.send_response("VALUE 7".to_string());
    assert_eq!(join(request).await.unwrap().unwrap(), "VALUE 7");

    let request = tokio::spawn(send(client.clone(), "INCR hits"));
    let (_, reply) = next_request(&mut second).await.unwrap();
    reply.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    assert!(join(request).await.unwrap().is_err());
    assert_eq!(client.stats().retries, 1, "INCR was not re-sent");
}

/// Promise 7: re-sends stop after the attempt limit (3 sends in all).
#[tokio::test(start_paused = true)]
async fn resends_are_bounded_by_attempts() {
    let dialer = Dialer::new([Dial::Connect; 5]);
    let client = client(&dialer, policy().build().unwrap());

    let request = tokio::spawn(send(client.clone(), "INCR hits"));
    for id in 0..3 {
        let mut conn = dialer.conn_within(id, DEADLINE).await;
        let (req, reply) = next_request(&mut conn).await.unwrap();
        reply.send_error(NotSent::with_request(
            req,
            io::Error::from(io::ErrorKind::BrokenPipe),
        ));
    }
    let error = join(request).await.unwrap().unwrap_err();
    assert!(error.is::<NotSent>());
    assert_eq!(client.stats().retries, 2);
}

/// Promise 7: re-sends stop when the retry budget is spent.
#[tokio::test(start_paused = true)]
async fn resends_are_bounded_by_the_budget() {
    let dialer = Dialer::new([Dial::Connect; 2]);
    let policy = policy()
        .retry_budget(Duration::from_secs(1), 0, 0.0)
        .build()
        .unwrap();
    let client = client(&dialer, policy);

    let request = tokio::spawn(send(client.clone(), "INCR hits"));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (req, reply) = next_request(&mut conn).await.unwrap();
    reply.send_error(NotSent::with_request(
        req,
        io::Error::from(io::ErrorKind::BrokenPipe),
    ));
    assert!(join(request).await.unwrap().unwrap_err().is::<NotSent>());
    assert_eq!(client.stats().retries, 0);
}

/// (j) Dropping every handle ends the worker task and closes the connection.
#[tokio::test(start_paused = true)]
async fn dropping_every_handle_ends_tasks_and_closes_the_connection() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let dialer = Dialer::new([Dial::Connect]);
    let client = client(&dialer, policy().build().unwrap());
    assert_eq!(metrics.num_alive_tasks(), baseline + 1, "one worker task");

    let request = tokio::spawn(send(client.clone(), "PING"));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (_, reply) = next_request(&mut conn).await.unwrap();
    reply.send_response("PONG".to_string());
    join(request).await.unwrap().unwrap();

    let mut state = client.state();
    let other = client.clone();
    drop(client);
    drop(other);
    assert!(next_request(&mut conn).await.is_none(), "connection closed");
    within(DEADLINE, "the client to close", async {
        while state.changed().await.is_ok() {}
    })
    .await;
    assert_eq!(state.borrow().phase(), Phase::Closed);
    within(DEADLINE, "the client's task to end", async {
        while metrics.num_alive_tasks() > baseline {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
}

/// (j) The same holds mid-outage, with a request whose caller gave up still
/// in the worker's hands: everything ends within one backoff delay.
#[tokio::test(start_paused = true)]
async fn dropping_handles_mid_outage_ends_tasks() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let dialer = Dialer::new([]);
    let client = client(&dialer, policy().build().unwrap());
    let mut state = client.state();

    let caller = tokio::spawn(send(client.clone(), "GET"));
    let backoff = state.wait_for(|s| s.phase() == Phase::Backoff);
    within(DEADLINE, "the backoff", backoff).await.unwrap();
    caller.abort();
    drop(client);
    let start = Instant::now();
    within(DEADLINE, "the client to close", async {
        while state.changed().await.is_ok() {}
    })
    .await;
    assert!(Instant::now() - start <= ms(100));
    within(DEADLINE, "the client's task to end", async {
        while metrics.num_alive_tasks() > baseline {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
    assert_eq!(dialer.dials(), 1);
}

/// A request that failed fast is the client's answer, never re-sent, even
/// when re-sends are opted in to: the `Unavailable` carries the refused dial
/// in its sources, which alone would look like a dead connection.
#[tokio::test(start_paused = true)]
async fn failed_fast_requests_are_not_resent_even_when_opted_in() {
    let dialer = Dialer::new([]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy().build().unwrap()).resend_if(|_: &String| true))
        .service(dialer.clone())
        .client("db");
    let error = send(client.clone(), "GET").await.unwrap_err();
    assert!(error.is::<Unavailable>(), "{error}");
    assert_eq!(root_io_kind(&error), Some(io::ErrorKind::ConnectionRefused));
    let again = send(client.clone(), "GET").await.unwrap_err();
    assert!(again.is::<Unavailable>(), "{again}");
    let stats = client.stats();
    assert_eq!((stats.retries, stats.fail_fast), (0, 2));
}
