//! The wait limit for a service with no single connection: a balancer.
//!
//! A balanced client's endpoints never fail fast on their own, so that the
//! balancer routes around the ones that redial. This gate sits above the
//! balancer instead: while no endpoint is ready, requests wait; once none has
//! been ready for the wait limit, requests fail fast with [`Unavailable`]
//! until one is ready again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use crate::error::Unavailable;
use crate::state::{Counter, Observer, Phase};
use crate::timer::Timer;
use crate::BoxError;

pub(crate) struct FailFast<S> {
    inner: S,
    wait_limit: Duration,
    timer: Timer,
    /// When the inner service was last seen not ready, if it is not ready now.
    unready_since: Option<Instant>,
    /// Whether the last `poll_ready` found the inner service ready.
    inner_ready: bool,
    failing: bool,
    phase: Phase,
    observer: Arc<Observer>,
}

impl<S> FailFast<S> {
    pub(crate) fn new(inner: S, wait_limit: Duration, observer: Arc<Observer>) -> Self {
        Self {
            inner,
            wait_limit,
            timer: Timer::default(),
            unready_since: None,
            inner_ready: false,
            failing: false,
            phase: Phase::Idle,
            observer,
        }
    }

    fn publish(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.observer.publish(phase, 0, None);
        }
    }
}

impl<S, Req> Service<Req> for FailFast<S>
where
    S: Service<Req, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.inner_ready = true;
                self.unready_since = None;
                self.failing = false;
                self.publish(Phase::Ready);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => {
                self.publish(Phase::Closed);
                Poll::Ready(Err(error))
            }
            Poll::Pending => {
                self.inner_ready = false;
                if self.failing {
                    return Poll::Ready(Ok(()));
                }
                if self.unready_since.is_none() {
                    let now = Instant::now();
                    self.unready_since = Some(now);
                    self.timer.arm(now + self.wait_limit);
                    self.publish(Phase::Connecting);
                }
                if !self.timer.poll_expired(cx) {
                    return Poll::Pending;
                }
                tracing::warn!(wait_limit = ?self.wait_limit, "no endpoint ready; failing requests fast");
                self.failing = true;
                self.publish(Phase::FailFast);
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if self.inner_ready {
            self.inner_ready = false;
            return GateFuture::Inner {
                future: self.inner.call(request),
            };
        }
        assert!(
            self.failing,
            "FailFast::call called before poll_ready returned Ready(Ok)"
        );
        self.observer.count(Counter::FailFast);
        let down_for = self.unready_since.map_or(Duration::ZERO, |t| t.elapsed());
        GateFuture::Failed {
            error: Some(Unavailable::new(down_for, 0, None).into()),
        }
    }
}

impl<S> fmt::Debug for FailFast<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailFast")
            .field("wait_limit", &self.wait_limit)
            .field("failing", &self.failing)
            .finish_non_exhaustive()
    }
}

pin_project! {
    #[project = GateProj]
    pub(crate) enum GateFuture<F> {
        Inner { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F, T> Future for GateFuture<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GateProj::Inner { future } => future.poll(cx),
            GateProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}
