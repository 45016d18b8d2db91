//! hyper-util's legacy `Client` riding through a server outage with dial
//! backoff, next to a plain client that fails at once.
//!
//! The example starts a hyper server on 127.0.0.1 and takes it down for one
//! second. During the outage, a request through a plain `HttpConnector`
//! fails at once with a connect error, while the same request through
//! `Dial<HttpConnector>` (from `DialLayer`) waits, redialing with backoff,
//! and succeeds once the server is back on the same port. Then the dial
//! client is pointed at a port nobody listens on, and gives a clear error
//! at the policy's wait limit. It takes about four seconds and exits 0.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example hyper_util
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant};
use tower::Layer;
use tower_redial::dial::DialLayer;
use tower_redial::{Backoff, BoxError, ReconnectPolicy};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Dial backoff: 50 ms doubling up to 400 ms, a 2 s timeout per attempt,
    // and, as the backoff sets no attempt or time limit, at most 3 s per dial.
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(50),
            2.0,
            Duration::from_millis(400),
        ))
        .connect_timeout(Duration::from_secs(2))
        .wait_limit(Duration::from_secs(3))
        .build()?;
    let dial = Client::builder(TokioExecutor::new())
        .build::<_, Empty<Bytes>>(DialLayer::new(policy).layer(HttpConnector::new()));
    let plain =
        Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());

    let server = start(SocketAddr::from(([127, 0, 0, 1], 0)), 1)?;
    let addr = server.addr;
    println!("server 1 up on {addr}");
    report("plain client", get(&plain, addr).await);
    report("dial client ", get(&dial, addr).await);

    server.stop().await;
    let down = Instant::now();
    println!("\nserver down for 1 s");
    let restart = tokio::spawn(async move {
        sleep_until(down + Duration::from_secs(1)).await;
        let server = start(addr, 2).expect("port taken back");
        println!(
            "  [{:>4} ms] server 2 up on {addr}",
            down.elapsed().as_millis()
        );
        server
    });
    report("plain client", get(&plain, addr).await);
    report("dial client ", get(&dial, addr).await);
    restart.await?.stop().await;

    let nobody = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    println!("\nno server ever on {nobody}");
    report("dial client ", get(&dial, nobody).await);
    Ok(())
}

/// GETs `/`, timing it.
async fn get<C>(
    client: &Client<C, Empty<Bytes>>,
    addr: SocketAddr,
) -> (Duration, Result<String, BoxError>)
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let start = Instant::now();
    let result = async {
        let response = client.get(format!("http://{addr}/").parse()?).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(body.to_vec())?)
    }
    .await;
    (start.elapsed(), result)
}

fn report(client: &str, (took, result): (Duration, Result<String, BoxError>)) {
    let took = took.as_millis();
    match result {
        Ok(body) => println!("  {client}: {body:?} after {took} ms"),
        Err(error) => {
            // The whole `source()` chain: hyper-util's error, then ours.
            let mut chain = error.to_string();
            let mut next = error.source();
            while let Some(cause) = next {
                chain.push_str(&format!(": {cause}"));
                next = cause.source();
            }
            println!("  {client}: failed after {took} ms: {chain}");
        }
    }
}

/// A hyper server that answers `gen N`.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

fn start(addr: SocketAddr, generation: u32) -> std::io::Result<Server> {
    // `SO_REUSEADDR`, so that the restarted server takes the port back.
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(128)?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        // Dropped with this task, which aborts the connections.
        let mut connections = JoinSet::new();
        while let Ok((io, _)) = listener.accept().await {
            let service = service_fn(move |_request| async move {
                let body = Full::new(Bytes::from(format!("gen {generation}")));
                Ok::<_, Infallible>(Response::new(body))
            });
            connections.spawn(http1::Builder::new().serve_connection(TokioIo::new(io), service));
            while connections.try_join_next().is_some() {}
        }
    });
    Ok(Server { addr, task })
}

impl Server {
    /// Takes the server down: once this returns, its port refuses.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
