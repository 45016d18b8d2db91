//! Idle handles and the queue's slots (issue 11, point 3): a handle that gave
//! up waiting for room in a full queue, by load shedding or by a timeout,
//! must not keep new callers out once the queue has drained. Paused time, and
//! a factory whose dials are refused until the test brings the server back;
//! every await is bounded, so a starved caller fails the test instead of
//! hanging it. The `multiplexed` case uses the scripted factory, whose
//! connections the test holds back.

use support::scripted;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use scripted::{Dial, Dialer};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_redial::error::Overloaded;
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Bounds `future` by `limit` of paused time, failing the test with `what`.
async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: still waiting after {limit:?}"),
    }
}

/// A server the test takes down and brings back.
#[derive(Clone, Default)]
struct Server {
    up: Arc<AtomicBool>,
    dials: Arc<AtomicUsize>,
}

impl Server {
    fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }

    /// A client of a queue of 2, redialing every 100 ms, with a wait limit
    /// far beyond the outage so that queued requests ride it out.
    fn client(&self, load_shed: bool) -> Client<&'static str, &'static str> {
        let policy = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(ms(100)))
            .wait_limit(Duration::from_secs(30))
            .queue_capacity(2)
            .load_shed(load_shed)
            .seed(11)
            .build()
            .unwrap();
        let server = self.clone();
        let make = service_fn(move |_: &'static str| {
            let server = server.clone();
            async move {
                server.dials.fetch_add(1, Ordering::SeqCst);
                if !server.up.load(Ordering::SeqCst) {
                    return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
                }
                Ok(service_fn(|request: &'static str| async move {
                    Ok::<_, BoxError>(request)
                }))
            }
        });
        ServiceBuilder::new()
            .layer(ReconnectLayer::new(policy))
            .service(make)
            .client("db")
    }
}

/// Fills the queue during the outage: one request for the worker to hold
/// while it dials, then two in the queue. Returns the requests in flight.
async fn fill_queue(
    server: &Server,
    client: &Client<&'static str, &'static str>,
) -> Vec<JoinHandle<Result<&'static str, BoxError>>> {
    let mut in_flight = vec![tokio::spawn(client.clone().oneshot("first"))];
    within(ms(50), "the first dial", async {
        while server.dials() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for request in ["second", "third"] {
        in_flight.push(tokio::spawn(client.clone().oneshot(request)));
    }
    // Paused time: this sleep returns once every task has settled, well
    // before the next dial is due.
    tokio::time::sleep(ms(1)).await;
    assert!(in_flight.iter().all(|r| !r.is_finished()), "all in flight");
    in_flight
}

/// Brings the server back and waits for the queued requests to be served.
async fn recover(server: &Server, in_flight: Vec<JoinHandle<Result<&'static str, BoxError>>>) {
    server.up.store(true, Ordering::SeqCst);
    for (request, expected) in in_flight.into_iter().zip(["first", "second", "third"]) {
        let reply = within(ms(500), "a queued request", request).await.unwrap();
        assert_eq!(reply.unwrap(), expected);
    }
}

/// With load shedding, two handles refused by a full queue (one whose
/// request failed with `Overloaded`, one left ready-to-shed and never
/// called) hold no slot: once the queue drains, a new caller is served at
/// once while both handles are still alive.
#[tokio::test(start_paused = true)]
async fn shed_handles_do_not_starve_new_callers() {
    let server = Server::default();
    let client = server.client(true);
    let in_flight = fill_queue(&server, &client).await;

    let mut refused = client.clone();
    within(ms(10), "a shed ready", refused.ready())
        .await
        .unwrap();
    let error = within(ms(10), "a shed call", refused.call("refused"))
        .await
        .unwrap_err();
    assert!(error.is::<Overloaded>(), "{error}");

    let mut never_called = client.clone();
    within(ms(10), "a shed ready", never_called.ready())
        .await
        .unwrap();

    recover(&server, in_flight).await;

    for request in ["new", "again"] {
        let reply = within(ms(100), "a new caller", client.clone().oneshot(request)).await;
        assert_eq!(
            reply.map_err(|e| e.to_string()),
            Ok(request),
            "served, not shed"
        );
    }
    drop((refused, never_called));
}

/// Without load shedding, a caller that bounds the whole `oneshot` with a
/// timeout drops its handle with it, so giving up leaves no place behind:
/// once the queue drains, a new caller is served at once.
#[tokio::test(start_paused = true)]
async fn timed_out_oneshots_do_not_starve_new_callers() {
    let server = Server::default();
    let client = server.client(false);
    let in_flight = fill_queue(&server, &client).await;

    for request in ["gave up", "gave up too"] {
        let waited = timeout(ms(10), client.clone().oneshot(request)).await;
        assert!(waited.is_err(), "the full queue made {request:?} wait");
    }

    recover(&server, in_flight).await;

    let reply = within(ms(100), "a new caller", client.clone().oneshot("new")).await;
    assert_eq!(reply.unwrap(), "new");
}

/// Without load shedding, a handle whose `ready()` was abandoned by a timeout
/// keeps its place in the wait for a slot (tower's `Buffer` cannot tell an
/// abandoned wait from a slow one), and is handed the slot when one frees; a
/// new caller is served once such handles are dropped. This is the rule
/// documented under `Client`'s `# Backpressure`.
#[tokio::test(start_paused = true)]
async fn abandoned_ready_holds_its_place_until_dropped() {
    let server = Server::default();
    let client = server.client(false);
    let in_flight = fill_queue(&server, &client).await;

    let mut idle = [client.clone(), client.clone()];
    for handle in &mut idle {
        let waited = timeout(ms(10), handle.ready()).await;
        assert!(waited.is_err(), "the full queue made the handle wait");
    }

    recover(&server, in_flight).await;

    let mut new_caller = tokio::spawn(client.clone().oneshot("new"));
    let early = timeout(ms(100), &mut new_caller).await;
    assert!(
        early.is_err(),
        "the idle handles hold both slots while they live: {early:?}"
    );

    drop(idle);
    let reply = within(ms(100), "a new caller", new_caller).await.unwrap();
    assert_eq!(reply.unwrap(), "new");
}

/// A `multiplexed` handle that was waiting for room in the queue, and then
/// finds the connection back but busy, waits for the connection only: it
/// gives up the queue slot it was handed meanwhile, so an abandoned wait on
/// the connection holds no slot in the next outage.
#[tokio::test(start_paused = true)]
async fn a_handle_waiting_for_the_connection_holds_no_queue_slot() {
    let dialer = Dialer::new([Dial::Connect]);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(100)))
        .wait_limit(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(1))
        .queue_capacity(2)
        .seed(11)
        .build()
        .unwrap();
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(dialer.clone())
        .multiplexed("cache");

    // The first connection answers once, which proves it.
    let first = tokio::spawn(client.clone().oneshot("PING".to_string()));
    let mut conn = within(ms(100), "connection 0", dialer.conn(0)).await;
    let (_, send) = within(ms(100), "PING", conn.next_request()).await.unwrap();
    send.send_response("PONG".to_string());
    assert_eq!(
        within(ms(100), "PONG", first).await.unwrap().unwrap(),
        "PONG"
    );

    // It dies; the redial hangs till its connect timeout, then connects.
    // The worker holds one request, the queue two more, and `late` waits.
    dialer.push([Dial::Hang, Dial::Connect]);
    conn.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let queued: Vec<_> = ["P1", "P2", "P3"]
        .into_iter()
        .map(|r| tokio::spawn(client.clone().oneshot(r.to_string())))
        .collect();
    tokio::time::sleep(ms(1)).await;
    let mut late = client.clone();
    let mut ready = tokio_test::task::spawn(late.ready());
    assert!(ready.poll().is_pending(), "the queue is full");

    // The redial connects and serves the queue: `late` is handed a slot as
    // the queue drains. The answers prove the connection, which is then
    // published; it is busy when `late` looks again.
    let mut conn = within(ms(2000), "connection 1", dialer.conn(1)).await;
    for _ in 0..3 {
        let (_, send) = within(ms(100), "a queued request", conn.next_request())
            .await
            .unwrap();
        send.send_response("OK".to_string());
    }
    for request in queued {
        let reply = within(ms(100), "a queued reply", request).await.unwrap();
        assert_eq!(reply.unwrap(), "OK");
    }
    tokio::time::sleep(ms(1)).await;
    conn.allow(0);
    assert!(ready.is_woken(), "handed a slot");
    assert!(ready.poll().is_pending(), "waits for the busy connection");
    // Its caller gives up; the handle lives on.
    drop(ready);
    conn.allow(u64::MAX);

    // Next outage: the worker holds one request, and the queue has room for
    // two more.
    dialer.push([Dial::Hang]);
    conn.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let _held = tokio::spawn(client.clone().oneshot("Q1".to_string()));
    let _queued = tokio::spawn(client.clone().oneshot("Q2".to_string()));
    tokio::time::sleep(ms(1)).await;
    let mut third = client.clone();
    let mut ready = tokio_test::task::spawn(third.ready());
    assert!(ready.poll().is_ready(), "room for a second queued request");
    drop(late);
}
