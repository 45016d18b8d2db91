//! TLS with rustls (`tower_redial::tls`): hyper HTTP/1 and HTTP/2 and tonic
//! over TLS against real local servers, with certificates made at test
//! time; custom roots, client certificates, certificate errors as dial
//! failures, and a server restarted with a new certificate.

mod errors;
mod grpc;
mod http;
mod misbehaving;
mod mtls;
mod roots;
mod rotate;

use std::error::Error;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::connect::{Handshake, TcpConnector};
use tower_redial::tls::{TargetName, TlsConfig, TlsConnector};
use tower_redial::{BoxError, Client, ReconnectLayer, ReconnectPolicy};

/// A hang guard, far longer than any test needs.
const GUARD: Duration = Duration::from_secs(20);

type HttpClient = Client<::http::Request<Full<Bytes>>, ::http::Response<Incoming>>;

/// An HTTP/1 client over TLS to `target`.
fn http1<T>(connector: TlsConnector<TcpConnector>, target: T, policy: ReconnectPolicy) -> HttpClient
where
    T: TargetName + tokio::net::ToSocketAddrs + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(Handshake::new(
            connector,
            tower_redial::hyper::http1::<Full<Bytes>>,
        ))
        .client(target)
}

/// An HTTP/2 client over TLS to `target`.
fn http2<T>(connector: TlsConnector<TcpConnector>, target: T, policy: ReconnectPolicy) -> HttpClient
where
    T: TargetName + tokio::net::ToSocketAddrs + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(Handshake::new(
            connector,
            tower_redial::hyper::http2::<Full<Bytes>>,
        ))
        .multiplexed(target)
}

/// A TLS connector over TCP trusting `ca` alone, offering `alpn`.
fn connector(config: TlsConfig) -> TlsConnector<TcpConnector> {
    TlsConnector::new(TcpConnector::new(), config)
}

/// `GET uri`, and the body as text; within the guard.
async fn get(client: &HttpClient, uri: &str) -> Result<String, BoxError> {
    let uri: ::http::Uri = uri.parse()?;
    let host = uri.authority().expect("an absolute URI").to_string();
    let request = ::http::Request::get(uri)
        .header(::http::header::HOST, host)
        .body(Full::new(Bytes::new()))?;
    let response = tokio::time::timeout(GUARD, client.clone().oneshot(request))
        .await
        .expect("the request hung")?;
    let body = tokio::time::timeout(GUARD, response.into_body().collect())
        .await
        .expect("the body hung")?;
    Ok(String::from_utf8(body.to_bytes().to_vec())?)
}

/// The rustls error in `error`'s `source()` chain, looking also inside the
/// `io::Error`s that carry one (`io::Error::source` skips what it wraps).
fn rustls_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(inner) = error.downcast_ref::<io::Error>().and_then(|e| e.get_ref()) {
            if let Some(found) = rustls_error(inner) {
                return Some(found);
            }
        }
        next = error.source();
    }
    None
}
