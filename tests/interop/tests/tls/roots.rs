//! The roots and client certificates `TlsConfig`'s builder takes, and its
//! errors.

use std::path::PathBuf;

use support::policy::quick_redial;
use tower::ServiceExt;
use tower_redial::connect::TcpConnector;
use tower_redial::tls::{TlsConfig, TlsConnector};
use tower_redial_interop::tls::{Ca, TlsServer};

use super::{connector, get, http1, GUARD};

/// A file removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("tower-redial-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `native_roots` loads the platform's roots (here pointed at a file by
/// `SSL_CERT_FILE`, which `rustls-native-certs` reads, with no
/// `SSL_CERT_DIR`): a CA found there
/// is trusted, and finding none fails `build`. One test, as it sets the
/// process's environment.
#[tokio::test]
async fn native_roots_are_the_platforms() {
    let ca = Ca::new("platform ca");
    let server = TlsServer::hello(ca.server(&["localhost"]).server_config(None), "one");
    let port = server.addr().port();

    let empty = TempFile::new("empty.pem", "");
    std::env::remove_var("SSL_CERT_DIR");
    std::env::set_var("SSL_CERT_FILE", &empty.0);
    let error = TlsConfig::builder().native_roots().build().unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("no platform root certificate could be loaded"),
        "{error}"
    );

    let file = TempFile::new("ca.pem", &ca.pem());
    std::env::set_var("SSL_CERT_FILE", &file.0);
    let tls = TlsConfig::builder().native_roots().build().unwrap();
    std::env::remove_var("SSL_CERT_FILE");
    let client = http1(
        connector(tls),
        format!("localhost:{port}"),
        quick_redial().build().unwrap(),
    );
    let body = get(&client, &format!("http://localhost:{port}/"))
        .await
        .unwrap();
    assert_eq!(body, "one alpn=- sni=localhost HTTP/1.1");
}

/// Several roots in one PEM are all trusted.
#[tokio::test]
async fn every_root_of_a_pem_is_trusted() {
    let (first, second) = (Ca::new("first"), Ca::new("second"));
    let server = TlsServer::hello(second.server(&["localhost"]).server_config(None), "one");
    let port = server.addr().port();
    let pem = first.pem() + &second.pem();
    let tls = TlsConfig::builder()
        .root_pem(pem.as_bytes())
        .build()
        .unwrap();
    let client = http1(
        connector(tls),
        format!("localhost:{port}"),
        quick_redial().build().unwrap(),
    );
    assert!(get(&client, &format!("http://localhost:{port}/"))
        .await
        .is_ok());
}

/// The connector on its own: its IO is the TLS stream, which tells what
/// ALPN agreed.
#[tokio::test]
async fn the_stream_tells_the_agreed_protocol() {
    let ca = Ca::new("test ca");
    let server = TlsServer::hello(ca.server(&["localhost"]).server_config(None), "one");
    let tls = TlsConfig::builder()
        .root_der(ca.der())
        .alpn_h2()
        .alpn_http1()
        .build()
        .unwrap();
    let target = format!("localhost:{}", server.addr().port());
    let stream = tokio::time::timeout(
        GUARD,
        TlsConnector::new(TcpConnector::new(), tls).oneshot(target),
    )
    .await
    .expect("the dial hung")
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// A client key that does not parse, or does not fit its certificate,
/// fails `build` with a clear error.
#[test]
fn a_bad_client_key_fails_the_build() {
    let ca = Ca::new("test ca");
    let (me, other) = (ca.client("me"), ca.client("other"));

    let error = TlsConfig::builder()
        .root_der(ca.der())
        .client_auth_pem(me.pem().as_bytes(), b"no key here")
        .build()
        .unwrap_err();
    assert_eq!(error.to_string(), "no private key in the client key's PEM");

    let error = TlsConfig::builder()
        .root_der(ca.der())
        .client_auth_pem(me.pem().as_bytes(), other.key_pem().as_bytes())
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the client certificate or key is invalid"
    );
    assert!(std::error::Error::source(&error).is_some());

    let error = TlsConfig::builder()
        .root_der(ca.der())
        .client_auth_pem(b"", me.key_pem().as_bytes())
        .build()
        .unwrap_err();
    assert_eq!(error.to_string(), "no certificate in the client PEM");
}
