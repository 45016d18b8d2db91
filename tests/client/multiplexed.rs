//! `MakeReconnect::multiplexed`: once a `Clone` connection has proved
//! healthy, handles call it directly instead of through the queue; when it
//! dies, requests go back through the queue while the worker redials. Paused
//! time and a scripted factory whose connections are tower-test mocks (which
//! are `Clone`, and whose clones share one connection).

use support::scripted;

use std::io;
use std::time::Duration;

use futures::FutureExt;
use scripted::{within, ConnHandle, Dial, Dialer};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::classify::Classifier;
use tower_redial::error::{NotSent, Unavailable};
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};
use tower_test::mock::SendResponse;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How long a test waits on the client, a connection or a task before it
/// fails: far past every delay the tests expect (2 s at most), and, for the
/// multi-thread test, which runs in real time, well before nextest calls a
/// test slow.
const DEADLINE: Duration = Duration::from_secs(10);

/// The next request on `conn`, or `None` once the client has closed it.
async fn next_request(conn: &mut ConnHandle) -> Option<(String, SendResponse<String>)> {
    within(DEADLINE, "the next request", conn.next_request()).await
}

/// Waits for a spawned task to end, and fails the test if it does not.
async fn join<T>(task: JoinHandle<T>) -> Result<T, JoinError> {
    within(DEADLINE, "the spawned task", task).await
}

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(100), 2.0, ms(1000)))
        .wait_limit(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn multiplexed(dialer: &Dialer) -> Client<String, String> {
    multiplexed_with(dialer, policy())
}

fn multiplexed_with(dialer: &Dialer, policy: ReconnectPolicy) -> Client<String, String> {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(dialer.clone())
        .multiplexed("cache")
}

fn reset() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionReset)
}

/// Where a request went, seen from the connection's end.
#[derive(Debug, PartialEq)]
enum Route {
    /// It reached the connection inside `call`, on the caller's task.
    Direct,
    /// It reached the connection later, from the worker task.
    Queued,
}

/// Readies a clone and calls it; answers the request with `reply` on `conn`.
/// Returns how the request travelled and the client's result.
async fn exchange(
    client: &Client<String, String>,
    conn: &mut ConnHandle,
    request: &str,
    reply: Result<&str, BoxError>,
) -> (Route, Result<String, BoxError>) {
    let mut handle = client.clone();
    within(DEADLINE, "poll_ready", handle.ready())
        .await
        .expect("ready");
    let response = tokio::spawn(handle.call(request.to_string()));
    // Nothing has yielded since `call`: only a direct call has reached the
    // connection by now.
    let (route, (got, send)) = match conn.next_request().now_or_never() {
        Some(next) => (Route::Direct, next.expect("a request")),
        None => (Route::Queued, next_request(conn).await.expect("a request")),
    };
    assert_eq!(got, request);
    match reply {
        Ok(reply) => send.send_response(reply.to_string()),
        Err(error) => send.send_error(error),
    }
    (route, join(response).await.expect("caller task"))
}

/// Makes connection 0 and proves it healthy; returns its handle. The first
/// request dials and proves the connection, which the client's task then
/// publishes: from the second on, requests are direct.
async fn connected(dialer: &Dialer, client: &Client<String, String>) -> ConnHandle {
    dialer.push([Dial::Connect]);
    let first = tokio::spawn(client.clone().oneshot("PING".to_string()));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (_, send) = next_request(&mut conn).await.unwrap();
    send.send_response("PONG".to_string());
    assert_eq!(join(first).await.unwrap().unwrap(), "PONG");
    // The answer proved the connection, and woke the client's task to
    // publish it: once that task has run, requests are direct.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let (route, result) = exchange(client, &mut conn, "PING", Ok("PONG")).await;
    assert_eq!(result.unwrap(), "PONG");
    // (On a multi-thread runtime the worker may deliver a queued request
    // before `exchange` looks, so the route is only told apart here.)
    if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
        assert_eq!(route, Route::Direct);
    }
    conn
}

/// Once the connection has answered, requests call it directly; before, they
/// go through the worker.
#[tokio::test(start_paused = true)]
async fn requests_call_a_proven_connection_directly() {
    let dialer = Dialer::new([]);
    let client = multiplexed(&dialer);
    let mut conn = connected(&dialer, &client).await;
    for n in 0..3 {
        let request = format!("GET {n}");
        let (route, result) = exchange(&client, &mut conn, &request, Ok("VALUE")).await;
        assert_eq!(route, Route::Direct);
        assert_eq!(result.unwrap(), "VALUE");
    }
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
    assert_eq!(dialer.dials(), 1);
}

/// `client` (not `multiplexed`) keeps every request on the queue.
#[tokio::test(start_paused = true)]
async fn plain_clients_always_queue() {
    let dialer = Dialer::new([Dial::Connect]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(dialer.clone())
        .client("db");
    let first = tokio::spawn(client.clone().oneshot("PING".to_string()));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (_, send) = next_request(&mut conn).await.unwrap();
    send.send_response("PONG".to_string());
    join(first).await.unwrap().unwrap();
    for _ in 0..3 {
        let (route, result) = exchange(&client, &mut conn, "GET", Ok("VALUE")).await;
        assert_eq!(route, Route::Queued);
        assert_eq!(result.unwrap(), "VALUE");
    }
}

/// A direct request that dies with a transport error fails (it may have been
/// sent, and is not re-sent by default); the next request goes through the
/// queue and the worker redials at once, as after any healthy connection.
#[tokio::test(start_paused = true)]
async fn a_dead_connection_sends_requests_back_through_the_queue() {
    let dialer = Dialer::new([]);
    let client = multiplexed(&dialer);
    let start = Instant::now();
    let mut conn = connected(&dialer, &client).await;
    dialer.push([Dial::Connect]);

    let (route, result) = exchange(&client, &mut conn, "INCR n", Err(reset().into())).await;
    assert_eq!(route, Route::Direct);
    let error = result.unwrap_err();
    assert_eq!(
        error.downcast_ref::<io::Error>().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset)
    );
    assert_eq!(client.stats().retries, 0, "at most once");

    // The client redials at once, with no request waiting; the next
    // request goes through the queue to the new connection.
    let mut conn1 = dialer.conn_within(1, DEADLINE).await;
    assert_eq!(dialer.dial_offsets(start), [ms(0), ms(0)]);
    let next = tokio::spawn(client.clone().oneshot("GET".to_string()));
    let (_, send) = next_request(&mut conn1).await.unwrap();
    send.send_response("VALUE".to_string());
    assert_eq!(join(next).await.unwrap().unwrap(), "VALUE");
    assert_eq!(client.stats().drops, 1);
    drop(conn);
}

/// A request the connection hands back as `NotSent` on the direct lane is
/// re-sent, once, on the next connection.
#[tokio::test(start_paused = true)]
async fn requests_handed_back_on_the_direct_lane_are_resent() {
    let dialer = Dialer::new([]);
    let client = multiplexed(&dialer);
    let mut conn = connected(&dialer, &client).await;
    dialer.push([Dial::Connect]);

    let mut handle = client.clone();
    within(DEADLINE, "poll_ready", handle.ready())
        .await
        .unwrap();
    let response = tokio::spawn(handle.call("SET k v".to_string()));
    let (request, send) = conn
        .next_request()
        .now_or_never()
        .expect("sent on the direct lane")
        .unwrap();
    send.send_error(NotSent::with_request(request, reset()));

    let mut conn1 = dialer.conn_within(1, DEADLINE).await;
    let (again, send) = next_request(&mut conn1).await.unwrap();
    assert_eq!(again, "SET k v");
    send.send_response("OK".to_string());
    assert_eq!(join(response).await.unwrap().unwrap(), "OK");
    assert_eq!(client.stats().retries, 1);
}

/// With `resend_if`, a direct request that may have been sent is re-sent on
/// the next connection when the predicate allows it, and only then.
#[tokio::test(start_paused = true)]
async fn possibly_sent_direct_requests_are_resent_only_when_opted_in() {
    let dialer = Dialer::new([]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()).resend_if(|r: &String| r.starts_with("GET")))
        .service(dialer.clone())
        .multiplexed("cache");
    let mut conn = connected(&dialer, &client).await;
    dialer.push([Dial::Connect]);

    // A GET dies in flight: re-sent on connection 1.
    let mut handle = client.clone();
    within(DEADLINE, "poll_ready", handle.ready())
        .await
        .unwrap();
    let get = tokio::spawn(handle.call("GET k".to_string()));
    let (_, send) = next_request(&mut conn).await.unwrap();
    send.send_error(reset());
    let mut conn1 = dialer.conn_within(1, DEADLINE).await;
    let (again, send) = next_request(&mut conn1).await.unwrap();
    assert_eq!(again, "GET k");
    send.send_response("VALUE".to_string());
    assert_eq!(join(get).await.unwrap().unwrap(), "VALUE");
    assert_eq!(client.stats().retries, 1);

    // The re-sent GET's answer proved connection 1, and it is published:
    // an INCR dies in flight there, and is not re-sent.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let (route, result) = exchange(&client, &mut conn1, "INCR n", Err(reset().into())).await;
    assert_eq!(route, Route::Direct);
    assert!(result.unwrap_err().is::<io::Error>());
    assert_eq!(client.stats().retries, 1);
}

/// A connection that fails `poll_ready` on a handle is reported dead: that
/// handle's request goes through the queue, which redials.
#[tokio::test(start_paused = true)]
async fn a_connection_failing_readiness_is_redialed() {
    let dialer = Dialer::new([]);
    let client = multiplexed(&dialer);
    let mut conn = connected(&dialer, &client).await;
    dialer.push([Dial::Connect]);
    let (route, _) = exchange(&client, &mut conn, "GET", Ok("VALUE")).await;
    assert_eq!(route, Route::Direct);

    conn.send_error(reset());
    let response = tokio::spawn(client.clone().oneshot("GET".to_string()));
    let mut conn1 = dialer.conn_within(1, DEADLINE).await;
    let (_, send) = next_request(&mut conn1).await.unwrap();
    send.send_response("VALUE".to_string());
    assert_eq!(join(response).await.unwrap().unwrap(), "VALUE");
    assert_eq!(dialer.dials(), 2);
    assert_eq!(client.stats().drops, 1);
}

/// After the connection dies and the server stays down, requests wait in the
/// queue and then fail fast at the wait limit, as with `client`.
#[tokio::test(start_paused = true)]
async fn an_outage_after_the_direct_lane_still_fails_fast_at_the_wait_limit() {
    let dialer = Dialer::new([]);
    let client = multiplexed(&dialer);
    let conn = connected(&dialer, &client).await;
    drop(conn); // the connection closes; every dial from now on is refused

    let start = Instant::now();
    let error = within(
        DEADLINE,
        "the answer",
        client.clone().oneshot("GET".to_string()),
    )
    .await
    .unwrap_err();
    assert_eq!(Instant::now() - start, ms(1000));
    assert!(error.is::<Unavailable>(), "{error}");
    assert_eq!(client.state().borrow().phase(), Phase::FailFast);
}

/// Dropping every handle ends the worker and drops every clone of the
/// connection, the published one included: the connection closes.
#[tokio::test(start_paused = true)]
async fn dropping_every_handle_closes_a_published_connection() {
    let dialer = Dialer::new([]);
    let client = multiplexed(&dialer);
    let mut conn = connected(&dialer, &client).await;
    let (route, _) = exchange(&client, &mut conn, "GET", Ok("VALUE")).await;
    assert_eq!(route, Route::Direct);

    drop(client);
    let closed = tokio::time::timeout(Duration::from_secs(60), conn.next_request()).await;
    assert!(
        matches!(closed, Ok(None)),
        "every clone of the connection is dropped"
    );
}

/// Many tasks on a multi-thread runtime share the connection directly; each
/// gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_the_connection() {
    let dialer = Dialer::new([]);
    let client = multiplexed(&dialer);
    let mut conn = connected(&dialer, &client).await;
    let answer = tokio::spawn(async move {
        while let Some((request, send)) = conn.next_request().await {
            send.send_response(format!("re: {request}"));
        }
    });
    let callers: Vec<_> = (0..16)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    let request = format!("{task}/{n}");
                    let reply = client.clone().oneshot(request.clone()).await.unwrap();
                    assert_eq!(reply, format!("re: {request}"));
                }
            })
        })
        .collect();
    for caller in callers {
        join(caller).await.unwrap();
    }
    assert_eq!(dialer.dials(), 1);
    drop(client);
    join(answer).await.unwrap();
}

/// A request that went through the queue and failed with a transport error
/// marks the connection dead at once: the lane is withdrawn, and a handle
/// that was waiting on the connection's readiness is woken and queues for
/// the redial instead of waiting on a dead connection.
#[tokio::test(start_paused = true)]
async fn a_queued_request_finding_the_connection_dead_wakes_direct_waiters() {
    let dialer = Dialer::new([Dial::Connect]);
    let client = multiplexed(&dialer);
    let first = tokio::spawn(client.clone().oneshot("PING".to_string()));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    let (_, send) = next_request(&mut conn).await.unwrap();
    // `queued` reserves its place in the queue before the lane is published.
    let mut queued = client.clone();
    within(DEADLINE, "poll_ready", queued.ready())
        .await
        .unwrap();
    send.send_response("PONG".to_string());
    join(first).await.unwrap().unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let (route, _) = exchange(&client, &mut conn, "PING", Ok("PONG")).await;
    assert_eq!(route, Route::Direct, "the lane is published");

    // The connection stops taking requests; a direct handle waits on it.
    let queued = tokio::spawn(queued.call("GET q".to_string()));
    let (_, reply_to_queued) = next_request(&mut conn).await.unwrap();
    conn.allow(0);
    let mut waiting = tokio_test::task::spawn(client.clone().oneshot("GET w".to_string()));
    assert!(waiting.poll().is_pending());

    // The queued request dies with a reset: the waiting handle is woken.
    dialer.push([Dial::Connect]);
    reply_to_queued.send_error(reset());
    assert!(join(queued).await.unwrap().unwrap_err().is::<io::Error>());
    assert!(waiting.is_woken(), "woken by the lane's withdrawal");
    assert!(waiting.poll().is_pending());
    let mut conn1 = dialer.conn_within(1, DEADLINE).await;
    let (request, send) = next_request(&mut conn1).await.unwrap();
    assert_eq!(request, "GET w", "sent on the new connection");
    send.send_response("VALUE".to_string());
    assert_eq!(
        within(DEADLINE, "the answer", waiting).await.unwrap(),
        "VALUE"
    );
    assert_eq!(client.stats().drops, 1);
}

/// A classifier that calls nothing dead keeps the connection on a `NotSent`:
/// the request handed back on the direct lane is re-sent on the same
/// connection, and the lane stays published.
#[tokio::test(start_paused = true)]
async fn a_classifier_can_keep_a_connection_that_hands_requests_back() {
    let dialer = Dialer::new([]);
    let policy = ReconnectPolicy::builder()
        .classifier(Classifier::new(|_| false))
        .build()
        .unwrap();
    let client = multiplexed_with(&dialer, policy);
    let mut conn = connected(&dialer, &client).await;

    let mut handle = client.clone();
    within(DEADLINE, "poll_ready", handle.ready())
        .await
        .unwrap();
    let response = tokio::spawn(handle.call("SET k v".to_string()));
    let (request, send) = next_request(&mut conn).await.unwrap();
    send.send_error(NotSent::with_request(request, io::Error::other("busy")));
    let (again, send) = next_request(&mut conn).await.unwrap();
    assert_eq!(again, "SET k v");
    send.send_response("OK".to_string());
    assert_eq!(join(response).await.unwrap().unwrap(), "OK");

    let (route, result) = exchange(&client, &mut conn, "GET k", Ok("v")).await;
    assert_eq!((route, result.unwrap()), (Route::Direct, "v".to_string()));
    let stats = client.stats();
    assert_eq!((stats.dials, stats.drops, stats.retries), (1, 0, 1));
}

/// A handle that waited for room in a full queue and then went direct gives
/// its place back: the queue keeps its whole capacity for the next outage.
#[tokio::test(start_paused = true)]
async fn a_handle_that_goes_direct_gives_back_its_place_in_the_queue() {
    let dialer = Dialer::new([]);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(100), 2.0, ms(1000)))
        .wait_limit(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(1))
        .queue_capacity(2)
        .build()
        .unwrap();
    let client = multiplexed_with(&dialer, policy);
    let mut conn = connected(&dialer, &client).await;

    // The connection dies; the redial hangs until its connect timeout, then
    // connects. The worker holds one request while it redials and the queue
    // holds two more; `late` waits for room.
    dialer.push([Dial::Hang, Dial::Connect]);
    conn.send_error(reset());
    let queued: Vec<_> = ["P1", "P2", "P3"]
        .into_iter()
        .map(|r| tokio::spawn(client.clone().oneshot(r.to_string())))
        .collect();
    tokio::task::yield_now().await;
    let mut late = client.clone();
    {
        let mut ready = tokio_test::task::spawn(late.ready());
        assert!(ready.poll().is_pending(), "the queue is full");
    }

    // The redial connects; the queued requests and one more prove the
    // connection and publish it.
    let mut conn1 = dialer.conn_within(1, DEADLINE).await;
    for _ in 0..3 {
        let (_, send) = next_request(&mut conn1).await.unwrap();
        send.send_response("OK".to_string());
    }
    for request in queued {
        join(request).await.unwrap().unwrap();
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let (route, _) = exchange(&client, &mut conn1, "PING", Ok("PONG")).await;
    assert_eq!(route, Route::Direct);

    // `late` goes direct now, giving up the place it was waiting for.
    within(DEADLINE, "poll_ready", late.ready()).await.unwrap();
    let late_call = late.call("GET".to_string());
    let (_, send) = conn1
        .next_request()
        .now_or_never()
        .expect("sent on the direct lane")
        .unwrap();
    send.send_response("VALUE".to_string());
    assert_eq!(
        within(DEADLINE, "the answer", late_call).await.unwrap(),
        "VALUE"
    );

    // Next outage: the worker holds one request and the queue has room for
    // two more.
    dialer.push([Dial::Hang]);
    conn1.send_error(reset());
    let _held = tokio::spawn(client.clone().oneshot("Q1".to_string()));
    let _queued = tokio::spawn(client.clone().oneshot("Q2".to_string()));
    tokio::task::yield_now().await;
    let mut third = client.clone();
    let mut ready = tokio_test::task::spawn(third.ready());
    assert!(ready.poll().is_ready(), "room for a second queued request");
    drop(late);
}
