//! Catching panics in user code, so that one bug in a factory, handshake or
//! connection fails the requests it touched instead of the client.
//!
//! A panic unwinds through whatever the code was in the middle of; the
//! code it came from is treated as broken from then on: a dial that
//! panicked failed, and a connection that panicked is dead and is dropped.
//! That is why asserting unwind safety is sound here.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::error::{Panicked, ResponseTimeout};
use crate::failed::OrFailed;
use crate::timer::deadline;
use crate::BoxError;

/// Runs `f`, turning a panic into a [`Panicked`] error from `site`.
pub(crate) fn catch<R>(site: &'static str, f: impl FnOnce() -> R) -> Result<R, Panicked> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        tracing::error!(site, "caught a panic; the connection counts as dead");
        Panicked::new(site, &*payload)
    })
}

/// Polls `future`, turning a panic into an error.
pub(crate) fn poll_caught<F, T, E>(
    site: &'static str,
    future: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, BoxError>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    match catch(site, || future.poll(cx)) {
        Ok(poll) => poll.map_err(Into::into),
        Err(panicked) => Poll::Ready(Err(panicked.into())),
    }
}

/// A connection whose `poll_ready`, `call` and response futures turn panics
/// into [`Panicked`] errors, and whose responses fail with
/// [`ResponseTimeout`] past the policy's response timeout, if it has one:
/// the direct lane calls connections on the callers' tasks through it.
#[derive(Clone, Debug)]
pub(crate) struct CatchPanic<S> {
    inner: S,
    response_timeout: Option<Duration>,
}

impl<S> CatchPanic<S> {
    pub(crate) fn new(inner: S, response_timeout: Option<Duration>) -> Self {
        Self {
            inner,
            response_timeout,
        }
    }
}

impl<S, Req> Service<Req> for CatchPanic<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = OrFailed<Caught<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match catch(POLL_READY, || self.inner.poll_ready(cx)) {
            Ok(poll) => poll.map_err(Into::into),
            Err(panicked) => Poll::Ready(Err(panicked.into())),
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match catch(CALL, || self.inner.call(request)) {
            Ok(future) => OrFailed::running(Caught {
                future,
                deadline: self.response_timeout.map(|after| {
                    let at = deadline(Instant::now(), after);
                    (Box::pin(tokio::time::sleep_until(at)), after)
                }),
            }),
            Err(panicked) => OrFailed::failed(panicked),
        }
    }
}

/// Where a connection's panic came from.
pub(crate) const POLL_READY: &str = "the connection's `poll_ready`";
pub(crate) const CALL: &str = "the connection's `call`";
pub(crate) const RESPONSE: &str = "the connection's response future";

pin_project! {
    /// A response future whose panics become errors, and which fails with
    /// [`ResponseTimeout`] past its deadline, if it has one.
    pub(crate) struct Caught<F> {
        #[pin]
        future: F,
        deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    }
}

impl<F, T, E> Future for Caught<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let poll = poll_caught(RESPONSE, this.future, cx);
        if let (Poll::Pending, Some((sleep, after))) = (&poll, this.deadline) {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(ResponseTimeout::new(*after).into()));
            }
        }
        poll
    }
}
