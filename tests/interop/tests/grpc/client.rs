//! A tonic gRPC client over the layer (`tower_redial::hyper::http2`), against
//! a real tonic server that crashes and restarts on the same port mid-run.

use support::listen;
use support::outcome::{Outcome, Tally};

use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::Server;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tower_redial::hyper::hyper_error;
use tower_redial::state::Phase;
use tower_redial::{Backoff, BoxError, ReconnectPolicy};
use tower_redial_interop::{redial_error, GrpcClient, Transport};

// ---------------------------------------------------------------------------
// A tonic health server that can crash and restart on the same port
// ---------------------------------------------------------------------------

/// tonic's own `Server` with the `grpc.health.v1` service, on 127.0.0.1.
///
/// tonic runs each connection on a task of its own, which outlives the server
/// future. To crash, the server keeps a clone of each accepted socket, and
/// `stop` shuts them all down at once: the client sees its connection close,
/// with no `GOAWAY`.
struct GrpcServer {
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

struct Running {
    task: JoinHandle<()>,
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl GrpcServer {
    async fn start() -> Self {
        let listener = listen::reusable("127.0.0.1:0".parse().unwrap());
        let server = Self {
            addr: listener.local_addr().unwrap(),
            running: Mutex::new(None),
        };
        server.run(listener);
        server
    }

    fn run(&self, listener: TcpListener) {
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let incoming = futures::stream::unfold(
            (listener, sockets.clone()),
            |(listener, sockets)| async move {
                let accepted = listener.accept().await.and_then(|(io, _)| {
                    let io = io.into_std()?;
                    lock(&sockets).push(io.try_clone()?);
                    TcpStream::from_std(io)
                });
                Some((accepted, (listener, sockets)))
            },
        );
        let (_reporter, health) = tonic_health::server::health_reporter();
        let task = tokio::spawn(async move {
            Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        *lock(&self.running) = Some(Running { task, sockets });
    }

    /// Crashes: closes every connection and the listener at once.
    async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(Running { task, sockets }) = running {
            // The listener first, so that no redial gets in. (Served with no
            // shutdown signal, tonic leaves the connections be: no GOAWAY.)
            task.abort();
            let _ = task.await;
            shut_down(&sockets);
        }
    }

    /// Crashes, and starts again on the same port.
    async fn restart(&self) {
        self.stop().await;
        self.run(listen::reusable(self.addr));
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.running).take() {
            running.task.abort();
            shut_down(&running.sockets);
        }
    }
}

fn shut_down(sockets: &Mutex<Vec<std::net::TcpStream>>) {
    for socket in lock(sockets).drain(..) {
        let _ = socket.shutdown(Shutdown::Both);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/// A generated tonic client whose transport is a reconnecting HTTP/2 client.
fn grpc_client(addr: SocketAddr) -> (GrpcClient, Transport) {
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            2.0,
            Duration::from_millis(200),
        ))
        // Generous: no call may fail fast here, however slow the machine.
        .wait_limit(Duration::from_secs(60))
        .seed(7)
        .build()
        .unwrap();
    tower_redial_interop::grpc_client(addr, policy)
}

/// A health check: `Ok` if the server says it serves.
async fn check(mut health: GrpcClient) -> Result<(), BoxError> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let response = health.check(request).await?;
    if response.get_ref().status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!("not serving: {response:?}").into())
    }
}

/// How a check ended: hyper's own error anywhere in the chain (a stream
/// cut short, which no connection sees) also makes it ambiguous, as does a
/// `Status` the transport made of the crate's `ConnectionLost`.
fn outcome(result: &Result<(), BoxError>) -> Outcome {
    Outcome::of_with(result, |error| {
        hyper_error(error).is_some()
            || error
                .downcast_ref::<tonic::Status>()
                .and_then(redial_error)
                .is_some_and(|kind| kind == "connection-lost")
    })
}

/// A hang guard, far longer than the test needs.
async fn guard<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("test hung")
}

const WORKERS: usize = 4;
const OUTAGE_CALLS: usize = 4;

/// Health checks from several tasks through one client ride through a tonic
/// server crash and restart: checks issued while the server is down wait and
/// succeed after the restart, and no call fails fast or is left unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_client_survives_a_server_restart() {
    guard(async {
        let server = GrpcServer::start().await;
        let (health, client) = grpc_client(server.addr);

        let tally = Arc::new(Mutex::new(Tally::default()));
        let (served_tx, mut served) = watch::channel(0usize);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = JoinSet::new();
        for _ in 0..WORKERS {
            let (health, tally, served_tx, stop) = (
                health.clone(),
                tally.clone(),
                served_tx.clone(),
                stop_rx.clone(),
            );
            workers.spawn(async move {
                while !*stop.borrow() {
                    let result = check(health.clone()).await;
                    if lock(&tally).record_as(outcome(&result), &result) == Outcome::Ok {
                        served_tx.send_modify(|n| *n += 1);
                    }
                }
            });
        }

        // Calls flow; then the server crashes.
        served.wait_for(|n| *n >= 20).await.unwrap();
        server.stop().await;

        // The client notices, and its redials are refused.
        let mut state = client.state();
        state
            .wait_for(|s| s.phase() == Phase::Backoff)
            .await
            .unwrap();

        // Calls made during the outage wait...
        let during: Vec<_> = (0..OUTAGE_CALLS)
            .map(|_| tokio::spawn(check(health.clone())))
            .collect();
        tokio::task::yield_now().await;
        assert!(
            during.iter().all(|task| !task.is_finished()),
            "a call finished while the server was down"
        );

        // ...and succeed once it is back.
        server.restart().await;
        let before = *served.borrow();
        for task in during {
            let result = task.await.unwrap();
            assert_eq!(outcome(&result), Outcome::Ok, "{result:?}");
        }
        served.wait_for(|n| *n >= before + 20).await.unwrap();
        stop_tx.send_replace(true);
        while let Some(joined) = workers.join_next().await {
            joined.unwrap();
        }

        // Every call by the workers was served, or broke on the wire.
        let tally = std::mem::take(&mut *lock(&tally));
        tally.assert_ok_or_ambiguous();
        let stats = client.stats();
        eprintln!(
            "{} calls by workers, {} ambiguous; {stats:?}; {tally:?}",
            tally.issued, tally.ambiguous
        );
        assert!(stats.drops >= 1, "{stats:?}");
        assert!(stats.dials >= 2, "{stats:?}");
        assert!(stats.dial_failures >= 1, "{stats:?}");
        assert_eq!(stats.fail_fast, 0, "{stats:?}");
    })
    .await;
}
