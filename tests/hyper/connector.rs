//! hyper-util's legacy `Client` over `Dial<HttpConnector>`, against a real
//! hyper server on 127.0.0.1 that is taken down and restarted on the same
//! port. Real time; the assertions are on outcomes, and the only timing
//! checks are lower bounds that sleeps guarantee.

use support::listen;

use std::convert::Infallible;
use std::error::Error;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};
use tower::Layer;
use tower_redial::dial::{Dial, DialLayer};
use tower_redial::error::DialError;
use tower_redial::{Backoff, ReconnectPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A hyper HTTP/1 server that answers every request with `gen N`, so a test
/// can tell the server before a restart from the one after it.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Listens on `addr` (port 0 for a fresh port). `SO_REUSEADDR` lets a
    /// restarted server take the port back while old connections linger.
    fn start(addr: SocketAddr, generation: u32) -> Self {
        let listener = listen::reusable(addr);
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((io, _)) = accepted else { continue };
                        let service = service_fn(move |_request| async move {
                            let body = Full::new(Bytes::from(format!("gen {generation}")));
                            Ok::<_, Infallible>(Response::new(body))
                        });
                        connections.spawn(
                            http1::Builder::new().serve_connection(TokioIo::new(io), service),
                        );
                        while connections.try_join_next().is_some() {}
                    }
                }
            }
            // Down: refuse new connections, and close the open ones.
            drop(listener);
            connections.shutdown().await;
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Takes the server down, and returns once its port refuses connections
    /// and its connections are closed.
    async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        (&mut self.task).await.unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nobody listens on: a port that was bound, then released.
async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

type Body = Empty<Bytes>;

fn dial_client(policy: ReconnectPolicy) -> Client<Dial<HttpConnector>, Body> {
    Client::builder(TokioExecutor::new()).build(DialLayer::new(policy).layer(HttpConnector::new()))
}

fn plain_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A policy that rides through a short outage: 50 ms doubling to 200 ms, and
/// a generous wait limit so a slow machine still gets its connection.
fn ride_through() -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(50), 2.0, ms(200)))
        .connect_timeout(Duration::from_secs(2))
        .wait_limit(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GETs `/` and returns the body.
async fn get<C>(client: Client<C, Body>, addr: SocketAddr) -> Result<String, legacy::Error>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let response = client
        .get(format!("http://{addr}/").parse().unwrap())
        .await?;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

/// The errors in `error`'s `source()` chain, itself first.
fn chain<'a>(error: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

fn is_refused(error: &(dyn Error + 'static)) -> bool {
    chain(error).any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
    })
}

/// Requests made while the server is down for one second wait and then
/// succeed over `Dial`, where the same requests over a plain
/// `HttpConnector` fail at once with a connect error.
#[tokio::test]
async fn requests_wait_out_a_one_second_outage() {
    let addr = free_addr().await;

    // Nothing listens yet: the plain client fails, refused.
    let plain = plain_client();
    for _ in 0..3 {
        let error = get(plain.clone(), addr).await.unwrap_err();
        assert!(error.is_connect(), "{error:?}");
        assert!(is_refused(&error), "{error:?}");
    }

    // The server comes up one second from now; meanwhile, requests.
    let start = Instant::now();
    let restart = tokio::spawn(async move {
        sleep_until(start + Duration::from_secs(1)).await;
        Server::start(addr, 1)
    });
    let client = dial_client(ride_through());
    let requests: Vec<_> = (0..3)
        .map(|_| tokio::spawn(get(client.clone(), addr)))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap(), "gen 1");
    }
    assert!(start.elapsed() >= Duration::from_secs(1));
    restart.await.unwrap().stop().await;
}

/// A server that never comes up: after the attempt limit, the request fails
/// with a connect error whose source chain holds a `DialError` counting the
/// attempts, and under it the refusal.
#[tokio::test]
async fn a_server_that_never_comes_up_fails_after_the_limit() {
    let addr = free_addr().await;
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(100)).max_attempts(4))
        .build()
        .unwrap();

    let error = get(dial_client(policy), addr).await.unwrap_err();

    assert!(error.is_connect(), "{error:?}");
    let gave_up = chain(&error)
        .find_map(|e| e.downcast_ref::<DialError>())
        .unwrap_or_else(|| panic!("no DialError in {error:?}"));
    assert_eq!(gave_up.attempts(), 4);
    assert!(gave_up.elapsed() >= ms(300), "three 100 ms waits");
    assert!(
        gave_up
            .to_string()
            .starts_with("dial gave up after 4 attempts in "),
        "{gave_up}"
    );
    assert!(is_refused(gave_up), "{gave_up:?}");
}

/// Without an attempt or time limit, the wait limit ends the dial: the
/// request fails with a `DialError`, not a hang.
#[tokio::test]
async fn without_limits_the_wait_limit_ends_the_request() {
    let addr = free_addr().await;
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(50)))
        .wait_limit(ms(500))
        .build()
        .unwrap();

    let error = get(dial_client(policy), addr).await.unwrap_err();

    let gave_up = chain(&error).find_map(|e| e.downcast_ref::<DialError>());
    let gave_up = gave_up.unwrap_or_else(|| panic!("no DialError in {error:?}"));
    assert!(gave_up.attempts() >= 1);
    assert!(is_refused(gave_up), "{gave_up:?}");
}

/// A server restarted on the same port mid-traffic: requests before, during
/// and after the restart all succeed, each answered by the server that was
/// up. The client keeps its pool: connections to the old server are found
/// closed and replaced through `Dial`.
#[tokio::test]
async fn requests_keep_succeeding_across_a_server_restart() {
    let server = Server::start("127.0.0.1:0".parse().unwrap(), 1);
    let addr = server.addr;
    let client = dial_client(ride_through());

    for _ in 0..5 {
        assert_eq!(get(client.clone(), addr).await.unwrap(), "gen 1");
    }

    server.stop().await;
    let start = Instant::now();
    let restart = tokio::spawn(async move {
        sleep_until(start + Duration::from_secs(1)).await;
        Server::start(addr, 2)
    });
    let during: Vec<_> = (0..5)
        .map(|_| tokio::spawn(get(client.clone(), addr)))
        .collect();
    for request in during {
        assert_eq!(request.await.unwrap().unwrap(), "gen 2");
    }
    assert!(start.elapsed() >= Duration::from_secs(1));

    for _ in 0..5 {
        assert_eq!(get(client.clone(), addr).await.unwrap(), "gen 2");
    }
    restart.await.unwrap().stop().await;
}
