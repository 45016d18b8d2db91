//! The futures of the connectors.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use crate::boxed::boxed_future;
use crate::BoxError;

pin_project! {
    /// The future of [`Handshake`](super::Handshake): connect, then handshake.
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

boxed_future! {
    /// The future of [`TcpConnector`](super::TcpConnector).
    pub struct TcpConnecting => std::io::Result<tokio::net::TcpStream>;
}
