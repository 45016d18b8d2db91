//! HTTP/1 and HTTP/2 connections over hyper's `client::conn`.
//!
//! *Needs the `hyper` feature.*
//!
//! [`http1`] and [`http2`] are handshake functions for
//! [`Handshake`](crate::connect::Handshake): each takes a freshly connected IO, runs
//! hyper's client handshake, spawns the connection's driver task, and returns
//! a connection service, [`Http1Connection`] or [`Http2Connection`]. Paired
//! with a connector and wrapped in [`ReconnectLayer`](crate::ReconnectLayer),
//! that gives an HTTP client that stays connected to one server: it dials
//! lazily, redials with backoff when the connection breaks, and holds
//! requests in its queue meanwhile.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{header, Request};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_redial::connect::{Handshake, TcpConnector};
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?;
//! # tokio::spawn(async move {
//! #     loop {
//! #         let (io, _) = listener.accept().await.unwrap();
//! #         let hello = hyper::service::service_fn(|_| async {
//! #             Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("hello"))))
//! #         });
//! #         tokio::spawn(
//! #             hyper::server::conn::http1::Builder::new()
//! #                 .serve_connection(hyper_util::rt::TokioIo::new(io), hello),
//! #         );
//! #     }
//! # });
//! let client = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(Handshake::new(
//!         TcpConnector::new(),
//!         tower_redial::hyper::http1::<Full<Bytes>>,
//!     ))
//!     .client(addr); // Nothing is dialed until the first request.
//!
//! let request = Request::get("/")
//!     .header(header::HOST, addr.to_string())
//!     .body(Full::new(Bytes::new()))?;
//! let response = client.oneshot(request).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "hello");
//! # Ok(())
//! # }
//! ```
//!
//! For HTTP/2, hand [`http2`] to the [`Handshake`](crate::connect::Handshake)
//! instead, and give requests an absolute URI (`http://host:port/path`):
//! HTTP/2 sends the scheme and authority in every request. For HTTP/2
//! settings (keep-alive pings, windows, streams), hand it
//! [`Http2::handshake`] instead of [`http2`]. For a client to one origin
//! that puts the origin on path-only requests, as tonic sends them, in one
//! line, use [`grpc`] or [`Grpc`].
//!
//! # HTTP/1 or HTTP/2
//!
//! - **HTTP/1** carries one request at a time. [`Http1Connection`]'s
//!   `poll_ready` waits until the previous response has arrived, so the
//!   other requests wait in the client's queue, and a connection that dies
//!   takes at most one request down with it. For more than one request in
//!   flight to the same server, make several clients.
//! - **HTTP/2** multiplexes: [`Http2Connection`] is ready as long as its
//!   connection is open, and every request goes straight to hyper. When the
//!   connection dies, requests still in hyper's queue come back unsent (see
//!   below); those hyper had already passed to HTTP/2 fail, as they may have
//!   been sent.
//!
//! # What is sent again
//!
//! hyper knows when a request it was given never left: its
//! [`try_send_request`](::hyper::client::conn::http1::SendRequest::try_send_request)
//! hands such a request back in a [`TrySendError`]. The connections here
//! turn that into a [`NotSent`] that carries the request, so the client
//! sends it again on the next connection, by default, with no `Clone`
//! needed. This happens when the server closes an idle keep-alive
//! connection just as a request is sent on it, and to the requests still
//! queued in an HTTP/2 connection that dies.
//!
//! | what happened | the error | sent again? |
//! |---|---|---|
//! | the connection closed before hyper wrote the request | [`NotSent`] with the request; its `source()` is hyper's `canceled` error | yes, by default (within the policy's attempts and budget) |
//! | the server reset the HTTP/2 stream with `REFUSED_STREAM` | [`NotSent`] that [keeps the connection](NotSent::keep_connection), carrying the request if hyper had not read its body | yes, by default when it carries the request; else when opted in |
//! | the server's HTTP/2 GOAWAY reached the request (hyper reports it also on a stream it had just opened, which the server may run) | [`ConnectionLost`] with hyper's error as its `source()` | only if you opted in with [`resend_if`](crate::ReconnectLayer::resend_if) |
//! | the connection broke after the request may have been written (an incomplete message, a reset, a closed channel, a keep-alive timeout) | [`ConnectionLost`] with hyper's error as its `source()` | only if you opted in with [`resend_if`](crate::ReconnectLayer::resend_if) |
//! | anything else hyper reports (a malformed response, the request body's own error) | the [`hyper::Error`] itself | no; the connection is kept unless its `poll_ready` then fails |
//! | the server answered, whatever the status | `Ok(response)`: a `503` is an answer, not an error | no |
//!
//! # Re-sending idempotent requests
//!
//! A request that may have reached the server is never sent again by
//! default: a `POST` could then run twice. To opt in for requests that are
//! safe to repeat, use [`ReconnectLayer::resend_if`](crate::ReconnectLayer::resend_if)
//! with a predicate. Such a request is sent again when it failed with a
//! [`NotSent`] or a [`ConnectionLost`]:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Method, Request};
//! use http_body_util::Full;
//! use tower::ServiceBuilder;
//! use tower_redial::connect::{Handshake, TcpConnector};
//! use tower_redial::{ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_redial::BoxError> {
//! let layer = ReconnectLayer::new(ReconnectPolicy::default()).resend_if(|request: &Request<Full<Bytes>>| {
//!     matches!(*request.method(), Method::GET | Method::HEAD | Method::PUT | Method::DELETE)
//! });
//! let client = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(Handshake::new(TcpConnector::new(), tower_redial::hyper::http1))
//!     .client("127.0.0.1:8080");
//! # drop(client);
//! # Ok(())
//! # }
//! ```
//!
//! Opting in needs requests that are `Clone`, as a copy is kept to send
//! again: `http::Request<B>` is `Clone` when its body is, as
//! [`Full`](https://docs.rs/http-body-util/latest/http_body_util/struct.Full.html)
//! and `Empty` are. A streaming body is not, and such requests keep the
//! default: they are sent again only when hyper hands them back unsent.
//!
//! # Classifying hyper's errors
//!
//! hyper reports some dead connections without an IO error in the
//! `source()` chain: "connection closed before message completed", "channel
//! closed", "operation was canceled", an HTTP/2 GOAWAY from the server.
//! [`is_hyper_transport_error`] recognises those, by type.
//! [`Http1Connection`] and [`Http2Connection`] apply it to every error
//! they return, and wrap each transport failure in a [`ConnectionLost`],
//! which the default classifier calls dead. So no classifier needs to be
//! set, and the default classifier does not change with this feature.
//! hyper's error stays reachable: find it with [`hyper_error`].
//!
//! [`classifier`] is for a connection of your own around hyper's
//! `SendRequest`, whose errors come out of hyper unwrapped.
//!
//! # Your own hyper settings
//!
//! [`http1`] and [`http2`] use hyper's defaults; [`Http2`] carries hyper's
//! HTTP/2 settings. For other settings, write the
//! handshake function yourself with hyper's builder, spawn the connection,
//! and wrap the sender with [`Http1Connection::new`] or
//! [`Http2Connection::new`] (whose body type is [`Resendable`]; its docs
//! show the HTTP/2 handshake):
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::client::conn::http1;
//! use hyper_util::rt::TokioIo;
//! use tokio::net::TcpStream;
//! use tower_redial::hyper::Http1Connection;
//!
//! async fn handshake(io: TcpStream) -> Result<Http1Connection<Full<Bytes>>, hyper::Error> {
//!     let (sender, connection) = http1::Builder::new()
//!         .title_case_headers(true)
//!         .handshake(TokioIo::new(io))
//!         .await?;
//!     tokio::spawn(connection);
//!     Ok(Http1Connection::new(sender))
//! }
//! # let _ = tower_redial::connect::Handshake::new(tower_redial::connect::TcpConnector::new(), handshake);
//! ```
//!
//! # With tonic
//!
//! A generated tonic client takes any service from `http::Request` to
//! `http::Response` as its transport. [`grpc`] makes one in a line, a
//! [`GrpcClient`]: an HTTP/2 client bound to the origin, which puts the
//! origin's scheme and authority on tonic's path-only requests. So tonic
//! gets this crate's reconnect, queue and fail-fast in place of its own
//! `Channel`, with no codegen or extra feature:
//!
//! ```text
//! let health = HealthClient::new(tower_redial::hyper::grpc("http://127.0.0.1:50051", ReconnectPolicy::grpc())?);
//! ```
//!
//! [`Grpc`] is the same with settings: the policy, [`Http2`] (keep-alive
//! pings among them), TLS for an `https` origin in one call (`Grpc::tls`,
//! the `tls` feature), or a connector of your own. The README's "Using it
//! with tonic" section is a whole program, run as a doc test.
//!
//! The crate's own failures reach the caller as gRPC codes: the client
//! answers them with a gRPC "Trailers-Only" response, which tonic reads as
//! the call's `Status` (`UNAVAILABLE` for an outage or a lost connection,
//! `DEADLINE_EXCEEDED` for a response timeout, the crate's error in the
//! message and in the `tower-redial-error` metadata). tonic alone would
//! call them `Unknown`. The table, and why not an error of tonic's making:
//! [`GrpcClient`](GrpcClient#errors-as-grpc-statuses). A transport built
//! by hand (a [`ReconnectLayer`](crate::ReconnectLayer) over [`http2`])
//! returns the crate's errors as they are, and tonic calls them `Unknown`.
//!
//! Why not tonic's `Channel`, or `Endpoint::connect_with_connector`? Both
//! leave the reconnect to the `Channel`, which, when connected lazily,
//! reports ready after a failed dial and fails the next request instead
//! (tonic #2839). Here the client stays `Pending` while it redials, and
//! requests wait in its queue, up to the wait limit. gRPC requests have a
//! streaming body and are not `Clone`: a call that hyper hands back unsent
//! is sent again, but one that may have reached the server comes back as a
//! `Status`, and the application decides whether to call again. The
//! `tonic` example shows a server crash ridden through.
//!
//! In a graceful restart (tonic's `serve_with_shutdown`), two failures
//! reach gRPC callers through [`GrpcClient`], and neither call is sent
//! again:
//!
//! - a call whose stream the server refused fails with `Unavailable`
//!   (`tower-redial-error: not-sent`). It never ran, but hyper had already
//!   read its body, so it cannot be rebuilt;
//! - a call caught by the server's GOAWAY, or by the socket closing as the
//!   server ends its shutdown, fails with `Unavailable`
//!   (`connection-lost`; tonic alone says `Internal` for the GOAWAY, tonic's
//!   code for one with `NO_ERROR`, and `Unknown` for the closed socket). It
//!   may be one the server never saw, or one it ran: hyper reports both the
//!   same way.
//!
//! # Tasks
//!
//! Each connection's driver runs on a task spawned with `tokio::spawn`. It
//! ends when the connection closes, or once the connection service (with
//! all its clones) and every response body it returned are dropped.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use ::hyper::body::{Body, Incoming};
use ::hyper::client::conn::{http1 as h1, http2 as h2, TrySendError};
use http::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Service;

use crate::boxed::boxed_future;
use crate::classify::is_transport_error;
use crate::classify::Classifier;
use crate::connect::CloseWatch;
use crate::error::chain;
use crate::error::ConnectionLost;
use crate::error::NotSent;
use crate::BoxError;

mod grpc;
mod options;
mod refused;

pub use grpc::{grpc, Grpc, GrpcBody, GrpcClient, GrpcFuture, InvalidOrigin};
pub use options::{Http2, Http2Handshaking};
pub use refused::Resendable;
use refused::{is_go_away, is_refused, Spare};

/// Makes an HTTP/1 connection over `io`: hyper's client handshake, with the
/// connection's driver spawned on the tokio runtime.
///
/// A handshake function for [`Handshake`](crate::connect::Handshake); name the
/// request body type, as in `tower_redial::hyper::http1::<Full<Bytes>>`.
/// See the [module docs](self) for an example.
///
/// # Errors
///
/// hyper's error if the handshake fails.
///
/// # Panics
///
/// If called outside a tokio runtime.
pub async fn http1<B>(
    io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
) -> Result<Http1Connection<B>, ::hyper::Error>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (sender, connection) = h1::handshake(TokioIo::new(io)).await?;
    let closed = CloseWatch::new();
    tokio::spawn(watch(connection, closed.clone(), "HTTP/1"));
    Ok(Http1Connection::new(sender).with_close_watch(closed))
}

/// Makes an HTTP/2 connection over `io` (with prior knowledge, no TLS or
/// upgrade): hyper's client handshake, with the connection's driver spawned
/// on the tokio runtime.
///
/// A handshake function for [`Handshake`](crate::connect::Handshake); name the
/// request body type, as in `tower_redial::hyper::http2::<Full<Bytes>>`.
/// Requests need an absolute URI. See the [module docs](self).
///
/// hyper's default settings, with no keep-alive pings: the same as
/// `Http2::new().handshake()`. [`Http2`] sets them.
///
/// # Errors
///
/// hyper's error if the handshake fails.
///
/// # Panics
///
/// If called outside a tokio runtime.
pub async fn http2<B>(
    io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
) -> Result<Http2Connection<B>, ::hyper::Error>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Http2::new().connect(io).await
}

/// Drives a connection, and closes `closed` when it ends: the client then
/// notices the end at once, even with no request in flight.
async fn watch<F>(connection: F, closed: CloseWatch, protocol: &'static str)
where
    F: Future<Output = Result<(), ::hyper::Error>>,
{
    let kind = match connection.await {
        Ok(()) => io::ErrorKind::UnexpectedEof,
        Err(error) => {
            tracing::debug!(%error, "{protocol} connection closed with an error");
            chain(&error)
                .find_map(|e| e.downcast_ref::<io::Error>())
                .map_or(io::ErrorKind::ConnectionAborted, io::Error::kind)
        }
    };
    closed.close(kind);
}

/// An HTTP connection as a service: [`Http1Connection`], made by [`http1`],
/// or [`Http2Connection`], made by [`http2`]. `S` is hyper's sender for the
/// protocol.
///
/// # Errors
///
/// `poll_ready` fails once the connection has closed: the connection is
/// dead, and the [`Reconnect`](crate::reconnect::Reconnect) around it
/// redials. A response fails with a [`NotSent`] carrying the request when
/// hyper hands the request back unwritten (and, over HTTP/2, when the server
/// refused its stream before hyper read its body; see [`Resendable`]), with
/// a [`ConnectionLost`] when the connection broke under it, or else with
/// hyper's own error; see the [module docs](self#what-is-sent-again).
///
/// # Backpressure
///
/// Over HTTP/1, `poll_ready` is `Pending` while a request is in flight:
/// HTTP/1 carries one at a time. Over HTTP/2 it is ready as long as the
/// connection is open.
///
/// # Clone
///
/// [`Http2Connection`] is `Clone`: clones share the connection, as HTTP/2
/// multiplexes requests over it.
pub struct HttpConnection<S> {
    sender: S,
    closed: CloseWatch,
}

/// An HTTP/1 connection as a service, made by [`http1`]; see
/// [`HttpConnection`].
pub type Http1Connection<B> = HttpConnection<h1::SendRequest<B>>;

/// An HTTP/2 connection as a service, made by [`http2`]; see
/// [`HttpConnection`]. Its body type is [`Resendable<B>`], so that a
/// refused stream can be sent again.
pub type Http2Connection<B> = HttpConnection<h2::SendRequest<Resendable<B>>>;

mod sealed {
    pub trait Sealed {}
}

/// hyper's HTTP/1 or HTTP/2 sender, which an [`HttpConnection`] wraps.
/// Sealed: implemented for `http1::SendRequest` and `http2::SendRequest`.
pub trait Sender: sealed::Sealed {
    /// hyper's `poll_ready`.
    #[doc(hidden)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ::hyper::Error>>;

    /// hyper's `is_closed`.
    #[doc(hidden)]
    fn is_closed(&self) -> bool;
}

impl<B> sealed::Sealed for h1::SendRequest<B> {}

impl<B> Sender for h1::SendRequest<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ::hyper::Error>> {
        h1::SendRequest::poll_ready(self, cx)
    }

    fn is_closed(&self) -> bool {
        h1::SendRequest::is_closed(self)
    }
}

impl<B> sealed::Sealed for h2::SendRequest<B> {}

impl<B> Sender for h2::SendRequest<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ::hyper::Error>> {
        h2::SendRequest::poll_ready(self, cx)
    }

    fn is_closed(&self) -> bool {
        h2::SendRequest::is_closed(self)
    }
}

impl<S: Sender> HttpConnection<S> {
    /// Wraps the sender of a connection made with hyper's own
    /// [`http1::Builder`](::hyper::client::conn::http1::Builder) or
    /// [`http2::Builder`](::hyper::client::conn::http2::Builder) (with
    /// [`Resendable<B>`] as the HTTP/2 body type). Spawn the connection's
    /// driver yourself, and see [`with_close_watch`](Self::with_close_watch).
    pub fn new(sender: S) -> Self {
        Self {
            sender,
            closed: CloseWatch::new(),
        }
    }

    /// Watches `closed`, which the code driving the connection closes when
    /// the connection ends, so that an idle connection's end is noticed at
    /// once; see [`CloseWatch`]. [`http1`] and [`http2`] do this for you.
    pub fn with_close_watch(mut self, closed: CloseWatch) -> Self {
        self.closed = closed;
        self
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Ready while the connection is open and hyper can take a request.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Poll::Ready(error) = self.closed.poll_closed(cx) {
            return Poll::Ready(Err(error.into()));
        }
        self.sender.poll_ready(cx).map_err(Into::into)
    }
}

impl<B> Clone for HttpConnection<h2::SendRequest<B>> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            closed: self.closed.for_clone(),
        }
    }
}

impl<S: Sender> fmt::Debug for HttpConnection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConnection")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<B> Service<Request<B>> for Http1Connection<B>
where
    B: Body + Send + 'static,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.poll_open(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let sending = self.sender.try_send_request(request);
        ResponseFuture::new(async move { sending.await.map_err(hand_back) })
    }
}

impl<B> Service<Request<B>> for Http2Connection<B>
where
    B: Body + Send + Unpin + 'static,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.poll_open(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (request, spare) = Spare::keep(request);
        let sending = self.sender.try_send_request(request);
        ResponseFuture::new(async move {
            let mut error = match sending.await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            let request = error.take_message().and_then(refused::unwrap);
            let error = error.into_error();
            let request = match request {
                None if is_refused(&error) => spare.rebuild().await,
                request => request,
            };
            Err(give_back(request, error))
        })
    }
}

boxed_future! {
    /// The response future of [`Http1Connection`] and [`Http2Connection`]
    /// (hyper's sending future is an unnameable `impl Future`, so it is
    /// boxed).
    ///
    /// A request that hyper hands back unwritten, or whose HTTP/2 stream the
    /// server refused, comes out as a [`NotSent`] carrying it; a request whose
    /// connection broke under it as a [`ConnectionLost`]; any other failure as
    /// hyper's error.
    pub struct ResponseFuture<B> => Result<Response<Incoming>, BoxError>;
}

/// A request hyper gave back unwritten becomes a [`NotSent`] that carries it.
fn hand_back<B: Send + 'static>(mut error: TrySendError<Request<B>>) -> BoxError {
    let request = error.take_message();
    give_back(request, error.into_error())
}

/// The error for a request that failed: a [`NotSent`] carrying `request`,
/// which hyper handed back unwritten or which was rebuilt after the server
/// refused its HTTP/2 stream; a [`NotSent`] alone for a refused stream whose
/// request is gone; a [`ConnectionLost`] for any other failure of the
/// connection; else hyper's error. A refused stream leaves its connection
/// up.
fn give_back<B: Send + 'static>(request: Option<Request<B>>, error: ::hyper::Error) -> BoxError {
    let refused = is_refused(&error);
    let not_sent = match request {
        Some(request) => NotSent::with_request(request, error),
        None if refused => NotSent::new(error),
        None if is_lost(&error) => return Box::new(ConnectionLost::new(error)),
        None => return Box::new(error),
    };
    Box::new(if refused {
        not_sent.keep_connection()
    } else {
        not_sent
    })
}

/// Whether any error in the `source()` chain is a [`hyper::Error`]
/// that means the connection is gone: the connection closed before a message
/// completed, its channel closed, a request was canceled because of it, a
/// timeout (such as an HTTP/2 keep-alive ping) expired, or the server sent
/// an HTTP/2 GOAWAY. A stream the server refused is not one: the
/// connection lives on.
///
/// Errors are told apart by type and hyper's own predicates, never by
/// message text. hyper's IO errors are left to
/// [`is_transport_error`]; combine the
/// two with [`classifier`].
///
/// # Example
///
/// ```
/// use tower_redial::classify::{is_transport_error, Classifier};
/// use tower_redial::hyper::is_hyper_transport_error;
///
/// let classifier = Classifier::new(|e| is_transport_error(e) || is_hyper_transport_error(e));
/// # let _ = classifier;
/// let answer = std::io::Error::other("not found");
/// assert!(!is_hyper_transport_error(&answer));
/// ```
pub fn is_hyper_transport_error(error: &(dyn Error + 'static)) -> bool {
    is_go_away(error)
        || chain(error).any(|e| {
            e.downcast_ref::<::hyper::Error>().is_some_and(|e| {
                e.is_incomplete_message() || e.is_closed() || e.is_canceled() || e.is_timeout()
            })
        })
}

/// [`is_transport_error`] or [`is_hyper_transport_error`]: the classifier
/// for a connection of your own around hyper's `SendRequest`, whose errors
/// come out of hyper unwrapped. [`Http1Connection`] and
/// [`Http2Connection`] need none: they already mark each transport failure
/// as a [`ConnectionLost`] (see the
/// [module docs](self#classifying-hypers-errors)).
///
/// Set it on the policy with
/// [`ReconnectPolicyBuilder::classifier`](crate::ReconnectPolicyBuilder::classifier).
pub fn classifier() -> Classifier {
    Classifier::new(is_lost)
}

/// Whether `error` means that its connection is gone: hyper's transport
/// failures, and what the default classifier calls dead.
fn is_lost(error: &(dyn Error + 'static)) -> bool {
    is_hyper_transport_error(error) || is_transport_error(error)
}

/// The [`hyper::Error`] in `error`'s `source()` chain, if there is one:
/// whether it is the error itself or wrapped in a [`ConnectionLost`] or a
/// [`NotSent`].
///
/// # Example
///
/// ```
/// use tower_redial::hyper::hyper_error;
/// use tower_redial::BoxError;
///
/// let other: BoxError = "not from hyper".into();
/// assert!(hyper_error(&*other).is_none());
/// ```
pub fn hyper_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a ::hyper::Error> {
    chain(error).find_map(|e| e.downcast_ref::<::hyper::Error>())
}
