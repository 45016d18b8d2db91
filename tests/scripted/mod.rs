//! A scripted connection factory for state-machine tests.
//!
//! Each dial takes the next [`Outcome`] from a script (refuse once the script
//! runs out), records when it happened and what target it was given, and
//! hands out tower-test mock connections whose handles the test keeps, so it
//! can answer requests on them or kill them.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;
use tower_redial::BoxError;
use tower_test::mock;

/// A mock connection, and the test's end of it.
pub type Conn = mock::Mock<String, String>;
pub type ConnHandle = mock::Handle<String, String>;

/// What the next dial does.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// Fails with `ConnectionRefused`.
    Refuse,
    /// Never completes.
    Hang,
    /// Connects.
    Connect,
    /// Connects, but the connection is already closed (accept, then close).
    ConnectClosed,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Outcome>,
    dials: Vec<(Instant, String)>,
    conns: Vec<Option<ConnHandle>>,
}

/// The factory. Clones share the script and the log.
#[derive(Clone, Default)]
pub struct Dialer(Arc<Mutex<Inner>>, Arc<tokio::sync::Notify>);

impl Dialer {
    pub fn new(script: impl IntoIterator<Item = Outcome>) -> Self {
        let d = Self::default();
        d.push(script);
        d
    }

    pub fn push(&self, outcomes: impl IntoIterator<Item = Outcome>) {
        self.0.lock().unwrap().script.extend(outcomes);
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
        let mut inner = self.0.lock().unwrap();
        inner.dials.push((Instant::now(), target.to_string()));
        let outcome = inner.script.pop_front().unwrap_or(Outcome::Refuse);
        match outcome {
            Outcome::Refuse => Box::pin(async { Err(refused().into()) }),
            Outcome::Hang => Box::pin(std::future::pending()),
            Outcome::Connect | Outcome::ConnectClosed => {
                let (conn, handle) = mock::pair();
                let handle = match outcome {
                    Outcome::Connect => Some(handle),
                    _ => {
                        drop(handle);
                        None
                    }
                };
                inner.conns.push(handle);
                self.1.notify_waiters();
                Box::pin(async move { Ok(conn) })
            }
        }
    }
}
