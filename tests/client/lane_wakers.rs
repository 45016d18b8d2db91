//! The direct lane of a `multiplexed` client keeps its list of waiting
//! handles bounded: a handle waiting on the published connection's readiness
//! holds one waker there, given back when the handle is dropped or turns
//! ready, and a waiting handle is still woken when the lane changes. Paused
//! time; each dial makes a tower-test mock connection (which keeps one waker
//! per clone and drops it with the clone), and `allow(0)` makes it busy.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_redial::{BoxError, Client, ReconnectLayer, ReconnectPolicy};
use tower_test::mock;

/// The test's end of one dialed connection.
type Conn = mock::Handle<String, String>;

/// Awaits `future`, failing the test instead of hanging.
async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("timed out")
}

/// A waker that does nothing: who still holds it is told by
/// `Arc::strong_count`.
struct Counted;

impl Wake for Counted {
    fn wake(self: Arc<Self>) {}
}

/// How many clones of `wake` others hold, as wakers.
fn held(wake: &Arc<Counted>) -> usize {
    Arc::strong_count(wake) - 1
}

/// A multiplexed client whose every dial makes a mock connection and sends
/// its handle to the test; and the count of dials.
fn multiplexed() -> (
    Client<String, String>,
    mpsc::UnboundedReceiver<Conn>,
    Arc<AtomicUsize>,
) {
    let (made, conns) = mpsc::unbounded_channel();
    let dials = Arc::new(AtomicUsize::new(0));
    let counter = dials.clone();
    let dial = service_fn(move |_target: &'static str| {
        counter.fetch_add(1, Ordering::SeqCst);
        let (connection, handle) = mock::pair::<String, String>();
        let sent = made.send(handle);
        async move {
            sent.map_err(|_| "the test is gone")?;
            Ok::<_, BoxError>(connection)
        }
    });
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(ReconnectPolicy::default()))
        .service(dial)
        .multiplexed("cache");
    (client, conns, dials)
}

/// Readies a clone and calls it; answers the request on `conn`. Returns
/// whether the request reached the connection directly, inside `call`.
async fn exchange(client: &Client<String, String>, conn: &mut Conn, request: &str) -> bool {
    let mut handle = client.clone();
    bounded(handle.ready()).await.expect("ready");
    let response = tokio::spawn(handle.call(request.to_string()));
    // Nothing has yielded since `call`: only a direct call has reached the
    // connection by now.
    let (direct, (got, send)) = match conn.next_request().now_or_never() {
        Some(next) => (true, next.expect("a request")),
        None => (
            false,
            bounded(conn.next_request()).await.expect("a request"),
        ),
    };
    assert_eq!(got, request);
    send.send_response("VALUE".to_string());
    let reply = bounded(response).await.expect("caller task");
    assert_eq!(reply.expect("a reply"), "VALUE");
    direct
}

/// Dials connection 0, proves it with a first request, and waits until the
/// client's task has published it: a request then reaches it directly.
async fn published(
    client: &Client<String, String>,
    conns: &mut mpsc::UnboundedReceiver<Conn>,
) -> Conn {
    let first = tokio::spawn(client.clone().oneshot("PING".to_string()));
    let mut conn = bounded(conns.recv()).await.expect("a dial");
    let (_, send) = bounded(conn.next_request()).await.expect("a request");
    send.send_response("PONG".to_string());
    let reply = bounded(first).await.expect("caller task");
    assert_eq!(reply.expect("a reply"), "PONG");
    for _ in 0..10 {
        tokio::task::yield_now().await;
        if exchange(client, &mut conn, "GET").await {
            return conn;
        }
    }
    panic!("the proven connection was never published");
}

/// Polls `future` once with a waker made from `wake`.
fn poll_with<F: Future + Unpin>(future: &mut F, wake: &Arc<Counted>) -> Poll<F::Output> {
    let waker = Waker::from(wake.clone());
    Pin::new(future).poll(&mut Context::from_waker(&waker))
}

/// 10,000 handles dropped while waiting on a busy published connection
/// leave none of their wakers behind in the lane.
#[tokio::test(start_paused = true)]
async fn dropped_waiting_handles_give_back_their_wakers() {
    let (client, mut conns, dials) = multiplexed();
    let mut conn = published(&client, &mut conns).await;
    conn.allow(0);

    let wakes: Vec<_> = (0..10_000).map(|_| Arc::new(Counted)).collect();
    let waiting: Vec<_> = wakes
        .iter()
        .map(|wake| {
            let mut ready = client.clone().ready_oneshot();
            assert!(
                poll_with(&mut ready, wake).is_pending(),
                "the connection is busy"
            );
            ready
        })
        .collect();
    // Each waker is held once by the connection and once by the lane.
    assert!(wakes.iter().all(|wake| held(wake) == 2));

    drop(waiting);
    let left = wakes.iter().filter(|wake| held(wake) > 0).count();
    assert_eq!(
        left, 0,
        "wakers still held after their handles were dropped"
    );

    // The connection stays published, and serves once it has room again.
    conn.allow(1);
    assert!(exchange(&client, &mut conn, "GET").await, "still direct");
    assert_eq!(dials.load(Ordering::SeqCst), 1);
}

/// A live handle holds at most one waker in the lane: polled again with new
/// wakers it keeps only the latest, and it gives that back once it turns
/// ready.
#[tokio::test(start_paused = true)]
async fn a_waiting_handle_holds_one_waker_and_gives_it_back_when_ready() {
    let (client, mut conns, _) = multiplexed();
    let mut conn = published(&client, &mut conns).await;
    conn.allow(0);

    let mut handle = client.clone();
    let wakes: Vec<_> = (0..100).map(|_| Arc::new(Counted)).collect();
    for wake in &wakes {
        let mut ready = handle.ready();
        assert!(
            poll_with(&mut ready, wake).is_pending(),
            "the connection is busy"
        );
    }
    let (latest, earlier) = wakes.split_last().expect("wakers");
    assert!(
        earlier.iter().all(|wake| held(wake) == 0),
        "earlier wakers given back"
    );
    assert_eq!(held(latest), 2, "by the connection and by the lane");

    // The connection has room: it wakes and forgets the handle, and the
    // handle, ready now, gives back its place in the lane.
    conn.allow(1);
    assert_eq!(held(latest), 1, "by the lane only");
    let mut ready = handle.ready();
    assert!(
        poll_with(&mut ready, latest).is_ready(),
        "room for one request"
    );
    assert_eq!(held(latest), 0, "no waker held once ready");

    let response = tokio::spawn(handle.call("GET".to_string()));
    let (_, send) = conn
        .next_request()
        .now_or_never()
        .expect("sent on the direct lane")
        .expect("a request");
    send.send_response("VALUE".to_string());
    let reply = bounded(response).await.expect("caller task");
    assert_eq!(reply.expect("a reply"), "VALUE");
}

/// A handle waiting on a busy published connection is woken when a response
/// finds the connection dead and the lane is withdrawn, though the
/// connection itself never wakes it; its request then goes to the redialed
/// connection.
#[tokio::test(start_paused = true)]
async fn a_waiting_handle_is_woken_when_the_lane_is_withdrawn() {
    let (client, mut conns, dials) = multiplexed();
    let mut conn = published(&client, &mut conns).await;

    let mut in_flight = client.clone();
    bounded(in_flight.ready()).await.expect("ready");
    let response = tokio::spawn(in_flight.call("INCR n".to_string()));
    let (_, reply_to_in_flight) = conn
        .next_request()
        .now_or_never()
        .expect("sent on the direct lane")
        .expect("a request");

    // The connection stops taking requests; a handle waits on it.
    conn.allow(0);
    let mut waiting = tokio_test::task::spawn(client.clone().oneshot("GET w".to_string()));
    assert!(waiting.poll().is_pending(), "the connection is busy");
    assert!(!waiting.is_woken());

    // The request in flight dies with a reset, which the default classifier
    // calls dead: the lane is withdrawn and the waiting handle woken.
    reply_to_in_flight.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let error = bounded(response)
        .await
        .expect("caller task")
        .expect_err("the connection was reset");
    assert_eq!(
        error.downcast_ref::<io::Error>().map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset)
    );
    assert!(waiting.is_woken(), "woken by the lane's withdrawal");

    // The woken handle queues for the redial instead of waiting on the dead
    // connection.
    assert!(waiting.poll().is_pending());
    let mut conn1 = bounded(conns.recv()).await.expect("a redial");
    let (request, send) = bounded(conn1.next_request()).await.expect("a request");
    assert_eq!(request, "GET w", "sent on the new connection");
    send.send_response("VALUE".to_string());
    assert_eq!(bounded(waiting).await.expect("a reply"), "VALUE");
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    drop(conn);
}

/// On a multi-thread runtime, none of many tasks waiting on a busy published
/// connection is left waiting when the connection dies: whether each was
/// waiting or still on its way when the lane was withdrawn, every request
/// is served by the redialed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_waiting_task_is_left_behind_when_the_lane_is_withdrawn() {
    const TASKS: usize = 200;
    let (client, mut conns, dials) = multiplexed();
    let mut conn = published(&client, &mut conns).await;

    let mut in_flight = client.clone();
    bounded(in_flight.ready()).await.expect("ready");
    let response = tokio::spawn(in_flight.call("INCR n".to_string()));
    let (_, reply_to_in_flight) = bounded(conn.next_request()).await.expect("a request");
    conn.allow(0);
    let waiting: Vec<_> = (0..TASKS)
        .map(|n| tokio::spawn(client.clone().oneshot(format!("GET {n}"))))
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }

    reply_to_in_flight.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let error = bounded(response).await.expect("caller task");
    assert!(error.is_err(), "the connection was reset");
    let mut conn1 = bounded(conns.recv()).await.expect("a redial");
    let answer = tokio::spawn(async move {
        while let Some((request, send)) = conn1.next_request().await {
            send.send_response(format!("re: {request}"));
        }
    });
    for (n, task) in waiting.into_iter().enumerate() {
        let reply = bounded(task).await.expect("caller task");
        assert_eq!(reply.expect("a reply"), format!("re: GET {n}"));
    }
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    // Dropping every handle ends the worker and the connection.
    drop((client, in_flight));
    bounded(answer).await.expect("answering task");
    drop(conn);
}
