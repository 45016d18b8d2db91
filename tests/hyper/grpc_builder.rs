//! `hyper::Grpc`: the origin it checks, dials and puts on requests, the
//! connector it dials with, and the gRPC statuses its client answers the
//! crate's failures with where no server is needed to reach them. (Against
//! tonic itself: `tests/interop`'s `grpc` and `tls` suites.)
#![cfg(feature = "hyper")]

use futures::TryFutureExt;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::policy::quick_redial;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tower::{service_fn, ServiceExt};
use tower_redial::connect::TcpConnector;
use tower_redial::hyper::{Grpc, GrpcBody, InvalidOrigin};
use tower_redial::{Backoff, BoxError, ReconnectPolicy};

const GUARD: Duration = Duration::from_secs(20);

/// An HTTP/2 server that answers each request with its URI's authority and
/// path, as the server saw them.
async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let echo = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let uri = request.uri();
                let seen = format!("{} {}", uri.authority().unwrap(), uri.path());
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(seen))))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), echo),
            );
        }
    });
    (addr, task)
}

fn invalid(origin: &str) -> InvalidOrigin {
    let built = Grpc::builder(origin).build::<Full<Bytes>>();
    built.map(drop).expect_err(origin)
}

/// Each origin that cannot be used is refused by `build`, with a message
/// that says why.
#[tokio::test]
async fn unusable_origins_are_refused_with_the_reason() {
    for (origin, message) in [
        (
            "127.0.0.1:50051",
            "invalid origin `127.0.0.1:50051`: no scheme: write `http://host:port`",
        ),
        (
            "/grpc.health.v1.Health/Check",
            "invalid origin `/grpc.health.v1.Health/Check`: no scheme: write `http://host:port`",
        ),
        (
            "ftp://files.example",
            "invalid origin `ftp://files.example/`: the scheme is neither `http` nor `https`",
        ),
        (
            "http://api.example/v1",
            "invalid origin `http://api.example/v1`: an origin has no path or query",
        ),
        (
            "http://api.example/?x=1",
            "invalid origin `http://api.example/?x=1`: an origin has no path or query",
        ),
        (
            "https://api.example",
            "invalid origin `https://api.example/`: `https` needs TLS: set it with `Grpc::tls`, or a TLS connector with `Grpc::connector`",
        ),
        ("http://:80", "invalid origin `http://:80/`: no host"),
        (
            "http://user@api.example",
            "invalid origin `http://user@api.example/`: an origin has no user info",
        ),
        (
            "http://api.example:99999",
            "invalid origin `http://api.example:99999/`: the port is not a number from 0 to 65535",
        ),
    ] {
        assert_eq!(invalid(origin).to_string(), message);
    }
    let error = invalid("http://api example");
    assert_eq!(error.to_string(), "invalid origin: not a URI");
    let source = std::error::Error::source(&error).expect("the URI's error");
    assert!(source.is::<http::uri::InvalidUri>(), "{source:?}");
}

/// The client dials with the given connector, at `host:port` with the
/// scheme's port when none is given: 80 for `http`, 443 for `https` (which
/// a connector of one's own makes possible; this one stands for a TLS
/// connector, its IO not a bare `TcpStream`).
#[tokio::test]
async fn the_connector_dials_host_and_port_with_the_schemes_default() {
    let (addr, server) = echo_server().await;
    let dialed = Arc::new(Mutex::new(Vec::new()));
    // Records the target, and connects to the echo server whatever it is.
    let connector = service_fn({
        let dialed = dialed.clone();
        move |target: String| {
            dialed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(target);
            TcpConnector::new()
                .oneshot(addr)
                .map_ok(tokio::io::BufStream::new)
        }
    });
    for (origin, path) in [
        ("http://api.example", "/a"),
        ("https://api.example", "/b"),
        ("http://api.example:8080", "/c"),
        ("http://[::1]:9090", "/d"),
    ] {
        let client = Grpc::builder(origin)
            .policy(quick_redial().build().unwrap())
            .connector(connector.clone())
            .build()
            .unwrap();
        let request = Request::post(path).body(Full::new(Bytes::new())).unwrap();
        let body = call(client.oneshot(request)).await;
        let authority = origin.split_once("://").unwrap().1;
        assert_eq!(body, format!("{authority} {path}"));
    }
    assert_eq!(
        *dialed.lock().unwrap_or_else(PoisonError::into_inner),
        [
            "api.example:80",
            "api.example:443",
            "api.example:8080",
            "[::1]:9090"
        ]
    );
    server.abort();
}

/// An `https` origin over a connector of one's own whose IO is a bare
/// `TcpStream` (a `TcpConnector` with settings, say) is refused at build,
/// as with no connector: that connector runs no TLS, and the client would
/// speak cleartext to a server it calls `https`.
#[test]
fn an_https_origin_over_a_plain_tcp_connector_is_refused() {
    let error = Grpc::builder("https://127.0.0.1:50051")
        .connector(TcpConnector::new())
        .build::<Full<Bytes>>()
        .unwrap_err();
    assert!(error.to_string().contains("`https` needs TLS"), "{error}");
}

/// A request with a path-only URI gets the origin's authority; one with
/// an absolute URI keeps its own.
#[tokio::test]
async fn only_requests_without_an_authority_get_the_origins() {
    let (addr, server) = echo_server().await;
    let client =
        tower_redial::hyper::grpc(format!("http://{addr}"), quick_redial().build().unwrap())
            .unwrap();
    let path_only = Request::post("/pkg.Service/Method")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = call(client.clone().oneshot(path_only)).await;
    assert_eq!(body, format!("{addr} /pkg.Service/Method"));

    let absolute = Request::post("http://other.example:1234/pkg.Service/Method")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = call(client.oneshot(absolute)).await;
    assert_eq!(body, "other.example:1234 /pkg.Service/Method");
    server.abort();
}

async fn call<F>(response: F) -> String
where
    F: std::future::Future<Output = Result<http::Response<GrpcBody>, BoxError>>,
{
    let response = timeout(GUARD, response)
        .await
        .expect("hung")
        .expect("answered");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// `Grpc::tls` refuses an `http` origin, and makes an `https` one valid.
#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_needs_an_https_origin() {
    use tower_redial::tls::TlsConfig;
    let tls = || TlsConfig::builder().webpki_roots().build().unwrap();
    let error = Grpc::builder("http://api.example")
        .tls(tls())
        .build::<Full<Bytes>>()
        .map(drop)
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid origin `http://api.example/`: `Grpc::tls` needs an `https` origin: write `https://host:port`"
    );
    // A TCP connector of one's own is the one `tls` wraps.
    let client = Grpc::builder("https://api.example")
        .connector(TcpConnector::new())
        .tls(tls())
        .build::<Full<Bytes>>();
    assert!(client.is_ok());
}

/// A request for the status tests: `Health/Check`, empty.
fn check() -> Request<Full<Bytes>> {
    Request::post("/grpc.health.v1.Health/Check")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The gRPC headers of a Trailers-Only answer: `grpc-status`, the crate's
/// error kind, `grpc-message`; and its body is empty.
async fn status_of(response: http::Response<GrpcBody>) -> (String, String, String) {
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let status = (
        header("grpc-status"),
        header("tower-redial-error"),
        header("grpc-message"),
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty(), "{body:?}");
    status
}

/// A client that gave up for good answers `UNAVAILABLE` (`closed`), also
/// when `poll_ready` is the one that finds it closed.
#[tokio::test]
async fn a_closed_client_answers_unavailable() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(Duration::from_millis(1)).max_attempts(2))
        .build()
        .unwrap();
    let client = Grpc::builder(format!("http://{addr}"))
        .policy(policy)
        .build::<Full<Bytes>>()
        .unwrap();
    // The first call fails as the client gives up; the second finds it
    // closed in `poll_ready`.
    for _ in 0..2 {
        let response = timeout(GUARD, client.clone().oneshot(check()))
            .await
            .expect("hung")
            .expect("a Trailers-Only answer");
        let (code, kind, message) = status_of(response).await;
        assert_eq!(
            (code.as_str(), kind.as_str()),
            ("14", "closed"),
            "{message}"
        );
        assert!(
            message.starts_with(&format!(
                "reconnect to \"{addr}\" gave up after 2 dial attempts"
            )),
            "{message}"
        );
    }
}

/// A full queue with load shedding answers `RESOURCE_EXHAUSTED`
/// (`overloaded`), at once.
#[tokio::test]
async fn a_shed_call_answers_resource_exhausted() {
    let never =
        service_fn(|_: String| std::future::pending::<Result<tokio::net::TcpStream, BoxError>>());
    let policy = ReconnectPolicy::builder()
        .queue_capacity(1)
        .load_shed(true)
        .wait_limit(Duration::from_secs(600))
        .build()
        .unwrap();
    let client = Grpc::builder("http://127.0.0.1:50051")
        .policy(policy)
        .connector(never)
        .build::<Full<Bytes>>()
        .unwrap();
    // Calls wait for a dial that never ends, till the queue is full and
    // one is shed: it ends at once. (Not within 100 ms on a slow machine?
    // Then it waits with the others, and the next is shed.)
    let mut waiting = Vec::new();
    let response = loop {
        assert!(waiting.len() < 10, "no call was shed");
        let mut call = tokio::spawn(client.clone().oneshot(check()));
        match timeout(Duration::from_millis(100), &mut call).await {
            Ok(done) => break done.unwrap().expect("a Trailers-Only answer"),
            Err(_) => waiting.push(call),
        }
    };
    let (code, kind, message) = status_of(response).await;
    assert_eq!((code.as_str(), kind.as_str()), ("8", "overloaded"));
    assert_eq!(message, "request queue is full");
    waiting.iter().for_each(JoinHandle::abort);
}

/// A dial that panics fails the dial: past the wait limit, the call
/// answers `UNAVAILABLE`, and the panic is in the message.
/// (`INTERNAL`, for a panic under the call itself, is unit-tested: in
/// `Grpc`'s client, the connection is hyper's, with no user code in it.)
#[tokio::test]
async fn a_panicking_dial_answers_unavailable() {
    let panics = service_fn(|_: String| async {
        panic!("the connector broke");
        #[allow(unreachable_code)]
        Ok::<tokio::net::TcpStream, BoxError>(unreachable!())
    });
    let client = Grpc::builder("http://127.0.0.1:50051")
        .policy(
            quick_redial()
                .wait_limit(Duration::from_millis(100))
                .build()
                .unwrap(),
        )
        .connector(panics)
        .build::<Full<Bytes>>()
        .unwrap();
    let response = timeout(GUARD, client.oneshot(check()))
        .await
        .expect("hung")
        .expect("a Trailers-Only answer");
    let (code, kind, message) = status_of(response).await;
    assert_eq!(
        (code.as_str(), kind.as_str()),
        ("14", "unavailable"),
        "{message}"
    );
    assert!(
        message.contains("panicked: the connector broke"),
        "{message}"
    );
}
