//! Named response futures.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use sync_wrapper::SyncFuture;
use tower::buffer::Buffer;
use tower::retry::{Policy, Retry};
use tower::util::Oneshot;
use tower::ServiceExt;

use crate::client::Shared;
use crate::error::{Closed, NotSent, ResponseTimeout};
use crate::health::Health;
use crate::panic::{poll_caught, RESPONSE};
use crate::retry::{RetryPolicy, Slot};
use crate::BoxError;

/// The boxed future that crosses the queue to the worker.
pub(crate) type BoxResponse<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Reconnect`](crate::reconnect::Reconnect).
    ///
    /// It reports back to the service: a success proves the connection
    /// healthy, and an error the [`Classifier`](crate::classify::Classifier) calls dead
    /// has the connection dropped and redialed before the next request.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
            health: Arc<Health>,
            deadline: Option<Deadline>,
            poison: Option<Poison>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

/// Kills a one-at-a-time connection if the request is dropped before its
/// response completes: the reply, still on its way, would answer the next
/// request.
pub(crate) struct Poison(Option<Arc<Health>>);

impl Poison {
    pub(crate) fn new(health: &Arc<Health>) -> Self {
        Self(Some(health.clone()))
    }

    /// The response is complete: dropping the request now is harmless.
    fn defuse(slot: &mut Option<Poison>) {
        if let Some(mut poison) = slot.take() {
            poison.0 = None;
        }
    }
}

impl Drop for Poison {
    fn drop(&mut self) {
        if let Some(health) = self.0.take() {
            let error: BoxError =
                "a request was dropped before its response came: the connection may be out of step"
                    .into();
            health.kill(&error);
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
        poison: Option<Poison>,
    ) -> Self {
        Self {
            kind: Kind::Called {
                future,
                health,
                deadline,
                poison,
            },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
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
        match self.project().kind.project() {
            KindProj::Called {
                future,
                health,
                deadline,
                poison,
            } => {
                let poll = poll_caught(RESPONSE, future, cx);
                if poll.is_pending() {
                    if let Some(deadline) = deadline {
                        if deadline.sleep.as_mut().poll(cx).is_ready() {
                            let error: BoxError = ResponseTimeout::new(deadline.after).into();
                            if deadline.kills {
                                health.kill(&error);
                            }
                            Poison::defuse(poison);
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                let result = ready!(poll);
                // Complete: dropping it now leaves nothing on the wire.
                Poison::defuse(poison);
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
            KindProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

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
        kind: SyncFuture<ClientKind<Req, Res>>,
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
        Shed { error: Option<BoxError> },
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
            kind: SyncFuture::new(ClientKind::Queued { future, first }),
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
            kind: SyncFuture::new(ClientKind::Direct { future, first }),
        }
    }

    pub(crate) fn shed(error: BoxError) -> Self {
        Self {
            kind: SyncFuture::new(ClientKind::Shed { error: Some(error) }),
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
                ClientKindProj::Shed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")))
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
        let closed = crate::classify::chain(&*error).find_map(|e| e.downcast_ref::<Closed>());
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

pin_project! {
    /// The future of [`Handshake`](crate::connect::Handshake): connect, then handshake.
    pub struct HandshakeFuture<C, H, F> {
        #[pin]
        state: HandshakeState<C, F>,
        handshake: H,
    }
}

pin_project! {
    #[project = HandshakeProj]
    enum HandshakeState<C, F> {
        Connecting { #[pin] future: C },
        Handshaking { #[pin] future: F },
    }
}

impl<C, H, F> HandshakeFuture<C, H, F> {
    pub(crate) fn new(connecting: C, handshake: H) -> Self {
        Self {
            state: HandshakeState::Connecting { future: connecting },
            handshake,
        }
    }
}

impl<C, H, F, IO, CE, S, E> Future for HandshakeFuture<C, H, F>
where
    C: Future<Output = Result<IO, CE>>,
    CE: Into<BoxError>,
    H: FnMut(IO) -> F,
    F: Future<Output = Result<S, E>>,
    E: Into<BoxError>,
{
    type Output = Result<S, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                HandshakeProj::Connecting { future } => {
                    let io = ready!(future.poll(cx)).map_err(Into::into)?;
                    let future = (this.handshake)(io);
                    this.state.set(HandshakeState::Handshaking { future });
                }
                HandshakeProj::Handshaking { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
            }
        }
    }
}

impl<C, H, F> fmt::Debug for HandshakeFuture<C, H, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeFuture").finish_non_exhaustive()
    }
}

/// The future of [`TcpConnector`](crate::connect::TcpConnector).
pub struct TcpConnecting {
    inner: Pin<Box<dyn Future<Output = std::io::Result<tokio::net::TcpStream>> + Send>>,
}

impl TcpConnecting {
    pub(crate) fn new(
        inner: Pin<Box<dyn Future<Output = std::io::Result<tokio::net::TcpStream>> + Send>>,
    ) -> Self {
        Self { inner }
    }
}

impl Future for TcpConnecting {
    type Output = std::io::Result<tokio::net::TcpStream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for TcpConnecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConnecting").finish_non_exhaustive()
    }
}
