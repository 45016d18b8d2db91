//! A reconnecting HTTP/2 client to one origin, in one line: tonic's
//! transport.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::hyper::body::{Body, Incoming};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::make::MakeConnection;
use tower::{Layer, Service};

use super::{Http2, Http2Connection, ResponseFuture};
use crate::connect::{Handshake, TcpConnector};
use crate::{BoxError, Client, ReconnectLayer, ReconnectPolicy};

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
/// `https://`, which needs a TLS connector: see [`Grpc::connector`]).
///
/// # Panics
///
/// If called outside a tokio runtime, as the client's task is spawned here.
pub fn grpc<U, B>(
    origin: U,
    policy: ReconnectPolicy,
) -> Result<Client<Request<B>, Response<Incoming>>, InvalidOrigin>
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
/// The client is this crate's [`multiplexed`](crate::MakeReconnect::multiplexed)
/// [`Client`] over [`Http2`] connections made by
/// [`Handshake`](crate::connect::Handshake): it dials lazily, redials with
/// the policy's backoff, holds calls in its queue while it redials, and
/// fails them fast with [`Unavailable`](crate::error::Unavailable) past the
/// wait limit. Each request whose URI has no scheme and authority, as
/// tonic's generated clients send them (`/package.Service/Method`), gets
/// the origin's; a request with an absolute URI keeps its own.
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
    own_connector: bool,
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
            own_connector: false,
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
    /// `String`: a [`TcpConnector`] with settings of your own, or one that
    /// wraps a TCP connector in TLS (which an `https` origin needs). Its
    /// IO carries HTTP/2 from the first byte: with TLS, the connector
    /// negotiates ALPN `h2`.
    pub fn connector<D>(self, connector: D) -> Grpc<D> {
        Grpc {
            origin: self.origin,
            policy: self.policy,
            http2: self.http2,
            connector,
            own_connector: true,
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
    /// not a number, or a path or query; or if it is `https` and no
    /// [`connector`](Grpc::connector) was given.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime, as the client's task is spawned
    /// here.
    pub fn build<B>(self) -> Result<Client<Request<B>, Response<Incoming>>, InvalidOrigin>
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
        let (origin, target) = Origin::parse(&origin, self.own_connector)?;
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
        Ok(ReconnectLayer::new(self.policy)
            .layer(make)
            .multiplexed(target))
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

/// The scheme and authority put on each request.
#[derive(Clone, Debug)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// The origin of `uri`, and the `host:port` to dial.
    fn parse(uri: &Uri, tls_ready: bool) -> Result<(Self, String), InvalidOrigin> {
        let invalid = |reason: &'static str| InvalidOrigin {
            origin: Some(uri.to_string()),
            reason,
            source: None,
        };
        let scheme = uri
            .scheme()
            .ok_or_else(|| invalid("no scheme: write `http://host:port`"))?;
        let port = match scheme.as_str() {
            "http" => 80,
            "https" if tls_ready => 443,
            "https" => {
                return Err(invalid(
                    "`https` needs a TLS connector: set one with `Grpc::connector`",
                ))
            }
            _ => return Err(invalid("the scheme is neither `http` nor `https`")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        if authority.host().is_empty() {
            return Err(invalid("no host"));
        }
        if authority.as_str().contains('@') {
            return Err(invalid("an origin has no user info"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(invalid("an origin has no path or query"));
        }
        // What follows the host: nothing, or `:port`.
        let port = match &authority.as_str()[authority.host().len()..] {
            "" => port,
            _ => authority
                .port_u16()
                .ok_or_else(|| invalid("the port is not a number from 0 to 65535"))?,
        };
        let target = format!("{}:{port}", authority.host());
        let origin = Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
        };
        Ok((origin, target))
    }

    /// Puts the scheme and authority on a request that has none.
    fn apply<B>(&self, request: &mut Request<B>) {
        let uri = request.uri();
        if uri.scheme().is_some() || uri.authority().is_some() {
            return;
        }
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
    }
}

/// An [`Http2Connection`] that puts the origin on each request.
struct WithOrigin<B> {
    connection: Http2Connection<B>,
    origin: Origin,
}

impl<B> Clone for WithOrigin<B> {
    fn clone(&self) -> Self {
        Self {
            connection: self.connection.clone(),
            origin: self.origin.clone(),
        }
    }
}

impl<B> Service<Request<B>> for WithOrigin<B>
where
    B: Body + Send + Unpin + 'static,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.connection.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        self.origin.apply(&mut request);
        self.connection.call(request)
    }
}

/// The origin given to [`Grpc`] or [`grpc`] cannot be used: it is not a
/// URI, its scheme is neither `http` nor `https` (or `https` with no TLS
/// connector), it has no host, it has user info, its port is not a number,
/// or it has a path or query. See [`Grpc::build`].
///
/// # Example
///
/// ```
/// use tower_redial::hyper::Grpc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let error = Grpc::builder("127.0.0.1:50051").build::<String>().unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "invalid origin `127.0.0.1:50051`: no scheme: write `http://host:port`"
/// );
/// # }
/// ```
#[derive(Debug)]
pub struct InvalidOrigin {
    origin: Option<String>,
    reason: &'static str,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

impl fmt::Display for InvalidOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(origin) => write!(f, "invalid origin `{origin}`: {}", self.reason),
            None => write!(f, "invalid origin: {}", self.reason),
        }
    }
}

impl Error for InvalidOrigin {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}
