//! A scripted connection factory for state-machine tests.
//!
//! Each dial takes the next [`Dial`] from a script (once the script runs
//! out: refuse, or follow [`Dialer::down_until`]), records when it happened
//! and what target it was given, and hands out tower-test mock connections
//! whose handles the test keeps, so it can answer requests on them or kill
//! them. Each connection also has a [`CloseWatch`], which
//! [`Dialer::hang_up`] closes as a connection's IO task does when the peer
//! goes away: the client notices that with no request.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;
use tower_redial::connect::CloseWatch;
use tower_redial::BoxError;
use tower_test::mock;

/// Awaits `future`, or panics saying `what` did not happen within `limit`:
/// a test that waits on the client fails instead of hanging. Under paused
/// time an idle runtime jumps to the deadline as to any other timer, so it
/// fires at once; a `future` that finishes first ends at the same instant as
/// it would without the deadline.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// The test's end of a mock connection.
pub type ConnHandle = mock::Handle<String, String>;

/// A mock connection that reports its close through a [`CloseWatch`].
pub struct Conn {
    mock: mock::Mock<String, String>,
    closed: CloseWatch,
}

impl Clone for Conn {
    fn clone(&self) -> Self {
        Conn {
            mock: self.mock.clone(),
            closed: self.closed.for_clone(),
        }
    }
}

impl Service<String> for Conn {
    type Response = String;
    type Error = BoxError;
    type Future = <mock::Mock<String, String> as Service<String>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Poll::Ready(error) = self.closed.poll_closed(cx) {
            return Poll::Ready(Err(error.into()));
        }
        self.mock.poll_ready(cx)
    }

    fn call(&mut self, request: String) -> Self::Future {
        self.mock.call(request)
    }
}

/// What the next dial does.
#[derive(Clone, Copy, Debug)]
pub enum Dial {
    /// Fails with `ConnectionRefused`.
    Refuse,
    /// Never completes.
    Hang,
    /// Connects.
    Connect,
    /// Connects, but the connection is already closed (accept, then close).
    ConnectClosed,
    /// Connects after this long.
    ConnectAfter(Duration),
    /// Fails after this long, with an error of this kind.
    FailAfter(Duration, io::ErrorKind),
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Dial>,
    /// Once the script runs out: refuse until then, connect from then on.
    down_until: Option<Instant>,
    dials: Vec<(Instant, String)>,
    conns: Vec<Option<ConnHandle>>,
    watches: Vec<CloseWatch>,
    /// When each connection was made.
    connected_at: Vec<Instant>,
}

/// The factory. Clones share the script and the log.
#[derive(Clone, Default)]
pub struct Dialer(
    Arc<Mutex<Inner>>,
    Arc<tokio::sync::Notify>,
    Arc<AtomicUsize>,
);

/// Counts a dial future as live until it is dropped.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Live(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Dialer {
    pub fn new(script: impl IntoIterator<Item = Dial>) -> Self {
        let d = Self::default();
        d.push(script);
        d
    }

    pub fn push(&self, dials: impl IntoIterator<Item = Dial>) {
        self.0.lock().unwrap().script.extend(dials);
    }

    /// Once the script runs out, dials are refused until `at`, and connect
    /// from then on: a server that is down until `at`.
    pub fn down_until(&self, at: Instant) {
        self.0.lock().unwrap().down_until = Some(at);
    }

    /// Closes connection `id` as its IO task would when the peer goes away:
    /// the client is told through the connection's `CloseWatch`.
    pub fn hang_up(&self, id: usize) {
        let inner = self.0.lock().unwrap();
        inner.watches[id].close(io::ErrorKind::UnexpectedEof);
    }

    /// When connection `id` was made.
    pub fn connected_at(&self, id: usize) -> Instant {
        self.0.lock().unwrap().connected_at[id]
    }

    /// Dial futures still alive: started and neither finished nor dropped.
    pub fn live_dials(&self) -> usize {
        self.2.load(Ordering::SeqCst)
    }

    /// How many dials were started.
    pub fn dials(&self) -> usize {
        self.0.lock().unwrap().dials.len()
    }

    /// When each dial started, relative to `start`.
    pub fn dial_offsets(&self, start: Instant) -> Vec<Duration> {
        let inner = self.0.lock().unwrap();
        inner.dials.iter().map(|(at, _)| *at - start).collect()
    }

    /// The target each dial was given.
    pub fn targets(&self) -> Vec<String> {
        let inner = self.0.lock().unwrap();
        inner.dials.iter().map(|(_, t)| t.clone()).collect()
    }

    /// How many connections were made (ids 0, 1, ...).
    pub fn connections(&self) -> usize {
        self.0.lock().unwrap().conns.len()
    }

    /// Waits for connection `id` to be made, and takes the test's handle of it.
    pub async fn conn(&self, id: usize) -> ConnHandle {
        loop {
            let made = self.1.notified();
            if self.connections() > id {
                return self.take_conn(id);
            }
            made.await;
        }
    }

    /// [`Dialer::conn`], or a panic if connection `id` is not made within
    /// `limit`.
    pub async fn conn_within(&self, id: usize, limit: Duration) -> ConnHandle {
        within(limit, &format!("connection {id}"), self.conn(id)).await
    }

    /// Takes the test's handle of connection `id`.
    pub fn take_conn(&self, id: usize) -> ConnHandle {
        self.0.lock().unwrap().conns[id]
            .take()
            .expect("connection handle already taken")
    }
}

/// A dial error with the type a real connector gives.
pub fn refused() -> io::Error {
    io::Error::from(io::ErrorKind::ConnectionRefused)
}

impl<T: ToString> Service<T> for Dialer {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: T) -> Self::Future {
        let now = Instant::now();
        let mut log = self.0.lock().unwrap();
        log.dials.push((now, target.to_string()));
        let dial = match (log.script.pop_front(), log.down_until) {
            (Some(dial), _) => dial,
            (None, Some(at)) if now >= at => Dial::Connect,
            (None, _) => Dial::Refuse,
        };
        // Counts the dial as live until its future finishes or is dropped.
        let live = Live::new(&self.2);
        let (delay, dial) = match dial {
            Dial::ConnectAfter(delay) => (delay, Dial::Connect),
            Dial::FailAfter(delay, kind) => {
                return Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    drop(live);
                    Err(io::Error::from(kind).into())
                })
            }
            dial => (Duration::ZERO, dial),
        };
        drop(log);
        match dial {
            Dial::Refuse => Box::pin(async move {
                drop(live);
                Err(refused().into())
            }),
            Dial::Hang => Box::pin(async move {
                let _live = live;
                std::future::pending().await
            }),
            _ => {
                let inner = self.0.clone();
                let made = self.1.clone();
                let closed_at_once = matches!(dial, Dial::ConnectClosed);
                Box::pin(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    drop(live);
                    let (mock, handle) = mock::pair();
                    let closed = CloseWatch::new();
                    let mut inner = inner.lock().unwrap();
                    if closed_at_once {
                        drop(handle);
                        inner.conns.push(None);
                    } else {
                        inner.conns.push(Some(handle));
                    }
                    inner.watches.push(closed.for_clone());
                    inner.connected_at.push(Instant::now());
                    made.notify_waiters();
                    Ok(Conn { mock, closed })
                })
            }
        }
    }
}
