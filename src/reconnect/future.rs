//! The response future of [`Reconnect`](super::Reconnect): it reports each
//! response back to its connection's health.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::error::ResponseTimeout;
use crate::failed::OrFailed;
use crate::health::Health;
use crate::panic::{poll_caught, RESPONSE};
use crate::BoxError;

pin_project! {
    /// The response future of [`Reconnect`](crate::reconnect::Reconnect).
    ///
    /// It reports back to the service: a success proves the connection
    /// healthy, and an error the [`Classifier`](crate::classify::Classifier) calls dead
    /// has the connection dropped and redialed before the next request.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: OrFailed<Called<F>>,
    }
}

pin_project! {
    /// A request the connection took, reporting to its [`Health`].
    #[project = CalledProj]
    struct Called<F> {
        #[pin]
        future: F,
        health: Arc<Health>,
        deadline: Option<Deadline>,
        // Set while a one-at-a-time connection's response is incomplete:
        // dropped then, the request kills the connection, as the reply
        // still on its way would answer the next request. A flag on the
        // future, which already holds the connection's health.
        poisoned: bool,
    }

    impl<F> PinnedDrop for Called<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.poisoned {
                let error: BoxError = "a request was dropped before its response came: \
                     the connection may be out of step"
                    .into();
                this.health.kill(&error);
            }
        }
    }
}

/// The policy's response timeout, running for one request.
pub(crate) struct Deadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    after: Duration,
    /// Whether the connection dies with the request: it serves one request
    /// at a time, so a late reply would answer the next one.
    kills: bool,
}

impl Deadline {
    pub(crate) fn new(after: Duration, kills: bool) -> Self {
        let deadline = crate::timer::deadline(tokio::time::Instant::now(), after);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            after,
            kills,
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        future: F,
        health: Arc<Health>,
        deadline: Option<Deadline>,
        poisoned: bool,
    ) -> Self {
        Self {
            inner: OrFailed::running(Called {
                future,
                health,
                deadline,
                poisoned,
            }),
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            inner: OrFailed::failed(error),
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F, T, E> Future for Called<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let CalledProj {
            future,
            health,
            deadline,
            poisoned,
        } = self.project();
        let poll = poll_caught(RESPONSE, future, cx);
        if poll.is_pending() {
            if let Some(deadline) = deadline {
                if deadline.sleep.as_mut().poll(cx).is_ready() {
                    let error: BoxError = ResponseTimeout::new(deadline.after).into();
                    if deadline.kills {
                        health.kill(&error);
                    }
                    *poisoned = false;
                    return Poll::Ready(Err(error));
                }
            }
        }
        let result = ready!(poll);
        // Complete: dropping it now leaves nothing on the wire.
        *poisoned = false;
        match result {
            Ok(response) => {
                health.succeeded();
                Poll::Ready(Ok(response))
            }
            Err(error) => {
                health.failed(&error);
                Poll::Ready(Err(error))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
