//! Named response futures.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::buffer::Buffer;
use tower::retry::{Policy, Retry};
use tower::util::Oneshot;
use tower::ServiceExt;

use crate::client::Shared;
use crate::error::{Closed, NotSent};
use crate::reconnect::Health;
use crate::retry::{RetryPolicy, Slot};
use crate::BoxError;

/// The boxed future that crosses the queue to the worker.
pub(crate) type BoxResponse<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Reconnect`](crate::Reconnect).
    ///
    /// It reports back to the service: a success proves the connection
    /// healthy, and an error the [`Classifier`](crate::Classifier) calls dead
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
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: F, health: Arc<Health>) -> Self {
        Self {
            kind: Kind::Called { future, health },
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
            KindProj::Called { future, health } => match ready!(future.poll(cx)) {
                Ok(response) => {
                    health.succeeded();
                    Poll::Ready(Ok(response))
                }
                Err(error) => {
                    let error = error.into();
                    health.failed(&error);
                    Poll::Ready(Err(error))
                }
            },
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

pub(crate) type Queue<Req, Res> = Retry<RetryPolicy<Req>, Buffer<Slot<Req>, BoxResponse<Res>>>;

pub(crate) type RetryFuture<Req, Res> = tower::retry::future::ResponseFuture<
    RetryPolicy<Req>,
    Buffer<Slot<Req>, BoxResponse<Res>>,
    Slot<Req>,
>;

pin_project! {
    /// The response future of [`Client`](crate::Client).
    pub struct ClientFuture<Req, Res>
    where
        Req: Send,
        Req: 'static,
        Res: Send,
        Res: 'static,
    {
        #[pin]
        kind: ClientKind<Req, Res>,
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
        /// Through the queue and the worker. Boxed, as are re-sends, to keep
        /// the direct lane's future small.
        Sent { #[pin] inner: Pin<Box<RetryFuture<Req, Res>>> },
        /// Called on the published connection directly.
        Direct {
            #[pin]
            future: BoxResponse<Res>,
            spare: Option<Req>,
            generation: u64,
            shared: Arc<Shared<Req, Res>>,
        },
        /// Failed on the direct lane; re-sent through the queue.
        Resent { #[pin] inner: Pin<Box<Oneshot<Queue<Req, Res>, Slot<Req>>>> },
        Shed { error: Option<BoxError> },
    }
}

impl<Req, Res> ClientFuture<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    pub(crate) fn new(inner: RetryFuture<Req, Res>) -> Self {
        Self {
            kind: ClientKind::Sent {
                inner: Box::pin(inner),
            },
        }
    }

    pub(crate) fn direct(
        future: BoxResponse<Res>,
        spare: Option<Req>,
        generation: u64,
        shared: Arc<Shared<Req, Res>>,
    ) -> Self {
        Self {
            kind: ClientKind::Direct {
                future,
                spare,
                generation,
                shared,
            },
        }
    }

    pub(crate) fn shed(error: BoxError) -> Self {
        Self {
            kind: ClientKind::Shed { error: Some(error) },
        }
    }
}

/// A request failed on the direct lane: report a dead connection, and hand
/// the request to the queue if the retry policy says it may be sent again.
fn after_direct_failure<Req, Res>(
    mut error: BoxError,
    spare: Option<Req>,
    generation: u64,
    shared: &Shared<Req, Res>,
) -> Result<Oneshot<Queue<Req, Res>, Slot<Req>>, BoxError>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    if !shared.policy.is_dead(&*error) {
        // The peer's own answer: the connection is fine, and the request ran.
        return Err(error);
    }
    shared.lane.report_dead(generation);
    let handed_back = error
        .downcast_mut::<NotSent>()
        .and_then(NotSent::take_request::<Req>);
    let mut slot = Slot::from_parts(handed_back, spare);
    let mut policy = shared.policy.clone();
    let mut result = Err(error);
    match policy.retry(&mut slot, &mut result) {
        Some(_) => Ok(shared.resender(policy).oneshot(slot)),
        None => result.map(|()| unreachable!("the result is an error")),
    }
}

impl<Req, Res> Future for ClientFuture<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let resent = match kind.as_mut().project() {
                ClientKindProj::Sent { inner } => return inner.poll(cx).map_err(from_buffer),
                ClientKindProj::Resent { inner } => return inner.poll(cx).map_err(from_buffer),
                ClientKindProj::Shed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")))
                }
                ClientKindProj::Direct {
                    future,
                    spare,
                    generation,
                    shared,
                } => match ready!(future.poll(cx)) {
                    Ok(response) => {
                        shared.policy.succeeded();
                        return Poll::Ready(Ok(response));
                    }
                    Err(error) => after_direct_failure(error, spare.take(), *generation, shared)?,
                },
            };
            kind.set(ClientKind::Resent {
                inner: Box::pin(resent),
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
pub(crate) fn from_buffer(error: BoxError) -> BoxError {
    use tower::buffer::error::{Closed as BufferClosed, ServiceError};
    if error.is::<ServiceError>() {
        let closed = crate::classify::chain(&*error).find_map(|e| e.downcast_ref::<Closed>());
        if let Some(closed) = closed {
            return Box::new(closed.clone());
        }
    }
    if error.is::<BufferClosed>() {
        return Box::new(Closed::new(0, Some(crate::error::share(error))));
    }
    error
}

pin_project! {
    /// The future of [`Handshake`](crate::Handshake): connect, then handshake.
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
