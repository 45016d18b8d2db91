//! The wait limit for a service with no single connection: a balancer.
//!
//! A balanced client's endpoints never fail fast on their own, so that the
//! balancer routes around the ones that redial. This gate sits above the
//! balancer instead: while no endpoint is ready, requests wait; once none has
//! been ready for the wait limit, requests fail fast with [`Unavailable`]
//! until one is ready again.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::Service;

use crate::driver::{Drive, Drove};
use crate::error::Unavailable;
use crate::failed::OrFailed;
use crate::state::{Counter, Down, Observer, Phase};
use crate::timer::WaitLimit;
use crate::BoxError;

pub(crate) struct FailFast<S> {
    inner: S,
    wait_limit: Duration,
    /// Running while the inner service is not ready.
    wait: Option<WaitLimit>,
    /// Whether the last `poll_ready` found the inner service ready.
    inner_ready: bool,
    phase: Phase,
    observer: Arc<Observer>,
}

impl<S> FailFast<S> {
    pub(crate) fn new(inner: S, wait_limit: Duration, observer: Arc<Observer>) -> Self {
        Self {
            inner,
            wait_limit,
            wait: None,
            inner_ready: false,
            phase: Phase::Idle,
            observer,
        }
    }

    fn publish(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            let down = self.wait.as_ref().map(|wait| Down {
                since: wait.since(),
                attempts: 0,
                last_error: None,
            });
            self.observer.publish(phase, down);
        }
    }

    fn failing(&self) -> bool {
        self.wait.as_ref().is_some_and(WaitLimit::passed)
    }
}

impl<S, Req> Service<Req> for FailFast<S>
where
    S: Service<Req, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = OrFailed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.inner_ready = true;
                self.wait = None;
                self.publish(Phase::Ready);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => {
                self.publish(Phase::Closed);
                Poll::Ready(Err(error))
            }
            Poll::Pending => {
                self.inner_ready = false;
                let wait_limit = self.wait_limit;
                let wait = self
                    .wait
                    .get_or_insert_with(|| WaitLimit::start(Instant::now(), wait_limit));
                if !wait.poll_passed(cx) {
                    self.publish(Phase::Connecting);
                    return Poll::Pending;
                }
                if self.phase != Phase::FailFast {
                    tracing::warn!(wait_limit = ?self.wait_limit, "no endpoint ready; failing requests fast");
                }
                self.publish(Phase::FailFast);
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if self.inner_ready {
            self.inner_ready = false;
            return OrFailed::running(self.inner.call(request));
        }
        let wait = self
            .wait
            .as_ref()
            .filter(|wait| wait.passed())
            .expect("FailFast::call called before poll_ready returned Ready(Ok)");
        self.observer.count(Counter::FailFast);
        let down_for = Instant::now().saturating_duration_since(wait.since());
        OrFailed::failed(Unavailable::new(
            self.observer.label().clone(),
            down_for,
            0,
            None,
        ))
    }
}

impl<S, Req> Drive<Req> for FailFast<S>
where
    S: Service<Req, Error = BoxError>,
{
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Drove {
        match self.poll_ready(cx) {
            Poll::Ready(Ok(())) => Drove::Ready,
            Poll::Ready(Err(_)) => Drove::Closed,
            Poll::Pending => Drove::Waiting,
        }
    }
}

impl<S> fmt::Debug for FailFast<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailFast")
            .field("wait_limit", &self.wait_limit)
            .field("failing", &self.failing())
            .finish_non_exhaustive()
    }
}
