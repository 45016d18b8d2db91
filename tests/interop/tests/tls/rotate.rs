//! A server restarted with a new certificate, from a rotated CA the client
//! trusts beside the old one: the redial verifies the new certificate.

use rustls::RootCertStore;
use support::policy::quick_redial;
use tower_redial::tls::TlsConfig;
use tower_redial_interop::tls::{recording_config, Ca, TlsServer};

use super::{connector, get, http2, GUARD};

/// A server restarted with a certificate from a new CA, which the client
/// trusts beside the old one, is verified on the redial: the client's
/// verifier was shown the old certificate, then the new one, and the requests
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
    let (mut config, presented) = recording_config(roots);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let client = http2(
        connector(TlsConfig::from(config)),
        format!("localhost:{port}"),
        quick_redial().build().unwrap(),
    );
    let uri = format!("https://localhost:{port}/");

    assert_eq!(
        get(&client, &uri).await.unwrap(),
        "server alpn=h2 sni=localhost HTTP/2.0"
    );
    assert_eq!(presented.all(), [old.der()]);

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
    assert_eq!(presented.all(), [old.der(), new.der()]);
}
