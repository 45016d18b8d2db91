//! User code cannot kill the client: a panic in the factory, a dial, the
//! handshake, or the connection's `poll_ready`, `call` or response future
//! fails at most the requests it touched, with a typed `Panicked` error; the
//! connection counts as dead and the client redials by its backoff. Paused
//! time; every await on the crate has a deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::error::Panicked;
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Fails the test if `future` takes longer than `limit`.
async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// Where the one panic happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Site {
    FactoryReady,
    FactoryCall,
    Dial,
    ConnReady,
    ConnCall,
    Response,
}

/// A factory of echo connections that panics once, at `site`, once armed.
#[derive(Clone)]
struct Panicky {
    site: Site,
    armed: Arc<AtomicBool>,
    dials: Arc<AtomicUsize>,
}

impl Panicky {
    fn new(site: Site) -> Self {
        Self {
            site,
            armed: Arc::new(AtomicBool::new(false)),
            dials: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Panics if armed for `site`, once.
    fn maybe_panic(site: Site, mine: Site, armed: &AtomicBool) {
        if site == mine && armed.swap(false, Ordering::SeqCst) {
            panic!("injected panic at {site:?}");
        }
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl Service<&'static str> for Panicky {
    type Response = Conn;
    type Error = BoxError;
    type Future = Boxed<Conn>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Self::maybe_panic(Site::FactoryReady, self.site, &self.armed);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: &'static str) -> Self::Future {
        Self::maybe_panic(Site::FactoryCall, self.site, &self.armed);
        self.dials.fetch_add(1, Ordering::SeqCst);
        let (site, armed) = (self.site, self.armed.clone());
        Box::pin(async move {
            tokio::task::yield_now().await;
            Self::maybe_panic(Site::Dial, site, &armed);
            Ok(Conn { site, armed })
        })
    }
}

/// An echo connection that panics once, at its factory's site, once armed.
#[derive(Clone)]
struct Conn {
    site: Site,
    armed: Arc<AtomicBool>,
}

impl Service<String> for Conn {
    type Response = String;
    type Error = BoxError;
    type Future = Boxed<String>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Panicky::maybe_panic(Site::ConnReady, self.site, &self.armed);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: String) -> Self::Future {
        Panicky::maybe_panic(Site::ConnCall, self.site, &self.armed);
        let (site, armed) = (self.site, self.armed.clone());
        Box::pin(async move {
            tokio::task::yield_now().await;
            Panicky::maybe_panic(Site::Response, site, &armed);
            Ok(request)
        })
    }
}

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .backoff(Backoff::fixed(ms(100)))
        .build()
        .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Client,
    Multiplexed,
    #[cfg(feature = "balance")]
    Balanced,
}

fn bind(kind: Kind, make: &Panicky) -> Client<String, String> {
    let maker = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(make.clone());
    match kind {
        Kind::Client => maker.client("db"),
        Kind::Multiplexed => maker.multiplexed("db"),
        #[cfg(feature = "balance")]
        Kind::Balanced => maker.balance(["db"]),
    }
}

async fn send(client: &Client<String, String>, request: &str) -> Result<String, BoxError> {
    within(
        Duration::from_secs(30),
        "a request",
        client.clone().oneshot(request.to_string()),
    )
    .await
}

/// Arms one panic at `site` on a connected client, sends a request, and
/// checks what became of it: the requests the panic touched fail with
/// `Panicked`, the others are served after a redial, and the client serves
/// every request after that.
async fn survives(kind: Kind, site: Site) {
    let make = Panicky::new(site);
    let client = bind(kind, &make);
    assert_eq!(send(&client, "warm up").await.unwrap(), "warm up");
    // Let the connection be published to the direct lane, where there is one.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    make.arm();
    let result = send(&client, "hit").await;
    let touched_the_request = matches!(site, Site::ConnCall | Site::Response);
    match result {
        Err(error) if touched_the_request => {
            let panicked = error
                .downcast_ref::<Panicked>()
                .unwrap_or_else(|| panic!("{kind:?}/{site:?}: not Panicked: {error}"));
            assert!(
                panicked.site().starts_with("the connection's"),
                "{panicked}"
            );
            assert_eq!(
                panicked.message(),
                Some(format!("injected panic at {site:?}").as_str())
            );
        }
        Ok(reply) if !touched_the_request => assert_eq!(reply, "hit"),
        other => panic!("{kind:?}/{site:?}: {other:?}"),
    }
    for n in 0..5 {
        let request = format!("after {n}");
        assert_eq!(
            send(&client, &request).await.unwrap(),
            request,
            "{kind:?}/{site:?}"
        );
    }
    let stats = client.stats();
    if matches!(site, Site::FactoryReady | Site::FactoryCall | Site::Dial) {
        // The factory and dial are only used to redial: make them panic on
        // the next dial by dropping the connection first.
        assert_eq!(stats.drops, 0, "{kind:?}/{site:?}: {stats:?}");
    } else {
        assert_eq!(
            stats.drops, 1,
            "{kind:?}/{site:?}: the connection counted as dead"
        );
        assert_eq!(
            make.dials.load(Ordering::SeqCst),
            2,
            "{kind:?}/{site:?}: redialed"
        );
    }
    assert_ne!(client.state().borrow().phase(), Phase::Closed);
}

/// A panic in the factory or a dial, on the first dial: the dial fails, the
/// client redials by its backoff, and the waiting request is served.
async fn first_dial_survives(kind: Kind, site: Site) {
    let make = Panicky::new(site);
    make.arm();
    let client = bind(kind, &make);
    let started = tokio::time::Instant::now();
    assert_eq!(
        send(&client, "hello").await.unwrap(),
        "hello",
        "{kind:?}/{site:?}"
    );
    assert_eq!(
        tokio::time::Instant::now() - started,
        ms(100),
        "one backoff step"
    );
    let stats = client.stats();
    assert_eq!(stats.dial_failures, 1, "{kind:?}/{site:?}: {stats:?}");
    let snapshot = client.state().borrow().clone();
    assert_eq!(snapshot.phase(), Phase::Ready);
    for n in 0..5 {
        let request = format!("after {n}");
        assert_eq!(send(&client, &request).await.unwrap(), request);
    }
}

/// Every connection site, for a client: the worker survives the panic.
#[tokio::test(start_paused = true)]
async fn a_client_survives_a_panicking_connection() {
    for site in [Site::ConnReady, Site::ConnCall, Site::Response] {
        survives(Kind::Client, site).await;
    }
}

/// Every connection site, for a multiplexed client, whose handles call the
/// connection directly on their own tasks.
#[tokio::test(start_paused = true)]
async fn a_multiplexed_client_survives_a_panicking_connection() {
    for site in [Site::ConnReady, Site::ConnCall, Site::Response] {
        survives(Kind::Multiplexed, site).await;
    }
}

/// Every connection site, for a balanced client.
#[cfg(feature = "balance")]
#[tokio::test(start_paused = true)]
async fn a_balanced_client_survives_a_panicking_connection() {
    for site in [Site::ConnReady, Site::ConnCall, Site::Response] {
        survives(Kind::Balanced, site).await;
    }
}

/// A panic in the factory's `poll_ready` or `call`, or in the dial, fails
/// that dial only: the client redials after one backoff step and serves the
/// request that waited, for every kind of client.
#[tokio::test(start_paused = true)]
async fn a_panicking_factory_or_dial_fails_only_that_dial() {
    let kinds = [
        Kind::Client,
        Kind::Multiplexed,
        #[cfg(feature = "balance")]
        Kind::Balanced,
    ];
    for kind in kinds {
        for site in [Site::FactoryReady, Site::FactoryCall, Site::Dial] {
            first_dial_survives(kind, site).await;
        }
    }
}

/// A handshake that panics, over a real socket, fails that dial only: the
/// client redials and the request that waited is served.
#[tokio::test]
async fn a_panicking_handshake_fails_only_that_dial() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (read, mut write) = io.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    write
                        .write_all(format!("{line}\n").as_bytes())
                        .await
                        .unwrap();
                }
            });
        }
    });
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    let handshake = move |io: TcpStream| {
        let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
        async move {
            assert!(!first, "injected panic in the handshake");
            let io = Arc::new(tokio::sync::Mutex::new(BufReader::new(io)));
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
        }
    };
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(Handshake::new(TcpConnector::new(), handshake))
        .client(addr);
    assert_eq!(send(&client, "hello").await.unwrap(), "hello");
    assert_eq!(handshakes.load(Ordering::SeqCst), 2);
    assert_eq!(client.stats().dial_failures, 1);
    // The answer proved the new connection: the outage is over.
    let mut state = client.state();
    within(
        Duration::from_secs(10),
        "the outage ends",
        state.wait_for(|s| s.last_error().is_none()),
    )
    .await
    .unwrap();
    server.abort();
}

/// A client whose task has ended (its runtime shut down) fails requests
/// with `Closed`, saying so: never "gave up after 0 dial attempts".
#[test]
fn a_client_whose_task_ended_says_so() {
    let make = Panicky::new(Site::Dial);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = first.block_on(async {
        let client = bind(Kind::Client, &make);
        assert_eq!(send(&client, "hello").await.unwrap(), "hello");
        client
    });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = second.block_on(send(&client, "again")).unwrap_err();
    let closed = error
        .downcast_ref::<tower_redial::error::Closed>()
        .unwrap_or_else(|| panic!("not Closed: {error}"));
    assert_eq!(closed.to_string(), "the client's task for \"db\" has ended");
}
