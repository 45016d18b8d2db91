//! Mutual TLS: a server that asks for a client certificate signed by its
//! CA.

use support::policy::quick_redial;
use tower_redial::tls::TlsConfig;
use tower_redial_interop::tls::{Ca, TlsServer};

use super::{connector, get, http1, rustls_error, GUARD};

/// A client certificate the server requires is presented and accepted.
#[tokio::test]
async fn a_required_client_certificate_is_accepted() {
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let server = TlsServer::hello(
        ca.server(&["localhost"]).server_config(Some(&clients)),
        "one",
    );
    let port = server.addr().port();
    let me = clients.client("client-1");
    let tls = TlsConfig::builder()
        .root_pem(ca.pem().as_bytes())
        .client_auth_pem(me.pem().as_bytes(), me.key_pem().as_bytes())
        .alpn_http1()
        .build()
        .unwrap();
    let client = http1(
        connector(tls),
        format!("localhost:{port}"),
        quick_redial().build().unwrap(),
    );

    let body = get(&client, &format!("http://localhost:{port}/"))
        .await
        .unwrap();
    assert_eq!(body, "one alpn=http/1.1 sni=localhost HTTP/1.1");
}

/// Without a client certificate, the server refuses: under TLS 1.3 its
/// alert comes after the client's handshake, so requests fail, with
/// `CertificateRequired` in their `source()` chain.
#[tokio::test]
async fn a_missing_client_certificate_is_refused() {
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let server = TlsServer::hello(
        ca.server(&["localhost"]).server_config(Some(&clients)),
        "one",
    );
    let port = server.addr().port();
    let tls = TlsConfig::builder()
        .root_pem(ca.pem().as_bytes())
        .alpn_http1()
        .build()
        .unwrap();
    let client = http1(
        connector(tls),
        format!("localhost:{port}"),
        quick_redial().build().unwrap(),
    );

    // Every request fails; the alert is in the chain (a request that finds
    // the connection already reset may see only the reset).
    let refused = tokio::time::timeout(GUARD, async {
        loop {
            let error = get(&client, &format!("http://localhost:{port}/"))
                .await
                .expect_err("no request may pass without a client certificate");
            if let Some(found) = rustls_error(&*error) {
                return found.clone();
            }
        }
    })
    .await
    .expect("the server's alert never came");
    assert_eq!(
        refused,
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
    );
}
