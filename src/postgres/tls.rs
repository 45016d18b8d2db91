//! PostgreSQL over TLS with the crate's own [`TlsConfig`].

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tls::{HandshakeError, InvalidServerName, TlsConfig};
use crate::BoxError;

/// A `tokio-postgres` TLS connector (`MakeTlsConnect`) on rustls, with a
/// [`TlsConfig`]: the settings a [`TlsConnector`](crate::tls::TlsConnector)
/// takes for hyper or tonic. Hand it to
/// [`MakePostgres::with_tls`](super::MakePostgres::with_tls).
///
/// The server's certificate is checked against the `host` of the config
/// (a DNS name or an IP address; `hostaddr`, if set, is where it
/// connects). A `host` that is neither fails the dial before any
/// handshake, with [`InvalidServerName`] as the
/// [`source()`](std::error::Error::source) of its `tokio_postgres::Error`.
///
/// A failed handshake (a certificate not trusted, for another name,
/// expired; an alert from the server) fails the dial with a
/// `tokio_postgres::Error` ("error performing TLS handshake") whose
/// [`source()`](std::error::Error::source) is a [`HandshakeError`], whose
/// own `source()` is the [`rustls::Error`]: walking `source()` from the
/// [`Unavailable`](crate::error::Unavailable) that queries fail with
/// reaches it, with no `io::Error` to look inside.
///
/// The same connector sends the connection's `CancelRequest`s (a query
/// past the response timeout is cancelled on the server over TLS too).
///
/// Channel binding is not offered: SCRAM authentication runs as
/// `SCRAM-SHA-256`, not `SCRAM-SHA-256-PLUS`.
///
/// # Clone
///
/// Clones share the [`TlsConfig`] (an `Arc`).
///
/// # Example
///
/// ```no_run
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_redial::postgres::{MakePostgres, PgClient, PgTls, Query};
/// use tower_redial::tls::TlsConfig;
/// use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let tls = TlsConfig::builder()
///     .root_pem(&std::fs::read("ca.pem")?)
///     .build()?;
/// // `sslmode=require`: a server without TLS is refused.
/// let config: tokio_postgres::Config =
///     "host=db.example.com user=postgres sslmode=require".parse()?;
/// let client: PgClient = ServiceBuilder::new()
///     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
///     .service(MakePostgres::with_tls(PgTls::new(tls)))
///     .client(config);
/// client.oneshot(Query::new("SELECT 1")).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[cfg_attr(docsrs, doc(cfg(all(feature = "postgres", feature = "tls"))))]
pub struct PgTls {
    config: TlsConfig,
}

impl PgTls {
    /// A connector with `config`: a [`TlsConfig`], or a rustls
    /// `ClientConfig`.
    ///
    /// ```
    /// use tower_redial::postgres::PgTls;
    /// use tower_redial::tls::TlsConfig;
    ///
    /// let tls = PgTls::new(TlsConfig::builder().webpki_roots().build()?);
    /// assert!(tls.config().client_config().alpn_protocols.is_empty());
    /// # Ok::<(), tower_redial::tls::ConfigError>(())
    /// ```
    pub fn new(config: impl Into<TlsConfig>) -> Self {
        Self {
            config: config.into(),
        }
    }

    /// The TLS settings.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = InvalidServerName;

    /// A handshake for `domain`. An empty `domain` (a Unix socket, or a
    /// `hostaddr` with no `host`) is accepted: tokio-postgres runs no TLS
    /// handshake without a host name.
    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, InvalidServerName> {
        let name = match domain {
            "" => None,
            domain => Some(crate::tls::parse_server_name(domain)?),
        };
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One TLS handshake with one server: what [`PgTls`] makes for each
/// connection (tokio-postgres's `TlsConnect`).
///
/// # Example
///
/// ```
/// use tokio::net::TcpStream;
/// use tokio_postgres::tls::MakeTlsConnect;
/// use tower_redial::postgres::{PgTls, PgTlsConnect};
/// use tower_redial::tls::TlsConfig;
///
/// let mut tls = PgTls::new(TlsConfig::builder().webpki_roots().build()?);
/// let connect: PgTlsConnect = MakeTlsConnect::<TcpStream>::make_tls_connect(&mut tls, "db.example.com")?;
/// # drop(connect);
/// // A host that is no DNS name or IP address is refused.
/// assert!(MakeTlsConnect::<TcpStream>::make_tls_connect(&mut tls, "bad_name!").is_err());
/// # Ok::<(), tower_redial::BoxError>(())
/// ```
#[cfg_attr(docsrs, doc(cfg(all(feature = "postgres", feature = "tls"))))]
pub struct PgTlsConnect {
    config: TlsConfig,
    name: Option<ServerName<'static>>,
}

impl fmt::Debug for PgTlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTlsConnect")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish()
    }
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, BoxError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.ok_or_else(|| InvalidServerName::new(""))?;
            let connector = tokio_rustls::TlsConnector::from(self.config.client_config().clone());
            match connector.connect(name.clone(), stream).await {
                Ok(stream) => Ok(PgTlsStream { inner: stream }),
                Err(error) => Err(HandshakeError::new(&name, error).into()),
            }
        })
    }
}

/// A PostgreSQL connection's stream over TLS: what [`PgTlsConnect`] hands
/// to tokio-postgres.
///
/// # Example
///
/// ```
/// use tokio::net::TcpStream;
/// use tower_redial::postgres::PgTlsStream;
/// use tower_redial::tls::rustls::ProtocolVersion;
///
/// // The TLS version the handshake agreed.
/// fn version(stream: &PgTlsStream<TcpStream>) -> Option<ProtocolVersion> {
///     stream.get_ref().get_ref().1.protocol_version()
/// }
/// # let _ = version;
/// ```
#[cfg_attr(docsrs, doc(cfg(all(feature = "postgres", feature = "tls"))))]
pub struct PgTlsStream<S> {
    inner: tokio_rustls::client::TlsStream<S>,
}

impl<S> PgTlsStream<S> {
    /// The tokio-rustls stream: the IO and the rustls connection.
    pub fn get_ref(&self) -> &tokio_rustls::client::TlsStream<S> {
        &self.inner
    }
}

impl<S> fmt::Debug for PgTlsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTlsStream").finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    /// None: see [`PgTls`].
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::*;

    fn tls() -> PgTls {
        PgTls::new(TlsConfig::builder().webpki_roots().build().unwrap())
    }

    #[test]
    fn the_host_is_the_server_name() {
        let connect = MakeTlsConnect::<TcpStream>::make_tls_connect(&mut tls(), "127.0.0.1");
        let name = connect.unwrap().name.unwrap();
        assert_eq!(name.to_str(), "127.0.0.1");
        let error =
            MakeTlsConnect::<TcpStream>::make_tls_connect(&mut tls(), "bad_name!").unwrap_err();
        assert_eq!(error.name(), "bad_name!");
    }

    #[tokio::test]
    async fn no_host_no_handshake() {
        let connect = MakeTlsConnect::<TcpStream>::make_tls_connect(&mut tls(), "").unwrap();
        let (stream, _peer) = tokio::io::duplex(64);
        let error = TlsConnect::connect(connect, stream).await.unwrap_err();
        assert!(error.is::<InvalidServerName>(), "{error:?}");
        assert!(error.source().is_none());
    }
}
