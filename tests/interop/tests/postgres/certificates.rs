//! A real server with `ssl=on` and certificates made
//! at test time (rcgen), and a client built with
//! `MakePostgres::with_tls(MakeRustlsConnect)` (tokio-postgres-rustls, on
//! rustls with the ring provider).
//!
//! One server goes through three certificates: one the client trusts, one
//! it does not (the dial fails, and the rustls error is there under
//! `Unavailable`), and a new trusted one, which the client meets on its
//! own redial after the restart.

use std::error::Error as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use support::pg_server::PgServer;
use tokio_postgres_rustls::MakeRustlsConnect;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::Unavailable;
use tower_redial::postgres::{MakePostgres, PgClient, Query};
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, ReconnectLayer, ReconnectPolicy};

use crate::within;

/// A certificate authority made for the test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// A server certificate for 127.0.0.1, signed by this authority: its
    /// DER, and the PEM certificate and key written to files in `dir`.
    fn server_cert(&self, dir: &Dir, name: &str) -> ServerCert {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = dir.0.join(format!("{name}.crt"));
        let key_file = dir.0.join(format!("{name}.key"));
        fs::write(&cert_file, cert.pem()).unwrap();
        fs::write(&key_file, key.serialize_pem()).unwrap();
        ServerCert {
            der: cert.der().to_vec(),
            cert_file,
            key_file,
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

struct ServerCert {
    der: Vec<u8>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl ServerCert {
    fn files(&self) -> (&Path, &Path) {
        (&self.cert_file, &self.key_file)
    }
}

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "tower-redial-pg-tls-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// rustls's own verifier, which also keeps the last certificate the server
/// presented, to see which one the client met.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(end_entity.to_vec());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client that trusts `roots` only, and records the certificate it met.
fn tls_client(server: &PgServer, roots: RootCertStore) -> (PgClient, Arc<Mutex<Option<Vec<u8>>>>) {
    let provider = Arc::new(ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Recording {
            inner,
            seen: seen.clone(),
        }))
        .with_no_client_auth();
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            2.0,
            Duration::from_millis(100),
        ))
        .wait_limit(Duration::from_millis(500))
        .build()
        .unwrap();
    let target: tokio_postgres::Config = format!("{} sslmode=require", server.conninfo())
        .parse()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::with_tls(MakeRustlsConnect::new(config)))
        .client(target);
    (client, seen)
}

/// Whether the client's session is over TLS, as the server sees it.
async fn session_ssl(client: &PgClient) -> Result<bool, BoxError> {
    let query = Query::new("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    let rows = client.clone().oneshot(query).await?;
    Ok(rows.first().expect("a row").get(0))
}

async fn ready(client: &PgClient) {
    let mut state = client.state();
    state.wait_for(|s| s.phase() == Phase::Ready).await.unwrap();
}

/// Queries run over TLS (`pg_stat_ssl` says so for the session); a server
/// restarted with a certificate from an authority the client does not
/// trust fails every dial, and queries fail fast with `Unavailable`, whose
/// `source()` chain holds the `tokio_postgres::Error` of the handshake, and
/// in its `io::Error` the rustls error itself (`UnknownIssuer`); a server
/// restarted again with a new trusted certificate is met on the client's
/// own redial, with the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_are_checked_on_every_dial() {
    let dir = Dir::new();
    let trusted = Ca::new("tower-redial test CA");
    let stranger = Ca::new("a stranger's CA");
    let first = trusted.server_cert(&dir, "first");
    let untrusted = stranger.server_cert(&dir, "untrusted");
    let second = trusted.server_cert(&dir, "second");
    let (cert, key) = first.files();
    let server = PgServer::start_with_tls(cert, key).await;
    let (client, seen) = tls_client(&server, trusted.roots());
    let seen_now = || seen.lock().unwrap_or_else(PoisonError::into_inner).clone();

    assert!(within("a query over TLS", session_ssl(&client))
        .await
        .unwrap());
    assert_eq!(seen_now().as_deref(), Some(&first.der[..]));

    // A certificate the client does not trust.
    let (cert, key) = untrusted.files();
    server.replace_tls(cert, key).await;
    within("the restart", server.restart()).await;
    let error = within("failing fast", session_ssl(&client))
        .await
        .unwrap_err();
    let unavailable = error
        .downcast_ref::<Unavailable>()
        .unwrap_or_else(|| panic!("Unavailable: {error:?}"));
    let dial = unavailable.source().expect("the dial error");
    let pg = dial
        .downcast_ref::<tokio_postgres::Error>()
        .unwrap_or_else(|| panic!("postgres's error: {dial:?}"));
    // std's `io::Error` keeps the error it wraps out of `source()`; it is
    // its `get_ref()`.
    let io = pg
        .source()
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("the handshake's io::Error: {pg:?}"));
    let tls = io
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("rustls's error: {io:?}"));
    assert_eq!(
        tls,
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_eq!(seen_now().as_deref(), Some(&untrusted.der[..]));
    // The state's last error is the same dial error.
    let state = client.state().borrow().clone();
    let last = state.last_error().expect("the last dial error");
    let last = last
        .downcast_ref::<tokio_postgres::Error>()
        .unwrap_or_else(|| panic!("postgres's error: {last:?}"));
    assert_eq!(last.to_string(), pg.to_string());
    println!("untrusted: {error}: {dial}: {io}");

    // A new trusted certificate: the client redials by itself and meets it.
    let (cert, key) = second.files();
    server.replace_tls(cert, key).await;
    within("the restart", server.restart()).await;
    within("the client's own redial", ready(&client)).await;
    assert!(within("a query over TLS", session_ssl(&client))
        .await
        .unwrap());
    assert_eq!(seen_now().as_deref(), Some(&second.der[..]));
    let stats = client.stats();
    println!("{stats:?}");
    assert!(stats.dial_failures >= 1, "{stats:?}");
}
