//! The client's TLS settings: roots, client certificate, ALPN.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The TLS settings of a [`TlsConnector`](super::TlsConnector): a rustls
/// [`ClientConfig`] behind an `Arc`.
///
/// Build one with [`TlsConfig::builder`] (roots, a client certificate,
/// ALPN), or bring a [`ClientConfig`] of your own with `From` for anything
/// else rustls offers (a custom verifier, session resumption settings, key
/// logging).
///
/// # Clone
///
/// Cloning is cheap: the clones share one `ClientConfig` (an `Arc`).
///
/// # Example
///
/// ```
/// use tower_redial::tls::TlsConfig;
///
/// // The Mozilla roots of `webpki-roots`, and HTTP/2 by ALPN.
/// let config = TlsConfig::builder().webpki_roots().alpn_h2().build()?;
/// assert_eq!(config.client_config().alpn_protocols, [b"h2".to_vec()]);
/// # Ok::<(), tower_redial::tls::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<ClientConfig>,
}

impl TlsConfig {
    /// A builder with no roots, no client certificate and no ALPN.
    pub fn builder() -> TlsConfigBuilder {
        TlsConfigBuilder {
            roots: RootCertStore::empty(),
            client_auth: None,
            alpn: Vec::new(),
            error: None,
        }
    }

    /// The rustls configuration itself.
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.inner
    }

    /// The same settings, but offering `protocols` by ALPN, in order of
    /// preference; the rest is shared with `self` by a copy of the
    /// `ClientConfig`. For a handshake that needs one protocol, as
    /// `hyper::http2` needs `h2`.
    ///
    /// ```
    /// # use tower_redial::tls::TlsConfig;
    /// let config = TlsConfig::builder().webpki_roots().build()?;
    /// let h2 = config.with_alpn([b"h2".to_vec()]);
    /// assert_eq!(h2.client_config().alpn_protocols, [b"h2".to_vec()]);
    /// assert!(config.client_config().alpn_protocols.is_empty());
    /// # Ok::<(), tower_redial::tls::ConfigError>(())
    /// ```
    ///
    /// # Panics
    ///
    /// If a protocol name is empty or longer than 255 bytes, which TLS
    /// cannot carry (RFC 7301).
    pub fn with_alpn(&self, protocols: impl IntoIterator<Item = Vec<u8>>) -> Self {
        let mut config = ClientConfig::clone(&self.inner);
        config.alpn_protocols = protocols.into_iter().collect();
        for protocol in &config.alpn_protocols {
            if let Err(error) = check_alpn(protocol) {
                panic!("TlsConfig::with_alpn: {error}");
            }
        }
        Self::from(config)
    }
}

impl From<ClientConfig> for TlsConfig {
    fn from(config: ClientConfig) -> Self {
        Self::from(Arc::new(config))
    }
}

impl From<Arc<ClientConfig>> for TlsConfig {
    fn from(inner: Arc<ClientConfig>) -> Self {
        Self { inner }
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpn: Vec<_> = self
            .inner
            .alpn_protocols
            .iter()
            .map(|p| String::from_utf8_lossy(p))
            .collect();
        f.debug_struct("TlsConfig")
            .field("alpn", &alpn)
            .field(
                "client_auth",
                &self.inner.client_auth_cert_resolver.has_certs(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`TlsConfig`] on rustls's `ring` provider and its safe
/// default protocol versions (TLS 1.2 and 1.3).
///
/// Each method adds to the settings; errors in what was given (a PEM with
/// no certificate, a key that does not parse or does not match) are all
/// reported by [`build`](Self::build), the first one first.
///
/// # Example
///
/// A private CA's root, and a client certificate for a server that asks
/// for one (mutual TLS):
///
/// ```no_run
/// use tower_redial::tls::TlsConfig;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = TlsConfig::builder()
///     .root_pem(&std::fs::read("ca.pem")?)
///     .client_auth_pem(&std::fs::read("client.pem")?, &std::fs::read("client.key")?)
///     .alpn_h2()
///     .build()?;
/// # drop(config);
/// # Ok(())
/// # }
/// ```
pub struct TlsConfigBuilder {
    roots: RootCertStore,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: Vec<Vec<u8>>,
    error: Option<ConfigError>,
}

impl TlsConfigBuilder {
    /// Trusts the Mozilla root certificates that `webpki-roots` ships.
    pub fn webpki_roots(mut self) -> Self {
        self.roots
            .extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        self
    }

    /// Trusts the platform's root certificates, loaded now with
    /// `rustls-native-certs`. Certificates that do not parse are skipped;
    /// [`build`](Self::build) fails only if none could be loaded.
    #[cfg(feature = "tls-native-roots")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls-native-roots")))]
    pub fn native_roots(mut self) -> Self {
        let loaded = rustls_native_certs::load_native_certs();
        let (added, _) = self.roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let why = loaded
                .errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "none found".to_string());
            self.fail(ConfigError::new(format!(
                "no platform root certificate could be loaded: {why}"
            )));
        }
        self
    }

    /// Trusts the certificates of a PEM file (one or more
    /// `CERTIFICATE` blocks): a private CA, or a self-signed server.
    pub fn root_pem(mut self, pem: &[u8]) -> Self {
        match certificates(pem, "root") {
            Ok(certs) => {
                for cert in certs {
                    self = self.root_der(cert);
                }
            }
            Err(error) => self.fail(error),
        }
        self
    }

    /// Trusts one DER-encoded certificate.
    pub fn root_der(mut self, der: impl Into<CertificateDer<'static>>) -> Self {
        if let Err(error) = self.roots.add(der.into()) {
            self.fail(ConfigError::with_source(
                "a root certificate is invalid",
                error,
            ));
        }
        self
    }

    /// Presents this certificate chain (leaf first) and its private key
    /// when the server asks for a client certificate. PEM: `CERTIFICATE`
    /// blocks, and a PKCS #8, PKCS #1 or SEC1 key.
    pub fn client_auth_pem(mut self, chain: &[u8], key: &[u8]) -> Self {
        let chain = match certificates(chain, "client") {
            Ok(chain) => chain,
            Err(error) => {
                self.fail(error);
                return self;
            }
        };
        match PrivateKeyDer::from_pem_slice(key) {
            Ok(key) => self.client_auth_der(chain, key),
            Err(error) => {
                self.fail(ConfigError::with_source(
                    "no private key in the client key's PEM",
                    error,
                ));
                self
            }
        }
    }

    /// Presents this DER certificate chain (leaf first) and its private key
    /// when the server asks for a client certificate.
    pub fn client_auth_der(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.client_auth = Some((chain, key));
        self
    }

    /// Offers HTTP/2 (`h2`) by ALPN, after any protocol offered before.
    pub fn alpn_h2(self) -> Self {
        self.alpn(b"h2")
    }

    /// Offers HTTP/1.1 (`http/1.1`) by ALPN, after any protocol offered
    /// before.
    pub fn alpn_http1(self) -> Self {
        self.alpn(b"http/1.1")
    }

    /// Offers `protocol` by ALPN, after any protocol offered before.
    ///
    /// A name must be 1 to 255 bytes long (RFC 7301); [`build`](Self::build)
    /// refuses any other with a [`ConfigError`].
    pub fn alpn(mut self, protocol: &[u8]) -> Self {
        if let Err(error) = check_alpn(protocol) {
            self.fail(error);
        }
        self.alpn.push(protocol.to_vec());
        self
    }

    /// The configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if no root was added, if a certificate or key given
    /// did not parse, if the client key does not fit its certificate, or if
    /// an ALPN protocol name is empty or longer than 255 bytes.
    pub fn build(self) -> Result<TlsConfig, ConfigError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.roots.is_empty() {
            return Err(ConfigError::new(
                "no root certificates: add webpki roots, native roots or your own",
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::with_source("no protocol version", e))?
            .with_root_certificates(self.roots);
        let mut config = match self.client_auth {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
                ConfigError::with_source("the client certificate or key is invalid", e)
            })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn;
        Ok(TlsConfig::from(config))
    }

    fn fail(&mut self, error: ConfigError) {
        self.error.get_or_insert(error);
    }
}

impl fmt::Debug for TlsConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfigBuilder")
            .field("roots", &self.roots.len())
            .field("client_auth", &self.client_auth.is_some())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// An ALPN protocol name is 1 to 255 bytes long (RFC 7301): its length
/// goes in one byte, and an empty one is not allowed.
fn check_alpn(protocol: &[u8]) -> Result<(), ConfigError> {
    if (1..=255).contains(&protocol.len()) {
        return Ok(());
    }
    Err(ConfigError::new(format!(
        "an ALPN protocol name is 1 to 255 bytes long, not {}",
        protocol.len()
    )))
}

/// The `CERTIFICATE` blocks of `pem`; at least one.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::with_source(format!("the {what} PEM does not parse"), e))?;
    if certs.is_empty() {
        return Err(ConfigError::new(format!(
            "no certificate in the {what} PEM"
        )));
    }
    Ok(certs)
}

/// A [`TlsConfigBuilder`] was given something it cannot use.
///
/// # Example
///
/// ```
/// use tower_redial::tls::TlsConfig;
///
/// let error = TlsConfig::builder().build().unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "no root certificates: add webpki roots, native roots or your own"
/// );
/// let error = TlsConfig::builder().root_pem(b"not a pem").build().unwrap_err();
/// assert_eq!(error.to_string(), "no certificate in the root PEM");
/// ```
#[derive(Debug)]
pub struct ConfigError {
    message: String,
    source: Option<Box<dyn Error + Send + Sync>>,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    fn with_source(message: impl Into<String>, source: impl Error + Send + Sync + 'static) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for ConfigError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_given_is_reported() {
        let error = TlsConfig::builder()
            .root_pem(b"no pem")
            .client_auth_pem(b"", b"")
            .webpki_roots()
            .build()
            .unwrap_err();
        assert_eq!(error.to_string(), "no certificate in the root PEM");

        let error = TlsConfig::builder()
            .webpki_roots()
            .client_auth_pem(b"", b"")
            .root_der(CertificateDer::from(vec![1, 2, 3]))
            .build()
            .unwrap_err();
        assert_eq!(error.to_string(), "no certificate in the client PEM");
    }

    #[test]
    #[should_panic(expected = "an ALPN protocol name is 1 to 255 bytes long, not 0")]
    fn with_alpn_refuses_an_empty_name() {
        let config = TlsConfig::builder().webpki_roots().build().unwrap();
        let _ = config.with_alpn([Vec::new()]);
    }

    #[test]
    fn webpki_roots_and_alpn_in_order() {
        let config = TlsConfig::builder()
            .webpki_roots()
            .alpn_h2()
            .alpn_http1()
            .alpn(b"x")
            .build()
            .unwrap();
        let alpn = &config.client_config().alpn_protocols;
        assert_eq!(alpn, &[b"h2".to_vec(), b"http/1.1".to_vec(), b"x".to_vec()]);
        assert!(format!("{config:?}").contains(r#"alpn: ["h2", "http/1.1", "x"]"#));
    }
}
