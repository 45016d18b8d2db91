//! hyper HTTP/1 and HTTP/2 over TLS: ALPN, SNI, and the roots a client
//! trusts.

use std::net::SocketAddr;

use support::policy::quick_redial;
use tower_redial::tls::TlsConfig;
use tower_redial_interop::tls::{Ca, TlsServer};

use super::{connector, get, http1, http2};

/// HTTP/1 over TLS: ALPN agrees `http/1.1`, SNI is the target's host, and
/// the server's certificate is checked against a CA given as PEM.
#[tokio::test]
async fn http1_over_tls_agrees_http11_by_alpn() {
    let ca = Ca::new("test ca");
    let server = TlsServer::hello(ca.server(&["localhost"]).server_config(None), "one");
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

    let body = get(&client, &format!("http://localhost:{port}/"))
        .await
        .unwrap();
    assert_eq!(body, "one alpn=http/1.1 sni=localhost HTTP/1.1");
}

/// HTTP/2 over TLS: ALPN agrees `h2`, and the server speaks HTTP/2.
#[tokio::test]
async fn http2_over_tls_agrees_h2_by_alpn() {
    let ca = Ca::new("test ca");
    let server = TlsServer::hello(ca.server(&["localhost"]).server_config(None), "one");
    let port = server.addr().port();
    let tls = TlsConfig::builder()
        .root_pem(ca.pem().as_bytes())
        .alpn_h2()
        .build()
        .unwrap();
    let client = http2(
        connector(tls),
        ("localhost", port),
        quick_redial().build().unwrap(),
    );

    for _ in 0..3 {
        let body = get(&client, &format!("https://localhost:{port}/"))
            .await
            .unwrap();
        assert_eq!(body, "one alpn=h2 sni=localhost HTTP/2.0");
    }
}

/// An address target: the certificate is checked against the IP address,
/// and no SNI is sent; a root given as DER.
#[tokio::test]
async fn an_address_target_is_checked_against_the_ip_address() {
    let ca = Ca::new("test ca");
    let server = TlsServer::hello(ca.server(&["127.0.0.1"]).server_config(None), "one");
    let tls = TlsConfig::builder().root_der(ca.der()).build().unwrap();
    let addr: SocketAddr = server.addr();
    let client = http1(connector(tls), addr, quick_redial().build().unwrap());

    let body = get(&client, &format!("http://{addr}/")).await.unwrap();
    assert_eq!(body, "one alpn=- sni=- HTTP/1.1");
}

/// `server_name` overrides the target's: an address dialed, a name checked
/// and sent as SNI.
#[tokio::test]
async fn server_name_overrides_the_targets_name() {
    let ca = Ca::new("test ca");
    let server = TlsServer::hello(ca.server(&["api.test"]).server_config(None), "one");
    let tls = TlsConfig::builder()
        .root_der(ca.der())
        .alpn_h2()
        .build()
        .unwrap();
    let addr = server.addr();
    let connector = connector(tls).server_name("api.test").unwrap();
    let client = http2(connector, addr, quick_redial().build().unwrap());

    let body = get(&client, &format!("https://api.test:{}/", addr.port()))
        .await
        .unwrap();
    assert_eq!(body, "one alpn=h2 sni=api.test HTTP/2.0");
}
