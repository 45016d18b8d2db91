//! The response body of a [`GrpcClient`](super::GrpcClient).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::hyper::body::{Body, Frame, Incoming, SizeHint};
use bytes::Bytes;

/// The response body of a [`GrpcClient`](super::GrpcClient): the server's
/// body, or nothing, for the "Trailers-Only" response the client makes of
/// one of the crate's own failures (see
/// [`GrpcClient`](super::GrpcClient#errors-as-grpc-statuses)).
///
/// A [`Body`] as hyper's [`Incoming`] is, with the same `Data` and
/// `Error`; tonic's generated clients read it as they read `Incoming`.
///
/// # Example
///
/// ```
/// use hyper::body::Body;
/// use tower_redial::hyper::GrpcBody;
///
/// let body = GrpcBody::empty();
/// assert!(body.is_end_stream());
/// ```
pub struct GrpcBody {
    incoming: Option<Incoming>,
}

impl GrpcBody {
    /// A body with nothing in it, as a Trailers-Only response has.
    pub fn empty() -> Self {
        Self { incoming: None }
    }
}

impl From<Incoming> for GrpcBody {
    /// The server's body, as it is.
    fn from(incoming: Incoming) -> Self {
        Self {
            incoming: Some(incoming),
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = ::hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ::hyper::Error>>> {
        match &mut self.incoming {
            Some(incoming) => Pin::new(incoming).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.incoming {
            Some(incoming) => incoming.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl fmt::Debug for GrpcBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.incoming {
            Some(incoming) => f.debug_tuple("GrpcBody").field(incoming).finish(),
            None => f.write_str("GrpcBody(Empty)"),
        }
    }
}
