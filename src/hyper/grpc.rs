//! A reconnecting HTTP/2 client to one origin, in one line: tonic's
//! transport.

use std::any::TypeId;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

use ::hyper::body::Body;
use http::uri::Uri;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::make::MakeConnection;
use tower::Layer;

use super::Http2;
use crate::connect::{Handshake, TcpConnector};
#[cfg(feature = "tls")]
use crate::tls::{TlsConfig, TlsConnector};
use crate::{BoxError, ReconnectLayer, ReconnectPolicy};

mod body;
mod client;
mod origin;
mod status;

pub use body::GrpcBody;
pub use client::{GrpcClient, GrpcFuture};
pub use origin::InvalidOrigin;
use origin::{Dialer, Origin, WithOrigin};

/// A reconnecting HTTP/2 client to `origin`, with `policy` and the default
/// [`Http2`] settings, over plain TCP: [`Grpc::builder`]`(origin).policy(policy).build()`.
///
/// The client is the transport of a generated tonic client, in one line
/// (tonic's clients take it as it is; see [`Grpc`]):
///
/// ```text
/// let health = HealthClient::new(tower_redial::hyper::grpc("http://127.0.0.1:50051", ReconnectPolicy::grpc())?);
/// ```
///
/// Requests with a path-only URI, as tonic sends them, get the origin:
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::ServiceExt;
/// use tower_redial::ReconnectPolicy;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_redial::BoxError> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move {
/// #     loop {
/// #         let (io, _) = listener.accept().await.unwrap();
/// #         let echo = hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
/// #             let seen = format!("{} {}", request.uri().authority().unwrap(), request.uri().path());
/// #             Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(seen))))
/// #         });
/// #         tokio::spawn(
/// #             hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
/// #                 .serve_connection(hyper_util::rt::TokioIo::new(io), echo),
/// #         );
/// #     }
/// # });
/// let client = tower_redial::hyper::grpc(format!("http://{addr}"), ReconnectPolicy::grpc())?;
///
/// let request = http::Request::post("/grpc.health.v1.Health/Check").body(Full::new(Bytes::new()))?;
/// let response = client.oneshot(request).await?;
/// # use http_body_util::BodyExt;
/// let body = response.into_body().collect().await?.to_bytes();
/// // The server (here one that echoes the authority and path) saw the origin.
/// assert_eq!(body, format!("{addr} /grpc.health.v1.Health/Check"));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// An [`InvalidOrigin`] if `origin` is not `http://host[:port]` (or
/// `https://`, which needs TLS: see `Grpc::tls`).
///
/// # Panics
///
/// If called outside a tokio runtime, as the client's task is spawned here.
pub fn grpc<U, B>(origin: U, policy: ReconnectPolicy) -> Result<GrpcClient<B>, InvalidOrigin>
where
    U: TryInto<Uri>,
    U::Error: Into<BoxError>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Grpc::builder(origin).policy(policy).build()
}

/// Builds a reconnecting HTTP/2 client to one origin: what a tonic client
/// needs as its transport, without a `ServiceBuilder` stack.
///
/// The client, a [`GrpcClient`], is this crate's
/// [`multiplexed`](crate::MakeReconnect::multiplexed)
/// [`Client`](crate::Client) over [`Http2`] connections made by
/// [`Handshake`](crate::connect::Handshake): it dials lazily, redials with
/// the policy's backoff, holds calls in its queue while it redials, and
/// fails them fast with [`Unavailable`](crate::error::Unavailable) past the
/// wait limit. Each request whose URI has no scheme and authority, as
/// tonic's generated clients send them (`/package.Service/Method`), gets
/// the origin's; a request with an absolute URI keeps its own. The crate's
/// own failures reach the gRPC caller with a gRPC code (`UNAVAILABLE` for
/// an outage, a lost connection; `DEADLINE_EXCEEDED` for a response
/// timeout): see [`GrpcClient`](GrpcClient#errors-as-grpc-statuses).
///
/// It does not depend on tonic: the client is a
/// `Service<http::Request<B>>` for any body `B` hyper can send, and tonic's
/// generated clients take it as it is, with `B = tonic::body::Body`.
///
/// | setting | default |
/// |---|---|
/// | [`policy`](Grpc::policy) | [`ReconnectPolicy::grpc`] |
/// | [`http2`](Grpc::http2) | [`Http2::new`]: hyper's defaults, no keep-alive |
/// | [`connector`](Grpc::connector) | [`TcpConnector::new`] |
/// | `tls` (the `tls` feature) | none: plain TCP, for an `http` origin; `Grpc::tls(config)` for `https` |
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_redial::hyper::{Grpc, Http2};
/// use tower_redial::state::Phase;
/// use tower_redial::ReconnectPolicy;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_redial::BoxError> {
/// let transport = Grpc::builder("http://127.0.0.1:50051")
///     .policy(ReconnectPolicy::grpc())
///     .http2(
///         Http2::new()
///             .keep_alive_interval(Duration::from_secs(10))
///             .keep_alive_timeout(Duration::from_secs(5))
///             .keep_alive_while_idle(true),
///     )
///     .build::<Full<Bytes>>()?;
/// // With tonic: `let health = HealthClient::new(transport.clone());`
/// // `transport.state()` and `transport.stats()` show the connection.
/// assert_eq!(transport.state().borrow().phase(), Phase::Idle);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Grpc<C = TcpConnector> {
    origin: Result<Uri, Arc<dyn Error + Send + Sync>>,
    policy: ReconnectPolicy,
    http2: Http2,
    connector: C,
    dialer: Dialer,
}

impl Grpc {
    /// A builder for a client to `origin`, such as
    /// `"http://127.0.0.1:50051"`: the scheme and authority every request
    /// gets, and where the client dials (`host:port`, the port 80 or 443 if
    /// none is given). [`build`](Grpc::build) checks it.
    pub fn builder<U>(origin: U) -> Self
    where
        U: TryInto<Uri>,
        U::Error: Into<BoxError>,
    {
        Self {
            origin: origin.try_into().map_err(|e| Arc::from(e.into())),
            policy: ReconnectPolicy::grpc(),
            http2: Http2::new(),
            connector: TcpConnector::new(),
            dialer: Dialer::Tcp,
        }
    }
}

#[cfg(feature = "tls")]
impl Grpc<TcpConnector> {
    /// TLS to an `https` origin, in one call: the client dials through a
    /// [`TlsConnector`] over the [`TcpConnector`] (the default, or one set
    /// with [`connector`](Grpc::connector)), with `config`'s roots and
    /// client certificate, and ALPN `h2` only, whatever `config` offers
    /// (gRPC needs HTTP/2). The server's certificate is checked for the
    /// origin's host, sent as SNI.
    ///
    /// *Needs the `tls` feature.*
    ///
    /// Each redial makes a new TLS connection and verifies the certificate
    /// the server presents then, so a server restarted with a renewed
    /// certificate is picked up with nothing to reload (see
    /// [`tls`](crate::tls#certificate-rotation)). A failed handshake fails
    /// the dial, and is retried by the backoff like a refused connection.
    ///
    /// ```no_run
    /// use tower_redial::hyper::Grpc;
    /// use tower_redial::tls::TlsConfig;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_redial::BoxError> {
    /// let tls = TlsConfig::builder().webpki_roots().build()?;
    /// let transport = Grpc::builder("https://grpc.example.com").tls(tls).build()?;
    /// // With tonic: `let health = HealthClient::new(transport);`
    /// # let _: tower_redial::hyper::GrpcClient<String> = transport;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`build`](Grpc::build) refuses an `http` origin with TLS set, as
    /// `http` says plain text:
    ///
    /// ```
    /// use tower_redial::hyper::Grpc;
    /// use tower_redial::tls::TlsConfig;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_redial::BoxError> {
    /// let tls = TlsConfig::builder().webpki_roots().build()?;
    /// let error = Grpc::builder("http://127.0.0.1:50051").tls(tls).build::<String>().unwrap_err();
    /// assert_eq!(
    ///     error.to_string(),
    ///     "invalid origin `http://127.0.0.1:50051/`: `Grpc::tls` needs an `https` origin: write `https://host:port`"
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn tls(self, config: impl Into<TlsConfig>) -> Grpc<TlsConnector<TcpConnector>> {
        let config = config.into().with_alpn([b"h2".to_vec()]);
        Grpc {
            origin: self.origin,
            policy: self.policy,
            http2: self.http2,
            connector: TlsConnector::new(self.connector, config),
            dialer: Dialer::Tls,
        }
    }
}

impl<C> Grpc<C> {
    /// The reconnect policy: backoff, connect timeout, queue, wait limit.
    pub fn policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The HTTP/2 settings: keep-alive pings, windows, streams.
    pub fn http2(mut self, http2: Http2) -> Self {
        self.http2 = http2;
        self
    }

    /// The connector that dials the origin, given `"host:port"` as a
    /// `String`: a [`TcpConnector`] with settings of your own, or one of
    /// your own making. Its IO carries HTTP/2 from the first byte: with
    /// TLS, the connector negotiates ALPN `h2`. For TLS over TCP,
    /// `Grpc::tls` (the `tls` feature) does it in one call; a
    /// [`TcpConnector`] set here is the one it wraps.
    pub fn connector<D>(self, connector: D) -> Grpc<D> {
        Grpc {
            origin: self.origin,
            policy: self.policy,
            http2: self.http2,
            connector,
            dialer: Dialer::Own,
        }
    }

    /// The client, bound to the origin; nothing is dialed until the first
    /// request. `B` is the request body type (`tonic::body::Body` under
    /// tonic), most often inferred.
    ///
    /// # Errors
    ///
    /// An [`InvalidOrigin`] if the origin is not a URI, has a scheme other
    /// than `http` or `https`, has no host, has user info, a port that is
    /// not a number, or a path or query; if it is `https` with neither
    /// `Grpc::tls` nor a [`connector`](Grpc::connector) of TLS set (a
    /// connector whose IO is a bare `TcpStream`, such as a
    /// [`TcpConnector`], runs no TLS and is refused); or if it is `http`
    /// with `Grpc::tls` set.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime, as the client's task is spawned
    /// here.
    pub fn build<B>(self) -> Result<GrpcClient<B>, InvalidOrigin>
    where
        C: MakeConnection<String> + Clone + Send + 'static,
        C::Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        C::Future: Send + 'static,
        C::Error: Into<BoxError>,
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let origin = self.origin.map_err(|source| InvalidOrigin {
            origin: None,
            reason: "not a URI",
            source: Some(source),
        })?;
        // A connector of the user's own that gives a bare `TcpStream` runs
        // no TLS, whatever the origin says: checked as the default is.
        let plain = TypeId::of::<C::Connection>() == TypeId::of::<tokio::net::TcpStream>();
        let dialer = match self.dialer {
            Dialer::Own if plain => Dialer::Tcp,
            dialer => dialer,
        };
        let (origin, target) = Origin::parse(&origin, dialer)?;
        let http2 = self.http2;
        let handshake = move |io: C::Connection| {
            let origin = origin.clone();
            let connecting = http2.connect::<B, _>(io);
            async move {
                let connection = connecting.await?;
                Ok::<_, ::hyper::Error>(WithOrigin { connection, origin })
            }
        };
        let make = Handshake::new(self.connector, handshake);
        let client = ReconnectLayer::new(self.policy)
            .layer(make)
            .multiplexed(target);
        Ok(GrpcClient::new(client))
    }
}

impl<C: fmt::Debug> fmt::Debug for Grpc<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grpc")
            .field("origin", &self.origin)
            .field("policy", &self.policy)
            .field("http2", &self.http2)
            .field("connector", &self.connector)
            .finish()
    }
}
