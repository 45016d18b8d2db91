//! The origin a [`Grpc`](super::Grpc) client is bound to, and the check
//! of it.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::hyper::body::{Body, Incoming};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response};
use tower::Service;

use super::super::{Http2Connection, ResponseFuture};
use crate::BoxError;

/// What dials the origin, as far as the scheme check cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialer {
    /// Plain TCP: the default connector, or one whose IO is a bare
    /// `TcpStream`.
    Tcp,
    /// A TLS connector set with `Grpc::tls`.
    Tls,
    /// A connector of the user's own: it may or may not add TLS.
    Own,
}

/// The scheme and authority put on each request.
#[derive(Clone, Debug)]
pub(super) struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// The origin of `uri`, and the `host:port` to dial.
    pub(super) fn parse(uri: &Uri, dialer: Dialer) -> Result<(Self, String), InvalidOrigin> {
        let invalid = |reason: &'static str| InvalidOrigin {
            origin: Some(uri.to_string()),
            reason,
            source: None,
        };
        let scheme = uri
            .scheme()
            .ok_or_else(|| invalid("no scheme: write `http://host:port`"))?;
        let port = match scheme.as_str() {
            "http" if dialer == Dialer::Tls => {
                return Err(invalid(
                    "`Grpc::tls` needs an `https` origin: write `https://host:port`",
                ))
            }
            "http" => 80,
            "https" if dialer != Dialer::Tcp => 443,
            "https" => return Err(invalid(
                "`https` needs TLS: set it with `Grpc::tls`, or a TLS connector with `Grpc::connector`",
            )),
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
pub(super) struct WithOrigin<B> {
    pub(super) connection: Http2Connection<B>,
    pub(super) origin: Origin,
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

/// The origin given to [`Grpc`](super::Grpc) or [`grpc`](super::grpc)
/// cannot be used: it is not a URI, its scheme is neither `http` nor
/// `https` (or `https` with no TLS, or `http` with [`Grpc::tls`](super::Grpc::tls)),
/// it has no host, it has user info, its port is not a number, or it has a
/// path or query. See [`Grpc::build`](super::Grpc::build).
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
    pub(super) origin: Option<String>,
    pub(super) reason: &'static str,
    pub(super) source: Option<Arc<dyn Error + Send + Sync>>,
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
