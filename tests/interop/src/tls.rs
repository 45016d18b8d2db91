//! Certificates made at run time with rcgen, and a TLS server on a port of
//! its own that can be restarted with another certificate.
//!
//! [`Ca`] makes a CA and signs server and client certificates ([`Leaf`]).
//! [`recording_config`] is a client config that records the certificates
//! it is shown. [`TlsServer`] serves a tower service over TLS (HTTP/1 or HTTP/2, as
//! ALPN agrees) on `127.0.0.1`, with the [`ServerConfig`] it is given; on
//! [`restart`](TlsServer::restart) it drops every connection and comes back
//! on the same port with a new config.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use support::listen::{Restartable, Shutdown};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// rustls's `ring` provider, which the tests use on both ends.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority made now.
pub struct Ca {
    cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A CA whose common name is `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate for `names` that expired in 2001.
    pub fn expired_server(&self, names: &[&str]) -> Leaf {
        let mut params = self.params(names, ExtendedKeyUsagePurpose::ServerAuth);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.sign(params)
    }

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        self.sign(self.params(names, usage))
    }

    fn params(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> CertificateParams {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.extended_key_usages = vec![usage];
        params
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert, key }
    }

    /// A root store with this CA alone.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der()).unwrap();
        roots
    }
}

/// A certificate signed by a [`Ca`], and its key.
pub struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Leaf {
    /// The certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The private key, PKCS #8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }

    /// A server config presenting this certificate, offering `h2` and
    /// `http/1.1` by ALPN, and asking for a client certificate signed by
    /// `clients` if given.
    pub fn server_config(&self, clients: Option<&Ca>) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                    .build()
                    .unwrap(),
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(vec![self.der()], self.key_der())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// What a [`TlsServer`] knew of the connection a request came on.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The protocol agreed by ALPN, if any.
    pub alpn: Option<String>,
    /// The SNI the client sent, if any.
    pub sni: Option<String>,
}

/// A TLS server on a `127.0.0.1` port of its own, serving HTTP/1 and
/// HTTP/2 (as ALPN agrees, or by the HTTP/2 preface) with a service that
/// [`TlsServer::start`] makes for each connection. Dropping it stops it.
pub struct TlsServer {
    server: Restartable,
    config: Arc<Mutex<Arc<ServerConfig>>>,
}

impl TlsServer {
    /// Serves with `config`; `service` makes each connection's service
    /// from what the handshake agreed.
    pub fn start<S, F, B>(config: Arc<ServerConfig>, service: F) -> Self
    where
        F: Fn(Seen) -> S + Send + Sync + 'static,
        S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let config = Arc::new(Mutex::new(config));
        let current = config.clone();
        let service = Arc::new(service);
        let server = Restartable::start(move |listener, shutdown| {
            let config = current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            serve(
                listener,
                shutdown,
                TlsAcceptor::from(config),
                service.clone(),
            )
        });
        Self { server, config }
    }

    /// A server that answers every request with a line naming what it saw:
    /// `"{label} alpn={alpn} sni={sni} {version:?}"`.
    pub fn hello(config: Arc<ServerConfig>, label: &str) -> Self {
        let label: Arc<str> = Arc::from(label);
        Self::start(config, move |seen: Seen| {
            let label = label.clone();
            tower::service_fn(move |request: Request<Incoming>| {
                let line = format!(
                    "{label} alpn={} sni={} {:?}",
                    seen.alpn.as_deref().unwrap_or("-"),
                    seen.sni.as_deref().unwrap_or("-"),
                    request.version()
                );
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(line)))) }
            })
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Drops every connection and serves again on the same port, with
    /// `config` from now on.
    pub async fn restart(&mut self, config: Arc<ServerConfig>) {
        *self.config.lock().unwrap_or_else(PoisonError::into_inner) = config;
        self.server.restart_gracefully().await;
    }
}

async fn serve<S, F, B>(
    listener: TcpListener,
    mut shutdown: Shutdown,
    tls: TlsAcceptor,
    service: Arc<F>,
) where
    F: Fn(Seen) -> S + Send + Sync + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connections = JoinSet::new();
    loop {
        let io = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((io, _)) => io,
                Err(_) => continue,
            },
        };
        let tls = tls.clone();
        let service = service.clone();
        connections.spawn(async move {
            // A failed handshake (an untrusted client, an alert) ends here.
            let Ok(stream) = tls.accept(io).await else {
                return;
            };
            let (_, session) = stream.get_ref();
            let seen = Seen {
                alpn: session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                sni: session.server_name().map(str::to_string),
            };
            let service = TowerToHyperService::new(service(seen));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    // Stop listening first, so that no redial lands in the old backlog;
    // then drop every connection, as a crash would.
    drop(listener);
    connections.shutdown().await;
}

/// A rustls client config that trusts `roots` alone, with rustls's own
/// verifier wrapped so that it records every certificate a server
/// presents, verified or not, in order: to see which certificate a client
/// met on which dial.
pub fn recording_config(roots: RootCertStore) -> (ClientConfig, Presented) {
    let presented = Presented::default();
    let verifier = Recording {
        inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap(),
        presented: presented.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    (config, presented)
}

/// The certificates servers presented to a [`recording_config`], in order.
#[derive(Clone, Debug, Default)]
pub struct Presented(Arc<Mutex<Vec<CertificateDer<'static>>>>);

impl Presented {
    /// Every certificate presented so far.
    pub fn all(&self) -> Vec<CertificateDer<'static>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The certificate presented last.
    pub fn last(&self) -> Option<CertificateDer<'static>> {
        self.all().pop()
    }
}

/// rustls's own verifier, recording what it is given.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    presented: Presented,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        (self.presented.0)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(end_entity.clone().into_owned());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
