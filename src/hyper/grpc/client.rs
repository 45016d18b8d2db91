//! The client [`Grpc`](super::Grpc) builds, and its response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use ::hyper::body::{Body, Incoming};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower::Service;

use super::status::trailers_only;
use super::GrpcBody;
use crate::client::ClientFuture;
use crate::state::{Snapshot, Stats};
use crate::{BoxError, Client};

/// The inner client: the crate's multiplexed [`Client`] over HTTP/2.
type Inner<B> = Client<Request<B>, Response<Incoming>>;

/// A reconnecting HTTP/2 client to one origin, made by [`Grpc`](super::Grpc)
/// or [`grpc`](super::grpc): the transport of a generated tonic client.
///
/// It is the crate's multiplexed [`Client`] (see [`get_ref`](Self::get_ref)),
/// whose own failures come back as gRPC statuses.
///
/// # Errors as gRPC statuses
///
/// A gRPC client reads a failed call's code from the response; an `Err`
/// from its transport is mapped by the client's own rules, and tonic calls
/// every error it does not know `Unknown`. So a call that one of this
/// crate's errors fails is answered with a gRPC "Trailers-Only" response,
/// as gRPC proxies answer for their own failures: HTTP 200,
/// `content-type: application/grpc`, no body, and these headers, which
/// tonic reads into the call's `Status`:
///
/// - `grpc-status`: the code below;
/// - `grpc-message`: the error and its `source()` chain, joined by `": "`
///   (so the `Status`'s message names the crate's error and its cause);
/// - `tower-redial-error`: which of the crate's errors it was (in the
///   `Status`'s metadata), as in the table.
///
/// | the crate's error | gRPC code | `tower-redial-error` | did the call run? |
/// |---|---|---|---|
/// | [`Unavailable`](crate::error::Unavailable): down past the wait limit, failed fast | `UNAVAILABLE` (14) | `unavailable` | no |
/// | [`NotSent`](crate::error::NotSent), not sent again (past the attempts, or a refused stream whose body hyper had read) | `UNAVAILABLE` (14) | `not-sent` | no |
/// | [`ConnectionLost`](crate::error::ConnectionLost): the connection broke under the call | `UNAVAILABLE` (14) | `connection-lost` | **maybe** |
/// | [`Closed`](crate::error::Closed): the client gave up for good | `UNAVAILABLE` (14) | `closed` | no |
/// | [`ResponseTimeout`](crate::error::ResponseTimeout) | `DEADLINE_EXCEEDED` (4) | `response-timeout` | maybe |
/// | [`Overloaded`](crate::error::Overloaded): the queue was full, load shed | `RESOURCE_EXHAUSTED` (8) | `overloaded` | no |
/// | [`Panicked`](crate::error::Panicked) | `INTERNAL` (13) | `panicked` | no |
/// | anything else: hyper's and h2's own errors, the request body's | the error itself, as `Err`: tonic maps it (an h2 `REFUSED_STREAM` to `UNAVAILABLE`, …) | — | — |
///
/// These follow gRPC's status-code guidance and what grpc-go's transport
/// reports: a connection that cannot be made, or that is lost under a
/// call, is `UNAVAILABLE`, the code gRPC retry policies retry on. **A
/// lost connection is ambiguous**: grpc-go reports `UNAVAILABLE` for it
/// too, though the server may have run the call; a retry rule keyed on
/// `UNAVAILABLE` re-runs such a call. Tell it from a call that never left
/// with the `tower-redial-error` metadata (`connection-lost`). A full
/// queue is `RESOURCE_EXHAUSTED`, as tonic's server answers for tower's
/// load shedding: the client's own limit, to back off from, not an
/// outage. A panic is `INTERNAL`: an invariant broke.
///
/// The first of the crate's errors in the error's chain decides the row.
/// `poll_ready`'s own failures are answered the same way, by the next
/// `call` (tonic's generated clients call every error of `poll_ready`
/// `Unknown`).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::ServiceExt;
/// use tower_redial::ReconnectPolicy;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_redial::BoxError> {
/// // Nothing listens on port 1: the call fails fast past the wait limit.
/// let policy = ReconnectPolicy::builder()
///     .wait_limit(std::time::Duration::from_millis(50))
///     .build()?;
/// let client = tower_redial::hyper::grpc("http://127.0.0.1:1", policy)?;
///
/// let request = http::Request::post("/grpc.health.v1.Health/Check").body(Full::new(Bytes::new()))?;
/// let response = client.oneshot(request).await?;
/// let headers = response.headers();
/// assert_eq!(headers["grpc-status"], "14"); // UNAVAILABLE
/// assert_eq!(headers["tower-redial-error"], "unavailable");
/// // The crate's error, then its source (the last dial error).
/// let message = headers["grpc-message"].to_str()?;
/// assert!(message.starts_with(r#"connection to "127.0.0.1:1" unavailable for "#), "{message}");
/// # Ok(())
/// # }
/// ```
pub struct GrpcClient<B> {
    inner: Inner<B>,
    /// A `poll_ready` failure to answer the next call with.
    failed: Option<BoxError>,
}

impl<B> GrpcClient<B> {
    pub(super) fn new(inner: Inner<B>) -> Self {
        Self {
            inner,
            failed: None,
        }
    }

    /// The crate's client inside, for what it offers beyond this, such as
    /// [`connected`](Client::connected).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_redial::BoxError> {
    /// let transport = tower_redial::hyper::Grpc::builder("http://127.0.0.1:50051").build::<String>()?;
    /// let client: &tower_redial::Client<_, _> = transport.get_ref();
    /// assert_eq!(client.stats().dials, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get_ref(&self) -> &Inner<B> {
        &self.inner
    }

    /// The connection's state: [`Client::state`].
    pub fn state(&self) -> watch::Receiver<Snapshot> {
        self.inner.state()
    }

    /// The client's counters: [`Client::stats`].
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }
}

impl<B> Service<Request<B>> for GrpcClient<B>
where
    B: Body + Send + 'static,
{
    type Response = Response<GrpcBody>;
    type Error = BoxError;
    type Future = GrpcFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) if trailers_only(&*error).is_some() => {
                self.failed = Some(error);
                Poll::Ready(Ok(()))
            }
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn call(&mut self, request: Request<B>) -> GrpcFuture<B> {
        let state = match self.failed.take() {
            Some(error) => State::Failed { error: Some(error) },
            None => State::Called {
                future: self.inner.call(request),
            },
        };
        GrpcFuture { state }
    }
}

impl<B> Clone for GrpcClient<B>
where
    B: Send + 'static,
{
    /// A clone of the client, not ready: readiness does not survive `Clone`.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

impl<B> fmt::Debug for GrpcClient<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcClient")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// The response future of [`GrpcClient`]: the server's response, or a
    /// Trailers-Only response for one of the crate's errors.
    pub struct GrpcFuture<B>
    where
        B: Send,
        B: 'static,
    {
        #[pin]
        state: State<B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B>
    where
        B: Send,
        B: 'static,
    {
        Called { #[pin] future: ClientFuture<Request<B>, Response<Incoming>> },
        Failed { error: Option<BoxError> },
    }
}

impl<B> Future for GrpcFuture<B>
where
    B: Send + 'static,
{
    type Output = Result<Response<GrpcBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let error = match self.project().state.project() {
            StateProj::Called { future } => match ready!(future.poll(cx)) {
                Ok(response) => return Poll::Ready(Ok(response.map(GrpcBody::from))),
                Err(error) => error,
            },
            StateProj::Failed { error } => error.take().expect("GrpcFuture polled after it ended"),
        };
        Poll::Ready(trailers_only(&*error).ok_or(error))
    }
}

impl<B> fmt::Debug for GrpcFuture<B>
where
    B: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcFuture").finish_non_exhaustive()
    }
}
