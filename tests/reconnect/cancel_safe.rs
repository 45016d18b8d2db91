//! A cancelled request cannot desynchronise a connection. On a connection
//! that serves one request at a time, written the plain way (write the
//! request, then read its reply), a request dropped mid-flight leaves its
//! reply on the wire for the next request to read. By default the client
//! then counts the connection as dead and redials; a policy that declares
//! its connections cancel-safe keeps them. In-memory connections and paused
//! time, so every instant is exact; every await bounded.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::Mutex;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn within<F: std::future::Future>(limit: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// The server end: answers each line with `echo: <line>`, after 300 ms
/// for `SLOW`.
async fn serve(io: DuplexStream) {
    let (read, mut write) = tokio::io::split(io);
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "SLOW" {
            tokio::time::sleep(ms(300)).await;
        }
        if write
            .write_all(format!("echo: {line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A factory of plain one-at-a-time connections, as a user writes them:
/// each request writes its line, then reads one line back.
fn make() -> impl tower::Service<
    &'static str,
    Response = impl tower::Service<String, Response = String, Error = BoxError, Future = impl Send>
                   + Send
                   + 'static,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(|_: &'static str| async {
        let (client, server) = tokio::io::duplex(1024);
        tokio::spawn(serve(server));
        let io = Arc::new(Mutex::new(BufReader::new(client)));
        Ok::<_, BoxError>(service_fn(move |line: String| {
            let io = io.clone();
            async move {
                let mut io = io.lock().await;
                io.get_mut()
                    .write_all(format!("{line}\n").as_bytes())
                    .await?;
                let mut reply = String::new();
                io.read_line(&mut reply).await?;
                Ok::<_, BoxError>(reply.trim_end().to_string())
            }
        }))
    })
}

/// By default, a request dropped by the caller's timeout poisons the
/// connection: it is redialed, and the next request gets its own reply.
#[tokio::test(start_paused = true)]
async fn a_dropped_request_poisons_a_one_at_a_time_connection() {
    let client = ReconnectLayer::new(ReconnectPolicy::default());
    let client = ServiceBuilder::new()
        .layer(client)
        .service(make())
        .client("db");
    let first = within(ms(1000), "first", client.clone().oneshot("a".to_string())).await;
    assert_eq!(first.unwrap(), "echo: a");

    let slow = tower::timeout::Timeout::new(client.clone(), ms(100));
    let timed_out = within(ms(1000), "slow", slow.oneshot("SLOW".to_string())).await;
    assert!(timed_out.is_err(), "the caller gave up");

    let next = within(ms(1000), "next", client.clone().oneshot("x".to_string())).await;
    assert_eq!(next.unwrap(), "echo: x", "not the dropped request's reply");
    let stats = client.stats();
    assert_eq!((stats.drops, stats.dials), (1, 2), "redialed: {stats:?}");
}

/// A policy that declares its connections cancel-safe keeps the connection
/// after a dropped request. (This connection is not cancel-safe, which is
/// why the next request then reads the dropped one's reply: the reason the
/// default redials.)
#[tokio::test(start_paused = true)]
async fn a_cancel_safe_policy_keeps_the_connection() {
    let policy = ReconnectPolicy::builder()
        .cancel_safe(true)
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(make())
        .client("db");
    let first = within(ms(1000), "first", client.clone().oneshot("a".to_string())).await;
    assert_eq!(first.unwrap(), "echo: a");
    let slow = tower::timeout::Timeout::new(client.clone(), ms(100));
    assert!(within(ms(1000), "slow", slow.oneshot("SLOW".to_string()))
        .await
        .is_err());
    let next = within(ms(1000), "next", client.clone().oneshot("x".to_string())).await;
    assert_eq!(next.unwrap(), "echo: SLOW", "the connection was kept");
    assert_eq!(client.stats().drops, 0);
}

/// A multiplexed client's connections are never killed by a dropped request.
#[tokio::test(start_paused = true)]
async fn a_multiplexed_connection_is_kept() {
    let make = service_fn(|_: &'static str| async {
        Ok::<_, BoxError>(service_fn(|n: u64| async move {
            tokio::time::sleep(ms(n)).await;
            Ok::<_, BoxError>(n)
        }))
    });
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(ReconnectPolicy::default()))
        .service(make)
        .multiplexed("db");
    assert_eq!(
        within(ms(1000), "first", client.clone().oneshot(1))
            .await
            .unwrap(),
        1
    );
    let slow = tower::timeout::Timeout::new(client.clone(), ms(100));
    assert!(within(ms(1000), "slow", slow.oneshot(300)).await.is_err());
    assert_eq!(
        within(ms(1000), "next", client.clone().oneshot(2))
            .await
            .unwrap(),
        2
    );
    assert_eq!(client.stats().drops, 0);
}
