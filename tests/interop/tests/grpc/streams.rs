//! `tower_redial::hyper::{grpc, Grpc, Http2}` as tonic's transport: a
//! server-streaming call (`Health/Watch`) across a peer reset and across a
//! peer that goes silent, and origins a user might write.

use std::time::Duration;

use support::fault_proxy::{Fault, FaultProxy};
use support::listen::{Restartable, Shutdown};
use support::policy::quick_redial;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_redial::hyper::{Grpc, Http2};
use tower_redial_interop::Transport;

use support::line::deadline as within;

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

fn request() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

/// A health server behind a fault proxy, and a tonic client on the
/// one-line transport to the proxy, pinging every 200 ms (300 ms timeout).
async fn setup() -> (Restartable, FaultProxy, HealthClient<Transport>, Transport) {
    let server = Restartable::start(serve);
    let proxy = FaultProxy::start(server.addr()).await;
    let http2 = Http2::new()
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_timeout(Duration::from_millis(300));
    let policy = quick_redial()
        .connect_timeout(Duration::from_millis(500))
        .wait_limit(Duration::from_secs(5))
        .build()
        .unwrap();
    let transport: Transport = Grpc::builder(format!("http://{}", proxy.addr()))
        .policy(policy)
        .http2(http2)
        .build()
        .unwrap();
    (
        server,
        proxy,
        HealthClient::new(transport.clone()),
        transport,
    )
}

/// An open `Watch` stream whose connection is reset ends with an error
/// (it does not hang), and once the peer is back a new `Watch` and a
/// `Check` work on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_ends_with_an_error_when_its_connection_resets() {
    let (_server, proxy, mut health, transport) = setup().await;
    let mut watch = within("watch", health.watch(request()))
        .await
        .unwrap()
        .into_inner();
    let first = within("the first status", watch.message()).await.unwrap();
    assert!(first.is_some());
    proxy.set_fault(Fault::ResetPeer);
    let ended = within("the stream ends", watch.message()).await;
    assert!(
        ended.is_err(),
        "the stream ended without an error: {ended:?}"
    );
    proxy.clear();
    let mut again = within("watch again", health.watch(request()))
        .await
        .unwrap()
        .into_inner();
    assert!(within("a status", again.message()).await.unwrap().is_some());
    within("check", health.check(request())).await.unwrap();
    assert!(transport.stats().drops >= 1, "{:?}", transport.stats());
}

/// An open `Watch` stream on a peer that goes silent (blackholed: no FIN,
/// no RST, no ping acks) ends with an error once a keep-alive ping goes
/// unanswered, instead of waiting forever; once the peer is back, calls
/// work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_on_a_silent_peer_ends_by_keep_alive() {
    let (_server, proxy, mut health, _transport) = setup().await;
    let mut watch = within("watch", health.watch(request()))
        .await
        .unwrap()
        .into_inner();
    assert!(within("the first status", watch.message())
        .await
        .unwrap()
        .is_some());
    proxy.set_fault(Fault::Blackhole);
    let ended = within("the stream ends by keep-alive", watch.message()).await;
    // tonic calls hyper's body error (h2's "broken pipe" once the ping
    // timed out) `Unknown`, as it does over its own transport.
    ended.expect_err("a silent peer ends the stream with an error");
    proxy.clear();
    within("check", async {
        loop {
            if health.check(request()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Origins: a path is refused with a message that says so.
#[tokio::test]
async fn an_origin_with_a_path_is_refused() {
    let error = Grpc::builder("http://127.0.0.1:50051/api")
        .build::<tonic::body::Body>()
        .unwrap_err();
    assert!(error.to_string().contains("no path or query"), "{error}");
    let ok = Grpc::builder("http://[::1]:50051").build::<tonic::body::Body>();
    assert!(ok.is_ok(), "an IPv6 origin: {ok:?}", ok = ok.err());
}
