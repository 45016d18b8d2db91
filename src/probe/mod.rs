//! An idle probe: find a silent dead connection before a request is sent on it.
//!
//! A connection whose peer vanished without a word (a blackholed network, a
//! pulled cable, a crashed host behind a NAT) gives no kernel error for a
//! long time: requests sent on it just hang. [`IdleProbe`] wraps a
//! connection and, once nothing has come back on it for a while, sends a
//! cheap request of your choosing (a Redis `PING`, a `SELECT 1`, a health
//! check). If the probe fails, or gets no reply within its timeout, the
//! connection is marked dead: its `poll_ready` fails with [`ProbeFailed`],
//! so [`Reconnect`](crate::reconnect::Reconnect) drops it and redials before the next
//! request is sent, instead of sending that request into the void.
//!
//! [`IdleProbeLayer`] applies the probe to every connection a factory makes;
//! put it under the [`ReconnectLayer`](crate::ReconnectLayer).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_redial::probe::IdleProbeLayer;
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // A toy factory whose connections are cheap to clone (multiplexed), as
//! // the probe requires.
//! let make_connection = service_fn(|_target: &'static str| async move {
//!     let connection = service_fn(|command: String| async move {
//!         Ok::<_, BoxError>(if command == "PING" { "PONG".to_string() } else { command })
//!     });
//!     Ok::<_, BoxError>(connection)
//! });
//!
//! let maker = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     // After 30 s without traffic, send `PING`; no reply within 2 s means dead.
//!     .layer(IdleProbeLayer::new(
//!         "PING".to_string(),
//!         Duration::from_secs(30),
//!         Duration::from_secs(2),
//!     ))
//!     .service(make_connection);
//!
//! let client = maker.client("db-1");
//! assert_eq!(client.oneshot("hello".to_string()).await?, "hello");
//! # Ok(())
//! # }
//! ```
//!
//! # When a dead connection is noticed
//!
//! The probe marks the connection dead in the background, and wakes the
//! task that last polled the connection's readiness (see
//! [`CloseWatch`](crate::connect::CloseWatch)): a [`Client`](crate::Client)'s own task, which drops the
//! connection and redials at once, with no request needed. The next request
//! goes to the new connection rather than to the dead one.
//!
//! # Or a response timeout
//!
//! A server that accepts and reads but never answers is silent only while
//! a request waits on it. The policy's
//! [`response_timeout`](crate::ReconnectPolicyBuilder::response_timeout)
//! (off by default) fails such a request with
//! [`ResponseTimeout`](crate::error::ResponseTimeout) and, on a connection that
//! serves one request at a time, counts the connection as dead, so it is
//! redialed. The probe finds a silent peer before a request is sent; the
//! timeout bounds the request that finds it first. They work together.
//!
//! # Clone
//!
//! The probe runs on a task of its own, which holds a clone of the
//! connection, so the connection must be `Clone` and usable from clones at
//! once: a multiplexed connection (the `redis` crate's, an HTTP/2
//! `SendRequest`, a `tokio-postgres` client) or one behind
//! [`tower::buffer::Buffer`]. The task ends when the wrapper and all its
//! clones are dropped, or when the probe fails.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::BoxError;

mod idle;

pub use idle::{IdleProbe, ProbeFailed, ProbedFuture};

/// Applies an [`IdleProbe`] to every connection a factory makes.
///
/// See the [module docs](crate::probe) for an example.
#[derive(Clone, Debug)]
pub struct IdleProbeLayer<Req> {
    config: Config<Req>,
}

#[derive(Clone, Debug)]
struct Config<Req> {
    probe: Req,
    idle: Duration,
    timeout: Duration,
}

impl<Req> IdleProbeLayer<Req> {
    /// Probes each connection with a clone of `probe` once no response has
    /// come back on it for `idle`; a probe that fails or gets no reply within
    /// `timeout` marks the connection dead. See [`IdleProbe`] for the details.
    pub const fn new(probe: Req, idle: Duration, timeout: Duration) -> Self {
        Self {
            config: Config {
                probe,
                idle,
                timeout,
            },
        }
    }
}

impl<M, Req: Clone> Layer<M> for IdleProbeLayer<Req> {
    type Service = MakeIdleProbe<M, Req>;

    fn layer(&self, make: M) -> Self::Service {
        MakeIdleProbe {
            make,
            config: self.config.clone(),
        }
    }
}

/// A connection factory whose connections are wrapped in an [`IdleProbe`];
/// made by [`IdleProbeLayer`].
#[derive(Clone, Debug)]
pub struct MakeIdleProbe<M, Req> {
    make: M,
    config: Config<Req>,
}

impl<M, T, Req> Service<T> for MakeIdleProbe<M, Req>
where
    M: Service<T>,
    M::Response: Service<Req> + Clone + Send + 'static,
    <M::Response as Service<Req>>::Error: Into<BoxError>,
    <M::Response as Service<Req>>::Future: Send,
    Req: Clone + Send + 'static,
{
    type Response = IdleProbe<M::Response>;
    type Error = M::Error;
    type Future = MakeIdleProbeFuture<M::Future, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.make.poll_ready(cx)
    }

    fn call(&mut self, target: T) -> Self::Future {
        MakeIdleProbeFuture {
            future: self.make.call(target),
            config: Some(self.config.clone()),
        }
    }
}

pin_project! {
    /// The future of [`MakeIdleProbe`]: makes the connection, then starts
    /// its probe.
    pub struct MakeIdleProbeFuture<F, Req> {
        #[pin]
        future: F,
        config: Option<Config<Req>>,
    }
}

impl<F, S, E, Req> Future for MakeIdleProbeFuture<F, Req>
where
    F: Future<Output = Result<S, E>>,
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    Req: Clone + Send + 'static,
{
    type Output = Result<IdleProbe<S>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let connection = ready!(this.future.poll(cx))?;
        let config = this.config.take().expect("polled after completion");
        Poll::Ready(Ok(IdleProbe::new(
            connection,
            config.probe,
            config.idle,
            config.timeout,
        )))
    }
}

impl<F, Req> fmt::Debug for MakeIdleProbeFuture<F, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeIdleProbeFuture")
            .finish_non_exhaustive()
    }
}
