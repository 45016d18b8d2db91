//! An HTTP/2 client over TLS that keeps its connection across a server
//! restart with a new certificate, and reports a certificate it does not
//! trust.
//!
//! The example makes a private CA and a certificate for `localhost` with
//! `rcgen`, and starts an HTTPS server (hyper over rustls) on `127.0.0.1`
//! that answers each request with the name of the certificate it presents.
//! The client trusts the CA alone, dials `localhost:PORT` (so SNI and the
//! certificate check use `localhost`) and agrees HTTP/2 by ALPN. Then:
//!
//! 1. two requests, answered with certificate `one`;
//! 2. the server restarts with a new certificate, `two`, from the same CA:
//!    the client redials and verifies it, and requests go on;
//! 3. the server restarts with a certificate from a CA the client does not
//!    trust: every redial fails its handshake, and once the wait limit has
//!    passed, requests fail fast with `Unavailable`, rustls's
//!    `UnknownIssuer` at the end of its `source()` chain.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p tower-redial-interop --example tls
//! ```
//!
//! It takes well under a second and needs nothing but a free port on
//! `127.0.0.1`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use support::listen::reusable;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::connect::{Handshake, TcpConnector};
use tower_redial::error::Unavailable;
use tower_redial::tls::{TlsConfig, TlsConnector};
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};

type HttpClient = Client<http::Request<Full<Bytes>>, http::Response<hyper::body::Incoming>>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let ca = Ca::new("our ca")?;
    let mut server = Server::start(ca.server_config("one")?, reusable("127.0.0.1:0".parse()?));
    let addr = server.addr;

    let tls = TlsConfig::builder()
        .root_pem(ca.pem.as_bytes())
        .alpn_h2()
        .build()?;
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            2.0,
            Duration::from_millis(200),
        ))
        .wait_limit(Duration::from_millis(300))
        .build()?;
    let client: HttpClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(Handshake::new(
            TlsConnector::new(TcpConnector::new(), tls),
            tower_redial::hyper::http2::<Full<Bytes>>,
        ))
        .multiplexed(format!("localhost:{}", addr.port()));
    let uri = format!("https://localhost:{}/", addr.port());

    println!("1. the server presents certificate one");
    for _ in 0..2 {
        println!("   {}", get(&client, &uri).await?);
    }

    println!("2. restarted with certificate two, from the same CA");
    server.restart(ca.server_config("two")?).await;
    // The client notices the closed connection and redials; a request sent
    // just before that may fail, as it may have reached the old server.
    for _ in 0..2 {
        match get(&client, &uri).await {
            Ok(body) => println!("   {body}"),
            Err(error) => println!("   failed as the server went: {error}"),
        }
    }

    println!("3. restarted with a certificate from a CA the client does not trust");
    let stranger = Ca::new("a stranger")?;
    server.restart(stranger.server_config("three")?).await;
    let error = loop {
        match get(&client, &uri).await {
            Err(error) if error.is::<Unavailable>() => break error,
            _ => continue,
        }
    };
    println!("   {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        println!("   caused by: {cause}");
        source = cause.source();
    }
    drop(server);
    Ok(())
}

/// `GET uri`, and the body as text.
async fn get(client: &HttpClient, uri: &str) -> Result<String, BoxError> {
    let request = http::Request::get(uri).body(Full::new(Bytes::new()))?;
    let response =
        tokio::time::timeout(Duration::from_secs(10), client.clone().oneshot(request)).await??;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}

/// A private CA, made now.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A server config presenting a new certificate for `localhost`, that
    /// answers with `name`.
    fn server_config(
        &self,
        name: &'static str,
    ) -> Result<(Arc<ServerConfig>, &'static str), BoxError> {
        let key = KeyPair::generate()?;
        let cert =
            CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &self.issuer)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok((Arc::new(config), name))
    }
}

/// An HTTPS server answering with the name of its certificate.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    fn start(
        (config, name): (Arc<ServerConfig>, &'static str),
        listener: tokio::net::TcpListener,
    ) -> Self {
        let addr = listener.local_addr().expect("a bound listener");
        let tls = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            // Dropped with the task: aborting it ends every connection.
            let mut connections = JoinSet::new();
            while let Ok((io, _)) = listener.accept().await {
                let tls = tls.clone();
                connections.spawn(async move {
                    let Ok(stream) = tls.accept(io).await else {
                        return;
                    };
                    let answer = service_fn(move |_| async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                            "certificate {name}"
                        )))))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), answer)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    /// Stops, dropping every connection, and starts again on the same port.
    async fn restart(&mut self, config: (Arc<ServerConfig>, &'static str)) {
        self.task.abort();
        // Wait until the task, and with it the listener, is gone.
        let _ = (&mut self.task).await;
        *self = Self::start(config, reusable(self.addr));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
