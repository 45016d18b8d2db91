//! The client heals on its own: with no requests at all, it redials on its
//! schedule, notices an idle connection's death, passes its wait limit, and
//! is ready for the first request after a quiet outage. Scripted factories
//! and paused time, so every instant is exact; every await on the crate has
//! a deadline, so a regression fails instead of hanging.

use support::scripted;

use std::io;
use std::time::Duration;

use scripted::{within, ConnHandle, Dial, Dialer};
use tokio::time::{sleep_until, timeout, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::error::{ConnectTimeout, Unavailable};
use tower_redial::state::{Phase, Snapshot};
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Waits for the state watch to show a snapshot for which `f` holds.
async fn wait_for(client: &Client<String, String>, what: &str, f: impl FnMut(&Snapshot) -> bool) {
    let mut state = client.state();
    within(secs(600), what, state.wait_for(f))
        .await
        .expect("the state watch is open");
}

/// Fixed 400 ms backoff, 1 s wait limit.
fn policy() -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(400)))
        .wait_limit(secs(1))
        .build()
        .unwrap()
}

fn layer(policy: ReconnectPolicy) -> ReconnectLayer {
    ReconnectLayer::new(policy)
}

/// Sends one request and answers it on `conn`: the connection is proven.
async fn exchange(client: &Client<String, String>, conn: &mut ConnHandle) {
    let request = tokio::spawn(client.clone().oneshot("PING".to_string()));
    let (_, reply) = within(
        secs(10),
        "a request reaches the connection",
        conn.next_request(),
    )
    .await
    .expect("the connection is open");
    reply.send_response("PONG".to_string());
    let reply = within(secs(10), "the reply", request).await.unwrap();
    assert_eq!(reply.unwrap(), "PONG");
}

/// Sends the first request, which dials connection 0, and answers it there:
/// the connection is made and proven. Returns the test's end of it.
async fn first_connection(dialer: &Dialer, client: &Client<String, String>) -> ConnHandle {
    let request = tokio::spawn(client.clone().oneshot("PING".to_string()));
    let mut conn = within(secs(10), "the first dial", dialer.conn(0)).await;
    let (_, reply) = within(secs(10), "the first request", conn.next_request())
        .await
        .expect("the connection is open");
    reply.send_response("PONG".to_string());
    let reply = within(secs(10), "the first reply", request).await.unwrap();
    assert_eq!(reply.unwrap(), "PONG");
    conn
}

/// The ways to bind a client to a scripted factory.
enum Kind {
    Client,
    Multiplexed,
}

fn bind(kind: Kind, dialer: &Dialer, policy: ReconnectPolicy) -> Client<String, String> {
    let maker = ServiceBuilder::new()
        .layer(layer(policy))
        .service(dialer.clone());
    match kind {
        Kind::Client => maker.client("db"),
        Kind::Multiplexed => maker.multiplexed("db"),
    }
}

/// The quiet outage: the connection dies at `t0` with no request in flight,
/// the server refuses until `t0 + 3.1 s`, and no request is sent from the
/// death on. The client redials every 400 ms on its own, passes its wait
/// limit into fail-fast, and is `Ready` again at `t0 + 3.2 s`, the first
/// dial after the server's return; the first request then succeeds.
async fn quiet_outage(kind: Kind) {
    let dialer = Dialer::new([Dial::Connect]);
    let client = bind(kind, &dialer, policy());
    let _conn0 = first_connection(&dialer, &client).await;

    let t0 = Instant::now();
    let back = t0 + ms(3100);
    dialer.down_until(back);
    dialer.hang_up(0);

    wait_for(&client, "fail-fast with no traffic", |s| {
        s.phase() == Phase::FailFast
    })
    .await;
    assert_eq!(
        Instant::now() - t0,
        secs(1),
        "the wait limit passed between dials"
    );
    wait_for(&client, "ready with no traffic", |s| {
        s.phase() == Phase::Ready
    })
    .await;
    let ready = Instant::now();
    assert_eq!(ready - t0, ms(3200));
    println!(
        "quiet outage: Ready {:?} after the server's return",
        ready - back
    );
    assert!(
        ready - back <= ms(400),
        "within one backoff step of the return"
    );

    let stats = client.stats();
    assert_eq!(stats.drops, 1);
    assert_eq!(
        stats.dials,
        1 + 9,
        "dials at 0, 0.4, ... 3.2 s after the death"
    );
    assert_eq!(stats.fail_fast, 0, "no request was sent");
    let mut conn1 = dialer.take_conn(1);
    assert!(
        futures::FutureExt::now_or_never(conn1.next_request()).is_none(),
        "no request reached the new connection"
    );
    exchange(&client, &mut conn1).await;
}

/// A quiet outage heals on its own, for a client.
#[tokio::test(start_paused = true)]
async fn quiet_outage_heals_without_traffic() {
    quiet_outage(Kind::Client).await;
}

/// A quiet outage heals on its own, for a multiplexed client.
#[tokio::test(start_paused = true)]
async fn quiet_outage_heals_without_traffic_multiplexed() {
    quiet_outage(Kind::Multiplexed).await;
}

/// A balanced client whose endpoints are all down fails fast; with no
/// request sent, an endpoint's return is noticed at its next backoff step
/// and the client is `Ready`; the first request then succeeds.
#[cfg(feature = "balance")]
#[tokio::test(start_paused = true)]
async fn quiet_outage_heals_without_traffic_balanced() {
    use std::collections::HashMap;
    use tower::service_fn;

    let a = Dialer::new([]);
    let b = Dialer::new([]);
    let routes = HashMap::from([("a", a.clone()), ("b", b.clone())]);
    let make = service_fn(move |target: &'static str| routes[target].clone().call(target));
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(layer(policy()))
        .service(make)
        .balance(["a", "b"]);
    let start = Instant::now();
    let back = start + ms(3100);
    b.down_until(back);

    // One request to start the client; it fails fast at the wait limit.
    let first = within(
        secs(10),
        "the first request",
        client.clone().oneshot("GET".to_string()),
    )
    .await;
    assert!(first.unwrap_err().is::<Unavailable>());
    assert_eq!(client.state().borrow().phase(), Phase::FailFast);

    wait_for(&client, "ready with no traffic", |s| {
        s.phase() == Phase::Ready
    })
    .await;
    assert_eq!(
        Instant::now() - start,
        ms(3200),
        "b's first dial after its return"
    );
    assert!(b.dials() >= 9, "b redialed on its own: {}", b.dials());
    assert!(a.dials() >= 9, "a redials on its own too: {}", a.dials());

    let mut conn = b.take_conn(0);
    exchange(&client, &mut conn).await;
}

/// A healthy idle connection closed by the peer: the drop is counted and
/// the redial made at once, with no request sent; the next request succeeds
/// on the new connection.
#[tokio::test(start_paused = true)]
async fn idle_drop_is_redialed_without_traffic() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let client = bind(Kind::Client, &dialer, policy());
    let _conn0 = first_connection(&dialer, &client).await;
    assert_eq!(client.stats().drops, 0);

    tokio::time::sleep(secs(60)).await;
    let died = Instant::now();
    dialer.hang_up(0);
    let mut conn1 = within(secs(10), "the redial", dialer.conn(1)).await;
    assert_eq!(dialer.connected_at(1), died, "redialed at once");
    let stats = client.stats();
    assert_eq!((stats.drops, stats.dials), (1, 2));
    wait_for(&client, "ready", |s| s.phase() == Phase::Ready).await;
    exchange(&client, &mut conn1).await;
    assert_eq!(client.stats().retries, 0);
}

/// Past the wait limit, a request that arrives while a dial is in flight
/// waits for that dial (CONNECTING) and is served when it succeeds.
#[tokio::test(start_paused = true)]
async fn a_request_during_a_dial_in_flight_is_served_by_it() {
    let (dialer, client, start) = failing_fast().await;
    // The dial at 2 s takes 200 ms, and succeeds.
    dialer.push([Dial::ConnectAfter(ms(200))]);
    sleep_until(start + ms(2050)).await;
    assert_eq!(client.state().borrow().phase(), Phase::Connecting);
    let fail_fast = client.stats().fail_fast;

    let request = tokio::spawn(client.clone().oneshot("GET".to_string()));
    let mut conn = within(secs(10), "the dial", dialer.conn(0)).await;
    assert_eq!(Instant::now() - start, ms(2200));
    let (_, reply) = within(secs(10), "the request", conn.next_request())
        .await
        .unwrap();
    reply.send_response("VALUE".to_string());
    let result = within(secs(10), "the reply", request).await.unwrap();
    assert_eq!(result.unwrap(), "VALUE");
    assert_eq!(
        client.stats().fail_fast,
        fail_fast,
        "it was not failed fast"
    );
}

/// Past the wait limit, a request that arrives while a dial is in flight
/// waits for that dial, and fails with that dial's own error when it fails.
#[tokio::test(start_paused = true)]
async fn a_request_during_a_failing_dial_gets_its_error() {
    let (dialer, client, start) = failing_fast().await;
    dialer.push([Dial::FailAfter(ms(200), io::ErrorKind::HostUnreachable)]);
    sleep_until(start + ms(2050)).await;

    let result = within(
        secs(10),
        "the request",
        client.clone().oneshot("GET".to_string()),
    )
    .await;
    assert_eq!(Instant::now() - start, ms(2200), "failed when the dial did");
    let error = result.unwrap_err();
    let unavailable = error.downcast_ref::<Unavailable>().expect("Unavailable");
    assert_eq!(unavailable.attempts(), 3);
    let source = std::error::Error::source(unavailable).expect("the dial's error");
    let io = source.downcast_ref::<io::Error>().expect("an io::Error");
    assert_eq!(io.kind(), io::ErrorKind::HostUnreachable);
}

/// A client that has failed fast since 1 s: fixed 1 s backoff, 1 s wait
/// limit, dials refused at 0 and 1 s; the next dial is due at 2 s.
async fn failing_fast() -> (Dialer, Client<String, String>, Instant) {
    let dialer = Dialer::new([Dial::Refuse, Dial::Refuse]);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(secs(1)))
        .wait_limit(secs(1))
        .connect_timeout(secs(5))
        .build()
        .unwrap();
    let client = bind(Kind::Client, &dialer, policy);
    let start = Instant::now();
    let first = within(
        secs(10),
        "the first request",
        client.clone().oneshot("GET".to_string()),
    )
    .await;
    let error = first.unwrap_err();
    assert!(error.is::<Unavailable>(), "{error}");
    assert_eq!(Instant::now() - start, secs(1));
    (dialer, client, start)
}

/// The origin recipe: `fixed(3 s)` against a server down for 7 s dials at
/// 0, 3, 6 and 9 s after the death, and the first success comes at 9 s.
async fn seed_recipe(requests_every: Option<Duration>) {
    let dialer = Dialer::new([Dial::Connect]);
    let policy = ReconnectPolicy::fixed(secs(3)).unwrap();
    let client = bind(Kind::Client, &dialer, policy);
    let _conn0 = first_connection(&dialer, &client).await;

    let t0 = Instant::now();
    dialer.down_until(t0 + secs(7));
    dialer.hang_up(0);
    let sender = requests_every.map(|every| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..20 {
                tokio::time::sleep(every).await;
                let result = client.clone().oneshot("GET".to_string()).await;
                results.push((Instant::now(), result));
            }
            results
        })
    });
    let mut conn1 = within(secs(60), "the reconnect", dialer.conn(1)).await;
    let answering = tokio::spawn(async move {
        while let Some((_, reply)) = conn1.next_request().await {
            reply.send_response("VALUE".to_string());
        }
    });
    wait_for(&client, "ready", |s| s.phase() == Phase::Ready).await;
    assert_eq!(Instant::now() - t0, secs(9), "the first success");
    let offsets: Vec<_> = dialer.dial_offsets(t0).into_iter().skip(1).collect();
    assert_eq!(offsets, [secs(0), secs(3), secs(6), secs(9)]);

    if let Some(sender) = sender {
        let results = within(secs(60), "the requests", sender).await.unwrap();
        let first_success = results
            .iter()
            .find(|(_, result)| result.is_ok())
            .map(|(at, _)| *at - t0)
            .expect("a request succeeded");
        assert_eq!(first_success, secs(9));
    }
    drop(client);
    answering.abort();
}

/// The seed recipe, with no request at all after the first.
#[tokio::test(start_paused = true)]
async fn seed_recipe_with_no_requests() {
    seed_recipe(None).await;
}

/// The seed recipe, with a request every 500 ms: requests do not move the
/// schedule.
#[tokio::test(start_paused = true)]
async fn seed_recipe_with_a_request_every_500ms() {
    seed_recipe(Some(ms(500))).await;
}

/// Under `grpc()`, every gap between dials lies within [0.8, 1.2] × 1, 1.6,
/// 2.56, … s, capped at 120 s before the jitter, and the gaps at the cap
/// spread over [96, 144] s.
#[tokio::test(start_paused = true)]
async fn grpc_gaps_between_dials_follow_the_spec() {
    let mut at_cap = Vec::new();
    for seed in 0..8 {
        let dialer = Dialer::new([]);
        let policy = ReconnectPolicy::builder()
            .backoff(ReconnectPolicy::grpc().backoff().clone())
            .seed(seed)
            .build()
            .unwrap();
        let client = bind(Kind::Client, &dialer, policy);
        let start = Instant::now();
        let _ = within(
            secs(60),
            "the first request",
            client.clone().oneshot("GET".to_string()),
        )
        .await;
        tokio::time::sleep(secs(3600)).await;
        let offsets = dialer.dial_offsets(start);
        assert!(offsets.len() > 30, "seed {seed}: {} dials", offsets.len());
        for (n, gap) in offsets.windows(2).map(|w| w[1] - w[0]).enumerate() {
            let raw = (1.6f64.powi(n as i32)).min(120.0);
            let gap = gap.as_secs_f64();
            assert!(
                (0.8 * raw - 0.001..=1.2 * raw + 0.001).contains(&gap),
                "seed {seed}, gap {n}: {gap} s against {raw} s"
            );
            if raw == 120.0 {
                at_cap.push(gap);
            }
        }
        drop(client);
    }
    assert!(at_cap.iter().any(|&gap| gap < 110.0), "{at_cap:?}");
    assert!(at_cap.iter().any(|&gap| gap > 130.0), "{at_cap:?}");
}

/// No task or dial outlives the last handle, even when the handle is dropped
/// mid-outage while the client's task is dialing.
#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_mid_dial_ends_everything() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let dialer = Dialer::new([Dial::Connect, Dial::Hang]);
    let client = bind(Kind::Client, &dialer, policy());
    let _conn0 = first_connection(&dialer, &client).await;

    dialer.hang_up(0);
    within(secs(10), "the redial starts", async {
        while dialer.dials() < 2 {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
    assert_eq!(dialer.live_dials(), 1, "the redial hangs");
    let mut state = client.state();
    drop(client);
    within(secs(10), "the watch closes", async {
        while state.changed().await.is_ok() {}
    })
    .await;
    assert_eq!(state.borrow().phase(), Phase::Closed);
    within(secs(10), "every task ends", async {
        while metrics.num_alive_tasks() > baseline {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
    assert_eq!(dialer.live_dials(), 0, "the hung dial was dropped");
}

/// `connected()` dials at once and returns once the connection is up.
#[tokio::test(start_paused = true)]
async fn connected_dials_eagerly() {
    let dialer = Dialer::new([Dial::Refuse, Dial::Connect]);
    let client = bind(Kind::Client, &dialer, policy());
    assert_eq!(dialer.dials(), 0, "lazy until asked");
    let start = Instant::now();
    within(secs(10), "connected", client.connected())
        .await
        .unwrap();
    assert_eq!(Instant::now() - start, ms(400), "the second dial connected");
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
    let mut conn = dialer.take_conn(0);
    exchange(&client, &mut conn).await;
    assert_eq!(dialer.dials(), 2);
}

/// `connected()` gives up within the wait limit plus one connect timeout,
/// with the latest cause: a blackholed dial's `ConnectTimeout`. The client
/// goes on redialing, and serves requests once a dial succeeds.
#[tokio::test(start_paused = true)]
async fn connected_fails_within_its_bound_with_the_latest_cause() {
    let dialer = Dialer::new([Dial::Hang; 5]);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(100)))
        .connect_timeout(secs(1))
        .wait_limit(ms(2500))
        .build()
        .unwrap();
    let client = bind(Kind::Client, &dialer, policy);
    let start = Instant::now();
    let error = within(secs(10), "connected", client.connected())
        .await
        .unwrap_err();
    assert!(
        Instant::now() - start <= ms(3500),
        "{:?}",
        Instant::now() - start
    );
    let unavailable = error.downcast_ref::<Unavailable>().expect("Unavailable");
    let source = std::error::Error::source(unavailable).expect("a cause");
    assert!(source.is::<ConnectTimeout>(), "{source}");

    dialer.push([Dial::Connect]);
    within(secs(10), "connected later", client.connected())
        .await
        .unwrap();
    let mut conn = dialer.take_conn(0);
    exchange(&client, &mut conn).await;
}

/// A factory whose `poll_ready` is `Pending` at first does not fail the
/// first request fast: the wait limit starts with the outage, not before.
#[tokio::test(start_paused = true)]
async fn a_factory_pending_at_first_does_not_fail_the_first_request_fast() {
    let dialer = Dialer::new([Dial::Connect]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(layer(policy()))
        .service(PendingOnce(dialer.clone(), false))
        .client("db");
    let mut conn = first_connection(&dialer, &client).await;
    exchange(&client, &mut conn).await;
    assert_eq!(client.stats().fail_fast, 0);
}

/// A factory whose `poll_ready` is `Pending` once, as a rate-limited
/// connector's is.
#[derive(Clone)]
struct PendingOnce(Dialer, bool);

impl Service<&'static str> for PendingOnce {
    type Response = <Dialer as Service<&'static str>>::Response;
    type Error = BoxError;
    type Future = <Dialer as Service<&'static str>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if !std::mem::replace(&mut self.1, true) {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        Service::<&'static str>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, target: &'static str) -> Self::Future {
        self.0.call(target)
    }
}

/// Open file descriptors of this process (nextest runs each test in a
/// process of its own).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// Over real TCP: dropping the last handle while the client's task is
/// redialing (the dial connected, its handshake hangs) closes every socket
/// the client opened and ends its task.
#[tokio::test]
async fn dropping_the_last_handle_mid_dial_closes_every_socket() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::service_fn;
    use tower_redial::connect::Handshake;
    use tower_redial::connect::TcpConnector;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The server answers one byte per byte, and closes the first connection
    // after one exchange.
    let server = tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut io, _) = listener.accept().await.unwrap();
            let close_after_one = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                while io.read_exact(&mut byte).await.is_ok() {
                    io.write_all(&byte).await.unwrap();
                    if close_after_one {
                        break;
                    }
                }
            });
        }
    });
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    let handshake = move |io: tokio::net::TcpStream| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n > 0 {
                // Every redial hangs in its handshake, holding its socket.
                std::future::pending::<()>().await;
            }
            let io = Arc::new(tokio::sync::Mutex::new(io));
            Ok::<_, BoxError>(service_fn(move |byte: u8| {
                let io = io.clone();
                async move {
                    let mut io = io.lock().await;
                    io.write_all(&[byte]).await?;
                    Ok::<_, BoxError>(io.read_u8().await?)
                }
            }))
        }
    };
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks = metrics.num_alive_tasks();
    let fds = open_fds();

    let client: Client<u8, u8> = ServiceBuilder::new()
        .layer(layer(policy()))
        .service(Handshake::new(TcpConnector::new(), handshake))
        .client(addr);
    assert_eq!(
        within(secs(10), "the first byte", client.clone().oneshot(7))
            .await
            .unwrap(),
        7
    );
    // The server closed that connection: the next byte fails with EOF,
    // which kills it, and the client redials; the redial's handshake hangs
    // with its socket open.
    let eof = within(secs(10), "the second byte", client.clone().oneshot(8)).await;
    assert!(eof.is_err());
    within(secs(10), "the redial's handshake", async {
        while handshakes.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
    assert!(open_fds() > fds, "the redial holds a socket");
    drop(client);
    within(
        secs(10),
        "every socket closed and every task ended",
        async {
            while open_fds() > fds || metrics.num_alive_tasks() > tasks + 2 {
                tokio::time::sleep(ms(1)).await;
            }
        },
    )
    .await;
    server.abort();
}

/// A fail-fast error names its target, with passwords masked, and says how
/// long the connection has been down to the millisecond, not the
/// nanosecond; its source is the latest dial error.
#[tokio::test(start_paused = true)]
async fn fail_fast_errors_name_the_target_to_the_millisecond() {
    let dialer = Dialer::new([]);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(300)))
        .wait_limit(ms(1000))
        .build()
        .unwrap();
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(layer(policy))
        .service(dialer.clone())
        .client("redis://app:s3cret@cache-1:6379");
    let first = within(
        secs(10),
        "the first request",
        client.clone().oneshot("GET".into()),
    )
    .await;
    assert!(first.unwrap_err().is::<Unavailable>());
    // 1.234 µs later, a second request fails fast too: the message shows
    // the time down to the millisecond, without the clock's noise.
    tokio::time::advance(Duration::from_nanos(1_234)).await;
    let second = within(
        secs(10),
        "the second request",
        client.clone().oneshot("GET".into()),
    )
    .await;
    let error = second.unwrap_err();
    let unavailable = error.downcast_ref::<Unavailable>().expect("Unavailable");
    assert_eq!(
        unavailable.down_for(),
        secs(1) + Duration::from_nanos(1_234)
    );
    let text = unavailable.to_string();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("cache-1:6379"), "{text}");
    assert!(
        text.ends_with("unavailable for 1s after 4 dial attempts"),
        "{text}"
    );
    assert!(unavailable.target().contains("cache-1"));
    assert!(std::error::Error::source(unavailable).is_some());
}

/// A caller that gives up on its request while a dial is in flight, and
/// then drops the last handle, leaves nothing behind: the client's task
/// ends at once, even with every timeout at "forever".
#[tokio::test(start_paused = true)]
async fn an_abandoned_request_does_not_keep_the_task_alive() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let dialer = Dialer::new([Dial::Hang]);
    let policy = ReconnectPolicy::builder()
        .connect_timeout(Duration::MAX)
        .wait_limit(Duration::MAX)
        .build()
        .unwrap();
    let client = bind(Kind::Client, &dialer, policy);
    let gave_up = timeout(ms(100), client.clone().oneshot("GET".to_string())).await;
    assert!(gave_up.is_err(), "the dial hangs");
    assert_eq!(dialer.live_dials(), 1);
    drop(client);
    within(secs(10), "the client's task ends", async {
        while metrics.num_alive_tasks() > baseline || dialer.live_dials() > 0 {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
}

/// Past the wait limit with the factory never ready, the fail-fast error
/// still says why.
#[tokio::test(start_paused = true)]
async fn a_factory_never_ready_is_named_as_the_cause() {
    #[derive(Clone)]
    struct NeverReady;
    impl Service<&'static str> for NeverReady {
        type Response = scripted::Conn;
        type Error = BoxError;
        type Future = std::future::Pending<Result<scripted::Conn, BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Pending
        }
        fn call(&mut self, _: &'static str) -> Self::Future {
            std::future::pending()
        }
    }
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(layer(policy()))
        .service(NeverReady)
        .client("db");
    let result = within(secs(10), "fail fast", client.clone().oneshot("GET".into())).await;
    let error = result.unwrap_err();
    let unavailable = error.downcast_ref::<Unavailable>().expect("Unavailable");
    assert_eq!(unavailable.attempts(), 0);
    let cause = std::error::Error::source(unavailable).expect("a cause");
    assert!(cause.to_string().contains("not ready"), "{cause}");
}

/// A client that gave up at its attempt limit says so everywhere alike: the
/// state watch, `connected()` and requests all show the dials made and the
/// latest dial error.
#[tokio::test(start_paused = true)]
async fn a_client_that_gave_up_shows_its_dials_and_cause_everywhere() {
    let dialer = Dialer::new([]);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(100)).max_attempts(1))
        .build()
        .unwrap();
    let client = bind(Kind::Client, &dialer, policy);
    let error = within(secs(10), "connected", client.connected())
        .await
        .unwrap_err();
    let closed = error
        .downcast_ref::<tower_redial::error::Closed>()
        .expect("Closed");
    assert_eq!(closed.attempts(), 1);
    assert!(
        std::error::Error::source(closed).is_some(),
        "the refused dial"
    );
    assert!(
        closed.to_string().ends_with("gave up after 1 dial attempt"),
        "{closed}"
    );
    let snapshot = client.state().borrow().clone();
    assert_eq!(snapshot.phase(), Phase::Closed);
    assert_eq!(snapshot.attempt(), 1);
    assert!(snapshot.last_error().is_some());
    let request = within(secs(10), "a request", client.clone().oneshot("GET".into())).await;
    let error = request.unwrap_err();
    let closed = error
        .downcast_ref::<tower_redial::error::Closed>()
        .expect("Closed");
    assert_eq!(closed.attempts(), 1);
}
