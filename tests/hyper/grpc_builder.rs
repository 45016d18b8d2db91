//! `hyper::Grpc`: the origin it checks, dials and puts on requests, and the
//! connector it dials with. (Against tonic itself: `tests/interop`'s `grpc`
//! suite.)
#![cfg(feature = "hyper")]

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
use tower_redial::hyper::{Grpc, InvalidOrigin};
use tower_redial::BoxError;

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
            "invalid origin `https://api.example/`: `https` needs a TLS connector: set one with `Grpc::connector`",
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
/// a connector of one's own makes possible).
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
            TcpConnector::new().oneshot(addr)
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
    F: std::future::Future<Output = Result<http::Response<Incoming>, BoxError>>,
{
    let response = timeout(GUARD, response)
        .await
        .expect("hung")
        .expect("answered");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
