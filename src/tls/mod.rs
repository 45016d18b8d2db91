//! TLS over any connector, with rustls.
//!
//! *Needs the `tls` feature* (`tls-native-roots` adds the platform's roots).
//!
//! [`TlsConnector`] wraps a raw connector, such as
//! [`TcpConnector`](crate::connect::TcpConnector), and runs a TLS client
//! handshake over each connection it makes: its IO is a
//! [`TlsStream`] of the inner IO. Hand it to
//! [`Handshake`](crate::connect::Handshake) as you would the bare connector,
//! and the protocol's handshake (hyper's, tonic's, a line codec) runs over
//! TLS. Every dial makes a fresh TLS connection and checks the server's
//! certificate afresh.
//!
//! The settings are a [`TlsConfig`]: build one with [`TlsConfig::builder`]
//! (the `webpki-roots` Mozilla roots, your own roots, a client certificate,
//! ALPN), or bring a rustls [`ClientConfig`](rustls::ClientConfig). rustls
//! runs on its `ring` provider.
//!
//! # Example
//!
//! An HTTP/2 client that stays connected to an HTTPS server:
//!
//! ```no_run
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_redial::connect::{Handshake, TcpConnector};
//! use tower_redial::tls::{TlsConfig, TlsConnector};
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let tls = TlsConfig::builder().webpki_roots().alpn_h2().build()?;
//! let client = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(Handshake::new(
//!         TlsConnector::new(TcpConnector::new(), tls),
//!         tower_redial::hyper::http2::<Full<Bytes>>,
//!     ))
//!     .multiplexed("example.com:443"); // SNI and the certificate check: example.com
//!
//! let request = Request::get("https://example.com/").body(Full::new(Bytes::new()))?;
//! let response = client.oneshot(request).await?;
//! assert!(response.status().is_success());
//! # Ok(())
//! # }
//! ```
//!
//! `examples/tls.rs` (`cargo run -p tower-redial-interop --example tls`)
//! runs the same against a local server, with certificates made at run
//! time, across a certificate rotation.
//!
//! hyper-util's legacy `Client` keeps its own pool and takes connectors
//! whose IO is hyper's, not tokio's: for it, use `hyper-rustls`'s
//! `HttpsConnector`.
//!
//! # The server's name
//!
//! The name sent as SNI and checked against the server's certificate comes
//! from the target, through [`TargetName`]: the host of `"host:port"`,
//! `(host, port)` or an `http::Uri`, or the IP address of a `SocketAddr`
//! (checked against the certificate's IP address entries; TLS sends no SNI
//! for an address). To dial one thing and check another name, set it with
//! [`TlsConnector::server_name`].
//!
//! # ALPN
//!
//! The protocols the [`TlsConfig`] offers by ALPN are sent as they are:
//! offer what the handshake after TLS speaks, `h2` for
//! [`hyper::http2`](crate::hyper::http2) and tonic, `http/1.1` for
//! [`hyper::http1`](crate::hyper::http1)
//! ([`alpn_h2`](TlsConfigBuilder::alpn_h2),
//! [`alpn_http1`](TlsConfigBuilder::alpn_http1),
//! [`TlsConfig::with_alpn`]). A server that supports none of them refuses
//! the handshake (see below). What was agreed is on the stream, for a
//! handshake of your own that chooses: `stream.get_ref().1.alpn_protocol()`.
//!
//! # Errors
//!
//! A TLS failure fails the dial, like a refused TCP connection:
//!
//! | what failed | the dial's error | its `source()` |
//! |---|---|---|
//! | the inner connector (a refused connection, a DNS failure) | the connector's own error, unchanged | — |
//! | the handshake: a certificate not trusted, for another name, expired; an alert from the server (no ALPN protocol in common) | [`HandshakeError`] | the [`rustls::Error`] itself, as rustls reported it |
//! | the handshake: the connection broke during it | [`HandshakeError`] | the `io::Error` |
//! | the target has no valid server name | [`InvalidServerName`] | — |
//!
//! Past the wait limit, requests fail fast with
//! [`Unavailable`](crate::error::Unavailable), whose `source()` is that
//! dial error; walk `source()` to reach rustls's error and match on it.
//!
//! **Such a dial is retried by the backoff**, as every dial failure is,
//! until the policy's attempt or time limit, if set, closes the client
//! ([`Closed`](crate::error::Closed), with the same `source()`). A
//! certificate error is not taken as fatal, for two reasons. It is often
//! transient: a server restarted with a renewed certificate, a rotated CA
//! that clients are being given, or a load balancer whose backends are
//! part way through a rollout, are all fixed by the next dial, which checks
//! the certificate afresh; gRPC likewise treats a failed TLS handshake as
//! a transient failure and keeps reconnecting. And a misconfiguration
//! stays visible: requests fail fast with the certificate error past the
//! wait limit, and an attempt or time limit (off by default) closes the
//! client for good where that is wanted.
//!
//! # Client certificates
//!
//! With a client certificate set ([`TlsConfigBuilder::client_auth_pem`]),
//! it is presented when the server asks for one. Under TLS 1.3 a server
//! checks the client's certificate after the client has finished its
//! handshake, so a server that refuses it (or its absence) does so on the
//! first read: the dial succeeds, and the request fails with the server's
//! alert (`CertificateRequired` when none was sent) in its `source()`
//! chain, as a [`rustls::Error`] inside an `io::Error` (reach it
//! with `io::Error::get_ref`).
//!
//! # Certificate rotation
//!
//! Each dial makes a new TLS connection, and a full handshake verifies the
//! certificate the server presents then: a server restarted with a new
//! certificate (renewed, or from a rotated CA the client trusts) is
//! verified on the redial, with nothing to reload in the client. (A
//! handshake that resumes an earlier session skips the check; a restarted
//! server does not resume sessions it did not issue.)

mod config;
mod error;
mod future;
mod name;

pub use config::{ConfigError, TlsConfig, TlsConfigBuilder};
pub use error::HandshakeError;
pub use future::TlsConnecting;
pub use name::{InvalidServerName, TargetName};

pub(crate) use name::parse as parse_server_name;

/// The rustls this module is built on, for a [`ClientConfig`](rustls::ClientConfig)
/// of your own and to match on [`rustls::Error`].
pub use rustls;

use std::fmt;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tower::Service;

use crate::BoxError;

/// A connector that runs a TLS client handshake over the connections of
/// another: `C` is a `Service<Target>` whose response is an IO, such as
/// [`TcpConnector`](crate::connect::TcpConnector).
///
/// Its response is a [`TlsStream`] over `C`'s IO. The server's name comes
/// from the target ([`TargetName`]) unless set with
/// [`server_name`](Self::server_name). See the [module docs](self) for an
/// example and for its errors.
///
/// # Clone
///
/// Clones share the [`TlsConfig`] (an `Arc`), and clone `C`.
///
/// # Example
///
/// ```
/// use tower_redial::connect::TcpConnector;
/// use tower_redial::tls::{TlsConfig, TlsConnector};
///
/// let tls = TlsConfig::builder().webpki_roots().alpn_http1().build()?;
/// // Dial an address, and check the certificate for a name.
/// let connector = TlsConnector::new(TcpConnector::new(), tls).server_name("api.example.com")?;
/// # drop(connector);
/// # Ok::<(), tower_redial::BoxError>(())
/// ```
#[derive(Clone)]
pub struct TlsConnector<C> {
    inner: C,
    config: TlsConfig,
    server_name: Option<ServerName<'static>>,
}

impl<C> TlsConnector<C> {
    /// TLS with `config` over the connections `inner` makes.
    pub fn new(inner: C, config: impl Into<TlsConfig>) -> Self {
        Self {
            inner,
            config: config.into(),
            server_name: None,
        }
    }

    /// Checks every server's certificate against `name`, and sends it as
    /// SNI, whatever the target: for a target that is an address, or whose
    /// host differs from the certificate's name. `name` is a DNS name or an
    /// IP address.
    ///
    /// # Errors
    ///
    /// [`InvalidServerName`] if `name` is neither.
    pub fn server_name(mut self, name: &str) -> Result<Self, InvalidServerName> {
        self.server_name = Some(name::parse(name)?);
        Ok(self)
    }

    /// The TLS settings.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// The inner connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }
}

impl<C: fmt::Debug> fmt::Debug for TlsConnector<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl<C, T> Service<T> for TlsConnector<C>
where
    C: Service<T>,
    C::Response: AsyncRead + AsyncWrite + Unpin,
    C::Error: Into<BoxError>,
    T: TargetName,
{
    type Response = TlsStream<C::Response>;
    type Error = BoxError;
    type Future = TlsConnecting<C::Future, C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: T) -> Self::Future {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => match target.server_name() {
                Ok(name) => name,
                Err(error) => return TlsConnecting::failed(error),
            },
        };
        let config = self.config.client_config().clone();
        TlsConnecting::new(self.inner.call(target), config, name)
    }
}
