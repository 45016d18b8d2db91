//! `tower_redial::hyper::grpc` and `Grpc::builder`: a generated tonic
//! client over a reconnecting transport in one line, against a real tonic
//! server, with the builder's policy and HTTP/2 settings applied.
//!
//! Real sockets on the real clock: waits are events with hang guards; the
//! only time assertions are absences over a window, which a slow machine
//! cannot break.

use support::fault_proxy::{Fault, FaultProxy};
use support::listen::{Restartable, Shutdown};
use support::policy::quick_redial;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::{sleep, timeout};
use tonic::transport::Server;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_redial::hyper::{grpc, Grpc, Http2};
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, ReconnectPolicy};
use tower_redial_interop::{redial_error, Transport};

/// A hang guard, far longer than any wait here needs.
const GUARD: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(200);
const PING_TIMEOUT: Duration = Duration::from_millis(300);

async fn guard<F: Future>(what: &str, future: F) -> F::Output {
    timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

/// tonic's health server, restartable gracefully on its port.
fn health_server() -> Restartable {
    Restartable::start(serve)
}

async fn serve(listener: TcpListener, stop: Shutdown) {
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(io, _)| io);
        Some((accepted, listener))
    });
    let (_reporter, health) = tonic_health::server::health_reporter();
    Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        })
        .await
        .unwrap();
}

async fn check(health: &mut HealthClient<Transport>) -> Result<(), tonic::Status> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = guard("a check", health.check(request)).await?;
    assert_eq!(response.get_ref().status(), ServingStatus::Serving);
    Ok(())
}

/// The one-liner is a tonic client's whole transport: tonic sends
/// path-only URIs, and the transport puts the origin on them. It dials
/// lazily, and redials after a graceful restart of the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_liner_calls_tonic_and_redials_after_a_restart() -> Result<(), BoxError> {
    let mut server = health_server();
    let origin = format!("http://{}", server.addr());

    let transport: Transport = grpc(origin, quick_redial().build()?)?;
    let mut health = HealthClient::new(transport.clone());
    assert_eq!(transport.state().borrow().phase(), Phase::Idle, "lazy");
    check(&mut health).await?;

    server.restart_gracefully().await;
    // The server's GOAWAY closed the idle connection: the next call is
    // made on a new one.
    check(&mut health).await?;
    // Redials may be refused while the server restarts.
    let stats = transport.stats();
    assert_eq!(stats.drops, 1, "{stats:?}");
    assert_eq!(stats.dials - stats.dial_failures, 2, "{stats:?}");
    assert_eq!(stats.fail_fast, 0, "{stats:?}");
    Ok(())
}

/// The builder's HTTP/2 settings reach the connection: with keep-alive
/// pings while idle, a server gone silent behind a blackhole is found with
/// no call made, and the transport drops the connection; the one-liner's
/// default settings send no ping and keep it (the control). The proxy
/// answers TCP itself, so TCP keepalive would see nothing wrong: only the
/// pings cross it. Once the path is back, the next call redials and
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_from_the_builder_finds_a_blackholed_server() -> Result<(), BoxError> {
    let server = health_server();
    let proxy = FaultProxy::start(server.addr()).await;
    let origin = format!("http://{}", proxy.addr());
    let pinging: Transport = Grpc::builder(origin.as_str())
        .policy(quick_redial().build()?)
        .http2(
            Http2::new()
                .keep_alive_interval(INTERVAL)
                .keep_alive_timeout(PING_TIMEOUT)
                .keep_alive_while_idle(true),
        )
        .build()?;
    let quiet: Transport = grpc(origin.as_str(), quick_redial().build()?)?;
    check(&mut HealthClient::new(pinging.clone())).await?;
    check(&mut HealthClient::new(quiet.clone())).await?;

    proxy.set_fault(Fault::Blackhole);
    let mut state = pinging.state();
    guard(
        "the transport notices",
        state.wait_for(|s| s.phase() != Phase::Ready),
    )
    .await?;
    assert!(pinging.stats().drops >= 1);

    sleep((INTERVAL + PING_TIMEOUT) * 3).await;
    assert_eq!(quiet.state().borrow().phase(), Phase::Ready);
    let stats = quiet.stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");

    proxy.clear();
    check(&mut HealthClient::new(pinging.clone())).await?;
    assert!(pinging.stats().dials >= 2);
    Ok(())
}

/// The builder's policy is the transport's: with a short wait limit, a call
/// to a server that is down fails fast with the crate's `Unavailable`,
/// which reaches the caller as `Code::Unavailable`, what gRPC retry rules
/// key on, with the crate's error named in the message and the metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_from_the_builder_fails_calls_fast() -> Result<(), BoxError> {
    let closed: SocketAddr = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        listener.local_addr()?
    };
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(Duration::from_millis(20)))
        .wait_limit(Duration::from_millis(100))
        .build()?;
    let transport: Transport = Grpc::builder(format!("http://{closed}"))
        .policy(policy)
        .build()?;
    let status = check(&mut HealthClient::new(transport.clone()))
        .await
        .expect_err("nothing listens");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(redial_error(&status), Some("unavailable"), "{status:?}");
    // The crate's `Unavailable`, then the last dial error.
    let message = status.message();
    assert!(
        message.starts_with(&format!("connection to \"{closed}\" unavailable for ")),
        "{status:?}"
    );
    assert!(message.contains("Connection refused"), "{status:?}");
    assert!(transport.stats().fail_fast >= 1);
    Ok(())
}
