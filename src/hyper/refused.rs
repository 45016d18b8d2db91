//! HTTP/2 streams the server refused, and getting their requests back.
//!
//! RFC 9113 §8.7 names two signals that a request was not processed: a
//! stream reset with `REFUSED_STREAM`, and a stream above the last stream
//! id of the server's GOAWAY. Only the first reaches the caller intact
//! through hyper 1: hyper also reports a GOAWAY that arrives just after it
//! opened a stream, and before it sent that stream's body, as that
//! stream's error (`ClientTask::poll_pipe`, which polls the sender again
//! after `send_request`), though the server may have run the request. So a
//! GOAWAY error stays ambiguous, and only `REFUSED_STREAM` means "not
//! processed".
//!
//! hyper does not hand such a request back. [`Resendable`] wraps the
//! request body so that, when hyper drops it unread, the body returns to
//! the caller's side; with a copy of the request head, the request is whole
//! again and is re-sent like any other [`NotSent`](crate::error::NotSent).

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::hyper::body::{Body, Frame, SizeHint};
use h2::Reason;
use http::request::Parts;
use http::Request;
use tokio::sync::oneshot;

use crate::error::chain;

/// Whether `error` says the server did not process the request: it reset
/// the request's HTTP/2 stream with `REFUSED_STREAM`.
pub(crate) fn is_refused(error: &(dyn Error + 'static)) -> bool {
    chain(error).any(|e| {
        e.downcast_ref::<h2::Error>().is_some_and(|e| {
            e.is_reset() && e.is_remote() && e.reason() == Some(Reason::REFUSED_STREAM)
        })
    })
}

/// Whether `error` is the server's GOAWAY: the connection is going away.
pub(crate) fn is_go_away(error: &(dyn Error + 'static)) -> bool {
    chain(error).any(|e| {
        e.downcast_ref::<h2::Error>()
            .is_some_and(|e| e.is_go_away() && e.is_remote())
    })
}

/// A request body for [`Http2Connection`](super::Http2Connection) that comes
/// back when hyper drops it unread, so that a request whose stream was
/// refused can be sent again, whatever its method and whether or not its
/// body is `Clone`.
///
/// [`http2`](super::http2) uses it for you. Name it only when you make the
/// connection with hyper's own builder: hand `Resendable<B>` to the
/// handshake as the body type, and wrap the sender with
/// [`Http2Connection::new`](super::Http2Connection::new).
///
/// Once hyper has read any of the body, it cannot come back, and a refused
/// request fails with a [`NotSent`](crate::error::NotSent) that carries no request.
///
/// # Example
///
/// An HTTP/2 handshake with hyper's own builder, here for keep-alive pings
/// (which need hyper's timer), as [`Http2`](super::Http2) would make it; write
/// one only for a setting `Http2` does not carry. A [`CloseWatch`](crate::connect::CloseWatch)
/// closed when the connection's driver ends lets an idle connection's end
/// be noticed at once:
///
/// ```
/// use std::io;
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper::client::conn::http2;
/// use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
/// use tokio::net::TcpStream;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_redial::connect::{CloseWatch, Handshake, TcpConnector};
/// use tower_redial::hyper::{Http2Connection, Resendable};
/// use tower_redial::{ReconnectLayer, ReconnectPolicy};
///
/// async fn handshake(io: TcpStream) -> Result<Http2Connection<Full<Bytes>>, hyper::Error> {
///     let (sender, connection) = http2::Builder::new(TokioExecutor::new())
///         .timer(TokioTimer::new())
///         .keep_alive_interval(Duration::from_secs(20))
///         .handshake::<_, Resendable<Full<Bytes>>>(TokioIo::new(io))
///         .await?;
///     let closed = CloseWatch::new();
///     tokio::spawn({
///         let closed = closed.clone();
///         async move {
///             let _ = connection.await;
///             closed.close(io::ErrorKind::UnexpectedEof);
///         }
///     });
///     Ok(Http2Connection::new(sender).with_close_watch(closed))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_redial::BoxError> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move {
/// #     loop {
/// #         let (io, _) = listener.accept().await.unwrap();
/// #         let hello = hyper::service::service_fn(|_| async {
/// #             Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("hello"))))
/// #         });
/// #         tokio::spawn(
/// #             hyper::server::conn::http2::Builder::new(TokioExecutor::new())
/// #                 .serve_connection(TokioIo::new(io), hello),
/// #         );
/// #     }
/// # });
/// let client = ServiceBuilder::new()
///     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
///     .service(Handshake::new(TcpConnector::new(), handshake))
///     .multiplexed(addr);
/// let request = http::Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new()))?;
/// let response = client.oneshot(request).await?;
/// assert_eq!(response.status(), 200);
/// # Ok(())
/// # }
/// ```
pub struct Resendable<B> {
    body: Option<B>,
    // Where the body goes back, dropped unread; told `None` once it is
    // read, as it cannot come back then. Gone once told.
    back: Option<oneshot::Sender<Option<B>>>,
}

impl<B> Resendable<B> {
    fn new(body: B) -> (Self, oneshot::Receiver<Option<B>>) {
        let (back, comes_back) = oneshot::channel();
        let body = Self {
            body: Some(body),
            back: Some(back),
        };
        (body, comes_back)
    }
}

impl<B> Drop for Resendable<B> {
    fn drop(&mut self) {
        if let Some(back) = self.back.take() {
            let _ = back.send(self.body.take());
        }
    }
}

impl<B: Body + Unpin> Body for Resendable<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Some(back) = self.back.take() {
            let _ = back.send(None);
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B> fmt::Debug for Resendable<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resendable")
            .field("read", &self.back.is_none())
            .finish_non_exhaustive()
    }
}

/// What it takes to rebuild a request whose stream was refused: a copy of
/// its head, and where its body comes back.
pub(crate) struct Spare<B> {
    head: Parts,
    body: oneshot::Receiver<Option<B>>,
}

impl<B> Spare<B> {
    /// Wraps the body of `request`, keeping what rebuilds it.
    pub(crate) fn keep(request: Request<B>) -> (Request<Resendable<B>>, Self) {
        let (head, body) = request.into_parts();
        let (body, comes_back) = Resendable::new(body);
        let spare = Self {
            head: head.clone(),
            body: comes_back,
        };
        (Request::from_parts(head, body), spare)
    }

    /// The request again, if its body comes back unread. hyper may report
    /// the refusal a moment before it drops the body, so this waits until
    /// the body is read or dropped; the drop follows at once, as the stream
    /// is over.
    pub(crate) async fn rebuild(self) -> Option<Request<B>> {
        let body = self.body.await.ok()??;
        Some(Request::from_parts(self.head, body))
    }
}

/// The request inside a request hyper handed back.
pub(crate) fn unwrap<B>(request: Request<Resendable<B>>) -> Option<Request<B>> {
    let (head, mut body) = request.into_parts();
    // Handed back whole: nothing needs to come back by the other way.
    body.back = None;
    let inner = body.body.take()?;
    Some(Request::from_parts(head, inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    fn request() -> Request<Full<Bytes>> {
        Request::post("http://example.test/")
            .header("x-id", "7")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap()
    }

    #[tokio::test]
    async fn a_body_dropped_unread_rebuilds_the_request() {
        let (sent, spare) = Spare::keep(request());
        drop(sent);
        let again = spare.rebuild().await.expect("the body came back");
        assert_eq!(again.method(), http::Method::POST);
        assert_eq!(again.headers()["x-id"], "7");
    }

    #[tokio::test]
    async fn a_body_that_was_read_does_not_come_back() {
        let (sent, spare) = Spare::keep(request());
        let body = sent.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "payload");
        assert!(spare.rebuild().await.is_none());
    }

    #[tokio::test]
    async fn a_request_handed_back_is_unwrapped_whole() {
        let (sent, spare) = Spare::keep(request());
        let again = unwrap(sent).expect("the body is there");
        assert_eq!(again.headers()["x-id"], "7");
        assert!(spare.rebuild().await.is_none(), "the body went back whole");
    }

    #[test]
    fn only_the_servers_refused_stream_is_refused() {
        let refused = h2::Error::from(Reason::REFUSED_STREAM);
        // A reason made locally is not the server's word.
        assert!(!is_refused(&refused));
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(!is_refused(&io));
    }
}
