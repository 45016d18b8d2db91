//! `Grpc::tls`: a generated tonic client over the one-line transport to
//! an `https` origin, against tonic's health service served over rustls
//! with certificates made at test time.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_redial::hyper::Grpc;
use tower_redial::tls::TlsConfig;
use tower_redial_interop::tls::{Ca, Seen, TlsServer};
use tower_redial_interop::{redial_error, Transport};

const GUARD: Duration = Duration::from_secs(20);

/// tonic's health service over TLS on 127.0.0.1 with `config`, and what
/// each handshake agreed.
fn health_server(config: Arc<rustls::ServerConfig>) -> (TlsServer, Arc<Mutex<Vec<Seen>>>) {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let handshakes: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = handshakes.clone();
    let server = TlsServer::start(config, move |seen| {
        lock(&record).push(seen);
        health.clone()
    });
    (server, handshakes)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn check(health: &mut HealthClient<Transport>) -> Result<ServingStatus, tonic::Status> {
    let reply = tokio::time::timeout(GUARD, health.check(HealthCheckRequest::default()))
        .await
        .expect("the call hung")?;
    Ok(reply.into_inner().status())
}

/// `Grpc::builder("https://localhost:port").tls(config).build()` is the
/// whole transport: one TLS connection for every call, ALPN `h2` though the
/// config offers none, and `localhost` as SNI and the checked name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_over_the_one_line_tls_transport() {
    let ca = Ca::new("test ca");
    let (server, handshakes) = health_server(ca.server(&["localhost"]).server_config(None));
    let port = server.addr().port();
    // No ALPN here: `tls` forces `h2`.
    let tls = TlsConfig::builder().root_der(ca.der()).build().unwrap();
    let transport: Transport = Grpc::builder(format!("https://localhost:{port}"))
        .tls(tls)
        .build()
        .unwrap();
    let mut health = HealthClient::new(transport.clone());
    for _ in 0..3 {
        assert_eq!(check(&mut health).await.unwrap(), ServingStatus::Serving);
    }
    let handshakes = lock(&handshakes).clone();
    assert_eq!(handshakes.len(), 1, "one connection for every call");
    assert_eq!(handshakes[0].alpn.as_deref(), Some("h2"));
    assert_eq!(handshakes[0].sni.as_deref(), Some("localhost"));
    assert_eq!(transport.stats().dials, 1);
}

/// The server restarts with a certificate from a new CA, which the client
/// trusts beside the old one: the redial's handshake verifies the new
/// certificate, and calls are answered again. (A call the restart cuts, if
/// any, fails with `Unavailable`, the crate's error named in its metadata;
/// most runs have none, as the client reads the server's close first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_picked_up_on_the_redial() {
    let (old_ca, new_ca) = (Ca::new("old ca"), Ca::new("new ca"));
    let (mut server, handshakes) = health_server(old_ca.server(&["localhost"]).server_config(None));
    let port = server.addr().port();
    let tls = TlsConfig::builder()
        .root_der(old_ca.der())
        .root_der(new_ca.der())
        .build()
        .unwrap();
    let transport: Transport = Grpc::builder(format!("https://localhost:{port}"))
        .policy(support::policy::quick_redial().build().unwrap())
        .tls(tls)
        .build()
        .unwrap();
    let mut health = HealthClient::new(transport.clone());
    assert_eq!(check(&mut health).await.unwrap(), ServingStatus::Serving);

    // From now on the server presents only the new CA's certificate.
    server
        .restart(new_ca.server(&["localhost"]).server_config(None))
        .await;
    let mut failed = Vec::new();
    let served = tokio::time::timeout(GUARD, async {
        loop {
            match check(&mut health).await {
                Ok(status) => return status,
                Err(status) => failed.push(status),
            }
        }
    })
    .await
    .expect("never reconnected");
    assert_eq!(served, ServingStatus::Serving);
    for status in &failed {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(redial_error(status).is_some(), "{status:?}");
    }
    let handshakes = lock(&handshakes).clone();
    assert_eq!(
        handshakes.len(),
        2,
        "a second handshake, with the new certificate"
    );
    assert!(handshakes
        .iter()
        .all(|seen| seen.alpn.as_deref() == Some("h2")));
    assert!(transport.stats().dials >= 2);
    println!("calls failed across the restart: {}", failed.len());
}
