//! Turning a raw connector into a connection factory.
//!
//! [`ReconnectLayer`](crate::ReconnectLayer) wraps a factory of connection
//! *services*. A raw connector, such as [`TcpConnector`] or hyper-util's
//! `HttpConnector`, yields IO instead. [`Handshake`] pairs it with an async
//! function that turns the IO into a service: a framed codec, hyper's
//! `client::conn::http1::handshake`, a database client's setup.
//!
//! # Example
//!
//! ```
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//! use tower::util::BoxService;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_redial::connect::TcpConnector;
//! use tower_redial::{BoxError, Handshake, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # let listener = TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?;
//! # tokio::spawn(async move {
//! #     let (mut io, _) = listener.accept().await.unwrap();
//! #     let mut buf = [0; 1];
//! #     while io.read_exact(&mut buf).await.is_ok() {
//! #         io.write_all(&[buf[0] + 1]).await.unwrap();
//! #     }
//! # });
//! // A one-byte "protocol": each connection is a service that sends a byte
//! // and reads one back.
//! async fn handshake(io: TcpStream) -> std::io::Result<BoxService<u8, u8, std::io::Error>> {
//!     let io = std::sync::Arc::new(tokio::sync::Mutex::new(io));
//!     Ok(BoxService::new(service_fn(move |byte: u8| {
//!         let io = io.clone();
//!         async move {
//!             let mut io = io.lock().await;
//!             io.write_all(&[byte]).await?;
//!             io.read_u8().await
//!         }
//!     })))
//! }
//!
//! let make = Handshake::new(TcpConnector::new(), handshake);
//! let client = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(make)
//!     .client(addr);
//! assert_eq!(client.oneshot(41).await?, 42);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};

use tokio::net::{TcpStream, ToSocketAddrs};
use tower::make::MakeConnection;
use tower::Service;

use crate::future::{HandshakeFuture, TcpConnecting};
use crate::BoxError;

/// A connection factory made of a raw connector and a handshake.
///
/// As a `Service<Target>`, it connects with the connector, then hands the IO
/// to `handshake`, whose output is the connection service. Either step's
/// error fails the dial.
#[derive(Clone)]
pub struct Handshake<C, H> {
    connector: C,
    handshake: H,
}

impl<C, H> Handshake<C, H> {
    /// Pairs a connector with a handshake function.
    pub fn new(connector: C, handshake: H) -> Self {
        Self {
            connector,
            handshake,
        }
    }
}

impl<C, H> fmt::Debug for Handshake<C, H>
where
    C: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl<C, H, T, F, S, E> Service<T> for Handshake<C, H>
where
    C: MakeConnection<T>,
    C::Error: Into<BoxError>,
    H: FnMut(C::Connection) -> F + Clone,
    F: Future<Output = Result<S, E>>,
    E: Into<BoxError>,
{
    type Response = S;
    type Error = BoxError;
    type Future = HandshakeFuture<C::Future, H, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.connector.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: T) -> Self::Future {
        HandshakeFuture::new(
            self.connector.make_connection(target),
            self.handshake.clone(),
        )
    }
}

/// A plain TCP connector: resolves the target afresh and connects, with
/// `TCP_NODELAY` set.
///
/// The target is anything tokio can resolve: a `SocketAddr`, a
/// `"host:port"` string, an `(IpAddr, u16)` pair.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector {
    _priv: (),
}

impl TcpConnector {
    /// A connector with `TCP_NODELAY` set on each connection.
    pub fn new() -> Self {
        Self { _priv: () }
    }
}

impl<T> Service<T> for TcpConnector
where
    T: ToSocketAddrs + Send + 'static,
{
    type Response = TcpStream;
    type Error = io::Error;
    type Future = TcpConnecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: T) -> Self::Future {
        TcpConnecting::new(Box::pin(async move {
            let stream = TcpStream::connect(target).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        }))
    }
}
