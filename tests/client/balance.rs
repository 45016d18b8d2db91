//! A balanced client's endpoints under tower's p2c, driven with scripted
//! factories and paused time, so every delay is exact.

#![cfg(feature = "balance")]

use support::scripted;

use std::collections::HashMap;
use std::time::Duration;

use scripted::{within, Dial, Dialer};
use tokio::time::{sleep_until, timeout, Instant};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_redial::error::Unavailable;
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How long a test waits on the client, a connection or a task before it
/// fails: far past every delay the tests expect.
const DEADLINE: Duration = Duration::from_secs(60);

/// A client balanced over the named endpoints, each dialed by its own
/// scripted dialer. Fixed 100 ms backoff, 1 s wait limit.
fn balanced(dialers: &HashMap<&'static str, Dialer>) -> Client<String, String> {
    let routes = dialers.clone();
    let make = service_fn(move |target: &'static str| routes[target].clone().call(target));
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(100)))
        .wait_limit(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut targets: Vec<_> = dialers.keys().copied().collect();
    targets.sort();
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(make)
        .balance(targets)
}

/// Sends one request, and fails the test if no answer comes.
async fn send(client: Client<String, String>, request: &str) -> Result<String, BoxError> {
    let answer = format!("the answer to {request}");
    within(DEADLINE, &answer, client.oneshot(request.to_string())).await
}

/// A down endpoint is never picked, however long it stays down (well past
/// the wait limit): every request goes to the live one and none fails.
#[tokio::test(start_paused = true)]
async fn down_endpoint_is_never_picked() {
    let up = Dialer::new([Dial::Connect]);
    let down = Dialer::new([]);
    let client = balanced(&HashMap::from([
        ("a-down", down.clone()),
        ("b-up", up.clone()),
    ]));

    let mut conn = None;
    for round in 0..50 {
        let request = tokio::spawn(send(client.clone(), "GET k"));
        let conn = match &mut conn {
            Some(conn) => conn,
            None => conn.insert(up.conn_within(0, DEADLINE).await),
        };
        let (_, reply) = within(DEADLINE, "the request", conn.next_request())
            .await
            .unwrap();
        reply.send_response(format!("VALUE {round}"));
        let reply = within(DEADLINE, "the request's task", request).await;
        assert_eq!(reply.unwrap().unwrap(), format!("VALUE {round}"));
        tokio::time::sleep(ms(100)).await;
    }
    assert_eq!(down.connections(), 0);
    assert!(
        down.dials() >= 45,
        "the down endpoint kept redialing: {}",
        down.dials()
    );
    assert_eq!(client.stats().fail_fast, 0);
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
}

/// A restarted endpoint is dialed at its next backoff step with no request
/// to drive it, and takes traffic again at once.
#[tokio::test(start_paused = true)]
async fn restarted_endpoint_gets_traffic_within_one_backoff_step() {
    let busy = Dialer::new([Dial::Connect]);
    let back = Dialer::new([]);
    let client = balanced(&HashMap::from([
        ("a-back", back.clone()),
        ("b-busy", busy.clone()),
    ]));
    let start = Instant::now();

    // b takes the traffic, and its requests stay outstanding, so its load grows.
    let _held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(send(client.clone(), "GET k")))
        .collect();
    let mut b = busy.conn_within(0, DEADLINE).await;
    let mut unanswered = Vec::new();
    for _ in 0..3 {
        let request = within(DEADLINE, "the request", b.next_request()).await;
        unanswered.push(request.unwrap());
    }

    // a comes back at 1050 ms; its next dial is due at 1100 ms, and is made
    // in the background: no request is sent meanwhile.
    sleep_until(start + ms(1050)).await;
    back.push([Dial::Connect]);
    let mut a = back.conn_within(0, DEADLINE).await;
    assert_eq!(Instant::now() - start, ms(1100), "at its next backoff step");
    assert_eq!(back.dials(), 12, "one dial per 100 ms step, from 0 ms");
    // The balancer picks an endpoint when it is polled, and the client's
    // task polls it in the background too: the pick made while only b was
    // up may serve one more request. The next one goes to a, the least
    // loaded.
    let requests: Vec<_> = (0..2)
        .map(|_| tokio::spawn(send(client.clone(), "GET k")))
        .collect();
    let (_, reply) = timeout(ms(1000), a.next_request())
        .await
        .expect("a takes traffic")
        .unwrap();
    reply.send_response("from a".to_string());
    drop(unanswered);
    let mut from_a = 0;
    for request in requests {
        if let Ok(Ok(Ok(reply))) = timeout(ms(1000), request).await {
            from_a += usize::from(reply == "from a");
        }
    }
    assert_eq!(from_a, 1);
}

/// With every endpoint down, requests wait exactly the wait limit, fail fast
/// with `Unavailable`, and flow again as soon as any endpoint returns.
#[tokio::test(start_paused = true)]
async fn all_endpoints_down_wait_then_fail_fast_then_resume() {
    let a = Dialer::new([]);
    let b = Dialer::new([]);
    let client = balanced(&HashMap::from([("a", a.clone()), ("b", b.clone())]));
    let start = Instant::now();

    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { (send(c, "GET k").await, Instant::now()) })
        })
        .collect();
    for task in waiting {
        let (result, at) = within(DEADLINE, "a waiting request", task).await.unwrap();
        assert_eq!(at - start, ms(1000));
        assert!(result.unwrap_err().is::<Unavailable>());
    }
    assert_eq!(client.state().borrow().phase(), Phase::FailFast);
    assert!(send(client.clone(), "GET k")
        .await
        .unwrap_err()
        .is::<Unavailable>());
    assert_eq!(client.stats().fail_fast, 5);

    // b returns: its next dial connects, and requests flow.
    b.push([Dial::Connect]);
    let mut served = false;
    within(DEADLINE, "traffic to resume", async {
        for _ in 0..10 {
            tokio::time::sleep(ms(100)).await;
            let mut request = tokio::spawn(send(client.clone(), "GET k"));
            tokio::select! {
                result = &mut request => {
                    assert!(result.unwrap().unwrap_err().is::<Unavailable>());
                }
                mut conn = b.conn(0) => {
                    let (_, reply) = conn.next_request().await.unwrap();
                    reply.send_response("back".to_string());
                    assert_eq!(request.await.unwrap().unwrap(), "back");
                    served = true;
                    break;
                }
            }
        }
    })
    .await;
    assert!(served, "traffic resumed");
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
    assert!(
        client.stats().dials >= 20,
        "both endpoints counted: {:?}",
        client.stats()
    );
}
