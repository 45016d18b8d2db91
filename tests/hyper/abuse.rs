//! Abuse: a server that never answers cannot make the client hold an
//! unbounded number of requests. The queue is bounded; past it, callers wait
//! (backpressure) or, with load shedding, are refused with `Overloaded`.

#![cfg(feature = "hyper")]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::Empty;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::error::Overloaded;
use tower_redial::{ReconnectLayer, ReconnectPolicy};

const QUEUE: usize = 64;
const SENT: usize = 2_000;

/// How long a test waits on the client before it fails, in real time: far
/// past anything the client does on loopback.
const DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `future`, or panics saying `what` did not happen within `limit`:
/// a test that waits on the client fails instead of hanging.
async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// A server that accepts and then never reads nor writes: requests sent to
/// it never end. With load shedding, at most the queue plus the one request
/// the worker and the HTTP/1 connection hold are outstanding; every other
/// request is refused at once with `Overloaded`.
#[tokio::test]
async fn never_answering_server_holds_at_most_the_queue() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (io, _) = listener.accept().await.unwrap();
            held.push(io);
        }
    });

    let policy = ReconnectPolicy::builder()
        .queue_capacity(QUEUE)
        .load_shed(true)
        .wait_limit(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(Handshake::new(
            TcpConnector::new(),
            tower_redial::hyper::http1::<Empty<Bytes>>,
        ))
        .client(addr);

    let mut outstanding = Vec::new();
    let mut overloaded = 0;
    for _ in 0..SENT {
        let ready = within(DEADLINE, "poll_ready", client.ready()).await;
        let mut response = ready.unwrap().call(request(addr));
        match (&mut response).now_or_never() {
            Some(Err(error)) if error.is::<Overloaded>() => overloaded += 1,
            Some(other) => panic!("a request to a silent server ended: {other:?}"),
            None => outstanding.push(response),
        }
        // Give the worker a chance to drain the queue, as it would in use.
        tokio::task::yield_now().await;
    }

    println!(
        "sent {SENT}: {} outstanding, {overloaded} refused with Overloaded",
        outstanding.len()
    );
    assert!(
        outstanding.len() <= QUEUE + 2,
        "{} requests outstanding, more than the queue of {QUEUE} plus the one \
         in the worker and the one on the connection",
        outstanding.len()
    );
    assert_eq!(outstanding.len() + overloaded, SENT);
    server.abort();
}

fn request(addr: std::net::SocketAddr) -> http::Request<Empty<Bytes>> {
    http::Request::get("/")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new())
        .unwrap()
}

/// A server that answers with an endless flood of bytes: hyper's bounded read
/// buffer turns it into an error, the connection is dropped and redialed, and
/// the process's peak memory grows by far less than the flood.
#[tokio::test]
async fn flooding_server_cannot_grow_memory_without_bound() {
    use tokio::io::AsyncWriteExt;

    const FLOOD_PER_CONNECTION: usize = 64 << 20;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut io, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let chunk = vec![b'x'; 64 << 10];
                let mut sent = 0;
                while sent < FLOOD_PER_CONNECTION && io.write_all(&chunk).await.is_ok() {
                    sent += chunk.len();
                }
            });
        }
    });

    let before = peak_rss_kib();
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(ReconnectPolicy::default()))
        .service(Handshake::new(
            TcpConnector::new(),
            tower_redial::hyper::http1::<Empty<Bytes>>,
        ))
        .client(addr);
    for _ in 0..3 {
        let answer = client.clone().oneshot(request(addr));
        let error = within(DEADLINE, "the answer", answer).await.unwrap_err();
        assert!(
            error
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_parse),
            "{error}"
        );
    }
    let grown = peak_rss_kib().saturating_sub(before);
    println!("peak RSS grew by {grown} KiB over 3 flooded connections");
    assert!(grown < 32 << 10, "peak RSS grew by {grown} KiB");
    assert!(client.stats().dials >= 3, "{:?}", client.stats());
    server.abort();
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
