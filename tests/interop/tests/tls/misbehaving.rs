//! `tower_redial::tls` against servers that misbehave during or right
//! after the TLS handshake.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use std::error::Error;
use support::policy::quick_redial;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::connect::{Handshake, TcpConnector};
use tower_redial::error::{ConnectTimeout, ConnectionLost, NotSent, Unavailable};
use tower_redial::tls::{HandshakeError, TlsConfig, TlsConnector};
use tower_redial::{BoxError, Client, ReconnectLayer, ReconnectPolicy};
use tower_redial_interop::tls::Ca;

use support::line::deadline as within;

type HttpClient = Client<http::Request<Full<Bytes>>, http::Response<Incoming>>;

/// Aborts the server task when dropped.
struct Server(JoinHandle<()>, SocketAddr);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server that accepts TCP connections and does `each` with each.
async fn server<F, Fut>(each: F) -> Server
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    Server(
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(each(stream));
            }
        }),
        addr,
    )
}

fn http2_client(ca: &Ca, addr: SocketAddr, policy: ReconnectPolicy) -> HttpClient {
    let tls = TlsConfig::builder()
        .root_der(ca.der())
        .alpn_h2()
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(Handshake::new(
            TlsConnector::new(TcpConnector::new(), tls),
            tower_redial::hyper::http2::<Full<Bytes>>,
        ))
        .multiplexed(addr)
}

async fn get(client: &HttpClient, addr: SocketAddr) -> Result<http::Response<Incoming>, BoxError> {
    let request = http::Request::get(format!("https://{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.clone().oneshot(request).await
}

fn policy() -> ReconnectPolicy {
    quick_redial()
        .connect_timeout(Duration::from_millis(200))
        .wait_limit(Duration::from_millis(700))
        .build()
        .unwrap()
}

/// A server that accepts TCP and never answers the ClientHello: each dial
/// ends at the connect timeout, which covers the TLS handshake, and the
/// request fails fast with `Unavailable` whose source is the
/// `ConnectTimeout`, past the wait limit; it never hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_server_is_bounded_by_the_connect_timeout() {
    let ca = Ca::new("adversary ca");
    let silent = server(|mut stream| async move {
        let mut buf = vec![0; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let client = http2_client(&ca, silent.1, policy());
    let error = within("the request", get(&client, silent.1))
        .await
        .unwrap_err();
    let unavailable = error
        .downcast_ref::<Unavailable>()
        .unwrap_or_else(|| panic!("not Unavailable: {error:?}"));
    let source = unavailable.source().expect("the dial error");
    assert!(source.is::<ConnectTimeout>(), "{source:?}");
    assert!(unavailable.attempts() >= 2, "{unavailable:?}");
}

/// A server that completes the TLS handshake, then resets: the request
/// fails (with `ConnectionLost` or, once the re-sends are spent, `NotSent`)
/// instead of hanging, and the client has dropped the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_resets_after_the_handshake_fails_the_request() {
    let ca = Ca::new("adversary ca");
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server(&["127.0.0.1"]).server_config(None));
    let reset = server(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let (tcp, _) = tls.into_inner();
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            drop(tcp);
        }
    })
    .await;
    let client = http2_client(&ca, reset.1, policy());
    let error = within("the request", get(&client, reset.1))
        .await
        .unwrap_err();
    assert!(
        ConnectionLost::is_in(&*error) || NotSent::is_in(&*error),
        "{error:?}"
    );
    // The client's task counts the drop as it acts on the error, which may
    // be just after the caller has it.
    within("the client drops the connection", async {
        while client.stats().drops == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Plain text where TLS is expected (an `https` client on an HTTP port):
/// the dial fails with `HandshakeError`, whose source is rustls's
/// `InvalidMessage`, under `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_where_tls_is_expected_is_a_handshake_error() {
    let ca = Ca::new("adversary ca");
    let plain = server(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    })
    .await;
    let client = http2_client(&ca, plain.1, policy());
    let error = within("the request", get(&client, plain.1))
        .await
        .unwrap_err();
    let handshake = error
        .downcast_ref::<Unavailable>()
        .and_then(|u| u.source())
        .and_then(|e| e.downcast_ref::<HandshakeError>())
        .unwrap_or_else(|| panic!("not a handshake error under Unavailable: {error:?}"));
    assert_eq!(handshake.server_name(), "127.0.0.1");
    assert!(
        matches!(
            handshake
                .source()
                .and_then(|e| e.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidMessage(_))
        ),
        "{handshake:?}"
    );
}

/// Bad input that `TlsConfig::build` turns into clear errors: no roots, a
/// root PEM with no certificate, a client key that is not the
/// certificate's.
#[test]
fn bad_tls_settings_are_refused_at_build() {
    let ca = Ca::new("adversary ca");
    let one = ca.client("one");
    let two = ca.client("two");
    let mismatched = TlsConfig::builder()
        .root_der(ca.der())
        .client_auth_pem(one.pem().as_bytes(), two.key_pem().as_bytes())
        .build()
        .unwrap_err();
    assert_eq!(
        mismatched.to_string(),
        "the client certificate or key is invalid"
    );
    let key_as_root = TlsConfig::builder()
        .root_pem(one.key_pem().as_bytes())
        .build()
        .unwrap_err();
    assert_eq!(key_as_root.to_string(), "no certificate in the root PEM");
    let none = TlsConfig::builder().build().unwrap_err();
    assert!(
        none.to_string().starts_with("no root certificates"),
        "{none}"
    );
}

/// ALPN protocol names must be 1 to 255 bytes (RFC 7301): `build`
/// refuses an empty one and one of 256 bytes with a `ConfigError`, where
/// rustls would otherwise assert at every dial (or, in a release build,
/// send a malformed ClientHello).
#[test]
fn an_invalid_alpn_name_is_refused_at_build() {
    let empty = TlsConfig::builder().webpki_roots().alpn(b"").build();
    assert!(empty.is_err(), "an empty ALPN protocol name was accepted");
    let long = TlsConfig::builder()
        .webpki_roots()
        .alpn(&[b'a'; 256])
        .build();
    assert!(long.is_err(), "a 256-byte ALPN protocol name was accepted");
}
