//! The client's response future, and the first send's re-send decision.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use sync_wrapper::SyncFuture;
use tower::buffer::Buffer;
use tower::retry::{Policy, Retry};
use tower::util::Oneshot;
use tower::ServiceExt;

use super::Shared;
use crate::error::{Closed, NotSent};
use crate::failed::OrFailed;
use crate::retry::{BoxResponse, RetryPolicy, Slot};
use crate::BoxError;

/// tower's `Retry` over the queue: how failed requests are re-sent.
pub(crate) type Queue<Req, Res> = Retry<RetryPolicy<Req>, Buffer<Slot<Req>, BoxResponse<Res>>>;

type Queued<Res> = tower::buffer::future::ResponseFuture<BoxResponse<Res>>;
type Resend<Req, Res> = Oneshot<Queue<Req, Res>, Slot<Req>>;

pin_project! {
    /// The response future of [`Client`](crate::Client).
    ///
    /// It is `Send` and `Sync` (a `Sync` wrapper lets it be shared, since
    /// it is only ever polled through `&mut`), so the client boxes as
    /// tower's `BoxCloneSyncService` at the end of a `ServiceBuilder`.
    pub struct ClientFuture<Req, Res>
    where
        Req: Send,
        Req: 'static,
        Res: Send,
        Res: 'static,
    {
        #[pin]
        kind: SyncFuture<OrFailed<ClientKind<Req, Res>>>,
    }
}

pin_project! {
    #[project = ClientKindProj]
    enum ClientKind<Req, Res>
    where
        Req: Send,
        Req: 'static,
        Res: Send,
        Res: 'static,
    {
        /// Sent through the queue, to the worker.
        Queued {
            #[pin]
            future: Queued<Res>,
            first: FirstSend<Req, Res>,
        },
        /// Called on the published connection directly.
        Direct {
            #[pin]
            future: BoxResponse<Res>,
            first: FirstSend<Req, Res>,
        },
        /// Failed, and re-sent through tower's `Retry` over the queue. Boxed:
        /// rare, and larger than the rest.
        Resent {
            #[pin]
            inner: Pin<Box<Resend<Req, Res>>>,
            label: Arc<str>,
        },
    }
}

/// What a request's first send keeps, to re-send it if that is safe.
struct FirstSend<Req, Res> {
    /// A copy, if the request is idempotent and re-sends were opted in to.
    spare: Option<Req>,
    /// For a direct call, the generation of the connection it was sent on.
    lane: Option<u64>,
    shared: Arc<Shared<Req, Res>>,
}

impl<Req, Res> FirstSend<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    /// The first send failed: report a dead direct connection, and hand the
    /// request to tower's `Retry` if the retry policy says it may be sent
    /// again.
    fn failed(&mut self, mut error: BoxError) -> Result<Resend<Req, Res>, BoxError> {
        let policy = &self.shared.policy;
        if !NotSent::is_in(&*error) && !policy.is_dead(&*error) {
            // The peer's own answer, or the client's: not a broken connection.
            return Err(error);
        }
        if let Some(generation) = self.lane {
            if policy.is_dead(&*error) {
                self.shared.lane.report_dead(generation);
            }
        }
        let handed_back = error
            .downcast_mut::<NotSent>()
            .and_then(NotSent::take_request::<Req>);
        let mut slot = Slot::shared(handed_back, self.spare.take());
        let mut policy = policy.clone();
        let mut result = Err(error);
        match policy.retry(&mut slot, &mut result) {
            Some(_) => Ok(self.shared.resender(policy).oneshot(slot)),
            None => result.map(|()| unreachable!("the result is an error")),
        }
    }
}

impl<Req, Res> ClientFuture<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    pub(crate) fn queued(
        future: Queued<Res>,
        spare: Option<Req>,
        shared: Arc<Shared<Req, Res>>,
    ) -> Self {
        let first = FirstSend {
            spare,
            lane: None,
            shared,
        };
        Self {
            kind: SyncFuture::new(OrFailed::running(ClientKind::Queued { future, first })),
        }
    }

    pub(crate) fn direct(
        future: BoxResponse<Res>,
        spare: Option<Req>,
        generation: u64,
        shared: Arc<Shared<Req, Res>>,
    ) -> Self {
        let first = FirstSend {
            spare,
            lane: Some(generation),
            shared,
        };
        Self {
            kind: SyncFuture::new(OrFailed::running(ClientKind::Direct { future, first })),
        }
    }

    pub(crate) fn shed(error: BoxError) -> Self {
        Self {
            kind: SyncFuture::new(OrFailed::failed(error)),
        }
    }
}

impl<Req, Res> Future for ClientFuture<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().kind.poll(cx)
    }
}

impl<Req, Res> Future for ClientKind<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self;
        loop {
            let (result, first) = match kind.as_mut().project() {
                ClientKindProj::Queued { future, first } => {
                    let label = first.shared.observer().label();
                    (
                        ready!(future.poll(cx)).map_err(|e| from_buffer(label, e)),
                        first,
                    )
                }
                ClientKindProj::Direct { future, first } => (ready!(future.poll(cx)), first),
                ClientKindProj::Resent { inner, label } => {
                    return inner.poll(cx).map_err(|e| from_buffer(label, e))
                }
            };
            let resend = match result {
                Ok(response) => {
                    first.shared.policy.succeeded();
                    return Poll::Ready(Ok(response));
                }
                Err(error) => first.failed(error)?,
            };
            let label = first.shared.observer().label().clone();
            kind.set(ClientKind::Resent {
                inner: Box::pin(resend),
                label,
            });
        }
    }
}

impl<Req, Res> fmt::Debug for ClientFuture<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFuture").finish_non_exhaustive()
    }
}

/// tower's `Buffer` wraps the worker's failure in its own error types; give
/// callers our [`Closed`] instead, so there is one error to match on.
pub(crate) fn from_buffer(label: &Arc<str>, error: BoxError) -> BoxError {
    use tower::buffer::error::{Closed as BufferClosed, ServiceError};
    if error.is::<ServiceError>() {
        let closed = crate::error::chain(&*error).find_map(|e| e.downcast_ref::<Closed>());
        if let Some(closed) = closed {
            return Box::new(closed.clone());
        }
    }
    if error.is::<BufferClosed>() {
        let source = Some(crate::error::share(error));
        return Box::new(Closed::task_ended(label.clone(), source));
    }
    error
}
