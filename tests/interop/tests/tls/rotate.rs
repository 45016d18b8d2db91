//! A server restarted with a new certificate, from a rotated CA the client
//! trusts beside the old one: the redial verifies the new certificate.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use support::policy::quick_redial;
use tower_redial::tls::TlsConfig;
use tower_redial_interop::tls::{provider, Ca, TlsServer};

use super::{connector, get, http2, GUARD};

/// rustls's own verifier, recording each certificate it verifies.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Vec<CertificateDer<'static>>>>,
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
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        if verified.is_ok() {
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(end_entity.clone().into_owned());
        }
        verified
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

/// A server restarted with a certificate from a new CA, which the client
/// trusts beside the old one, is verified on the redial: the client's
/// verifier saw the old certificate, then the new one, and the requests
/// after the restart succeed. The client's config is a rustls
/// `ClientConfig` of the test's own (a recording verifier).
#[tokio::test]
async fn a_restart_with_a_new_certificate_is_verified_on_the_redial() {
    let (old_ca, new_ca) = (Ca::new("old ca"), Ca::new("new ca"));
    let (old, new) = (old_ca.server(&["localhost"]), new_ca.server(&["localhost"]));
    let mut server = TlsServer::hello(old.server_config(None), "server");
    let port = server.addr().port();

    let mut roots = RootCertStore::empty();
    roots.add(old_ca.der()).unwrap();
    roots.add(new_ca.der()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let verifier = Recording {
        inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap(),
        seen: seen.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let client = http2(
        connector(TlsConfig::from(config)),
        format!("localhost:{port}"),
        quick_redial().build().unwrap(),
    );
    let uri = format!("https://localhost:{port}/");
    let seen = move || seen.lock().unwrap_or_else(PoisonError::into_inner).clone();

    assert_eq!(
        get(&client, &uri).await.unwrap(),
        "server alpn=h2 sni=localhost HTTP/2.0"
    );
    assert_eq!(seen(), [old.der()]);

    server.restart(new.server_config(None)).await;
    // The client notices the closed connection and redials; a request sent
    // on the old connection before that may fail, as it may have been sent.
    let body = tokio::time::timeout(GUARD, async {
        loop {
            if let Ok(body) = get(&client, &uri).await {
                return body;
            }
        }
    })
    .await
    .expect("never reconnected");
    assert_eq!(body, "server alpn=h2 sni=localhost HTTP/2.0");
    assert_eq!(seen(), [old.der(), new.der()]);
}
