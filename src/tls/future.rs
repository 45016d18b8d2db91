//! The future of [`TlsConnector`](super::TlsConnector).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::Connect;

use super::HandshakeError;
use crate::BoxError;

pin_project! {
    /// The future of [`TlsConnector`](super::TlsConnector): connect with the
    /// inner connector, then the TLS handshake.
    pub struct TlsConnecting<F, IO> {
        #[pin]
        state: State<F, IO>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, IO> {
        Connecting {
            #[pin]
            future: F,
            config: Arc<ClientConfig>,
            name: Option<ServerName<'static>>,
        },
        Handshaking {
            #[pin]
            future: Connect<IO>,
            name: ServerName<'static>,
        },
        Failed { error: Option<BoxError> },
    }
}

impl<F, IO> TlsConnecting<F, IO> {
    pub(crate) fn new(future: F, config: Arc<ClientConfig>, name: ServerName<'static>) -> Self {
        Self {
            state: State::Connecting {
                future,
                config,
                name: Some(name),
            },
        }
    }

    pub(crate) fn failed(error: impl Into<BoxError>) -> Self {
        Self {
            state: State::Failed {
                error: Some(error.into()),
            },
        }
    }
}

impl<F, IO, E> Future for TlsConnecting<F, IO>
where
    F: Future<Output = Result<IO, E>>,
    E: Into<BoxError>,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Result<TlsStream<IO>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Connecting {
                    future,
                    config,
                    name,
                } => {
                    let io = ready!(future.poll(cx)).map_err(Into::into)?;
                    let name = name.take().expect("polled after completion");
                    let connector = tokio_rustls::TlsConnector::from(config.clone());
                    let future = connector.connect(name.clone(), io);
                    this.state.set(State::Handshaking { future, name });
                }
                StateProj::Handshaking { future, name } => {
                    let result = ready!(future.poll(cx));
                    return Poll::Ready(result.map_err(|e| HandshakeError::new(name, e).into()));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
            }
        }
    }
}

impl<F, IO> fmt::Debug for TlsConnecting<F, IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnecting").finish_non_exhaustive()
    }
}
