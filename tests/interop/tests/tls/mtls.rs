//! Mutual TLS: a server that asks for a client certificate signed by its
//! CA.

use support::policy::quick_redial;
use tower_redial::tls::TlsConfig;
use tower_redial_interop::tls::{Ca, TlsServer};

use super::{connector, get, http1, rustls_error};

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
/// alert comes after the client's handshake, so the first request fails
/// with `CertificateRequired` in its `source()` chain.
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

    let error = get(&client, &format!("http://localhost:{port}/"))
        .await
        .unwrap_err();
    assert_eq!(
        rustls_error(&*error),
        Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
        )),
        "{error:?}"
    );
}
