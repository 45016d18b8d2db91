//! The crate's own failures as gRPC codes, through a generated tonic
//! client over `Grpc`'s transport, against a real tonic server: a call cut
//! by a server crash is `Unavailable`, a response timeout is
//! `DeadlineExceeded`, a client that gave up is `Unavailable`; each names
//! the crate's error in its message and in the `tower-redial-error`
//! metadata. (A call failed fast in an outage: `one_line.rs`; a refused
//! stream: `restart.rs`; a shed call, and a panic: the crate's own tests.)

use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::codegen::BoxStream;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_redial::hyper::Grpc;
use tower_redial::{Backoff, ReconnectPolicy};
use tower_redial_interop::{redial_error, Transport};

const GUARD: Duration = Duration::from_secs(20);

/// A `grpc.health.v1` service whose `Check` never answers: it tells the
/// test it is running, then waits.
struct Stuck(Arc<Notify>);

#[tonic::codegen::async_trait]
impl Health for Stuck {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.notify_one();
        std::future::pending().await
    }

    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not watched here"))
    }
}

/// A tonic server of [`Stuck`] on 127.0.0.1 that can crash: its task and
/// every connection end at once (a clone of each socket is shut down), as
/// when the process dies. Dropping it crashes it.
struct StuckServer {
    addr: SocketAddr,
    running: Arc<Notify>,
    task: JoinHandle<()>,
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl StuckServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
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
        let running = Arc::new(Notify::new());
        let service = HealthServer::new(Stuck(running.clone()));
        let task = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            addr,
            running,
            task,
            sockets,
        }
    }

    fn crash(&self) {
        self.task.abort();
        for socket in lock(&self.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for StuckServer {
    fn drop(&mut self) {
        self.crash();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn client(addr: SocketAddr, policy: ReconnectPolicy) -> HealthClient<Transport> {
    let transport = Grpc::builder(format!("http://{addr}"))
        .policy(policy)
        .build()
        .unwrap();
    HealthClient::new(transport)
}

async fn check(mut health: HealthClient<Transport>) -> Status {
    tokio::time::timeout(GUARD, health.check(HealthCheckRequest::default()))
        .await
        .expect("the call hung")
        .expect_err("the call fails")
}

/// A call the server is running when it crashes fails with `Unavailable`,
/// as grpc-go reports a lost connection; the metadata says the connection
/// was lost under it, so it may have run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_by_a_crash_is_unavailable() {
    let server = StuckServer::start().await;
    let health = client(
        server.addr,
        support::policy::quick_redial().build().unwrap(),
    );
    let call = tokio::spawn(check(health));
    tokio::time::timeout(GUARD, server.running.notified())
        .await
        .expect("the server never ran the call");
    server.crash();
    let status = call.await.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(redial_error(&status), Some("connection-lost"), "{status:?}");
    assert!(
        status.message().starts_with("connection lost: "),
        "{status:?}"
    );
}

/// A call with no answer within the policy's response timeout fails with
/// `DeadlineExceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_timeout_is_deadline_exceeded() {
    let server = StuckServer::start().await;
    let policy = support::policy::quick_redial()
        .response_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let status = check(client(server.addr, policy)).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        redial_error(&status),
        Some("response-timeout"),
        "{status:?}"
    );
    assert_eq!(status.message(), "no response within 100ms");
}

/// A client that gave up for good (its attempt limit reached) fails calls
/// with `Unavailable`; the message names the crate's `Closed` and the last
/// dial error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_client_is_unavailable() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::fixed(Duration::from_millis(5)).max_attempts(2))
        .build()
        .unwrap();
    let status = check(client(closed, policy)).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(redial_error(&status), Some("closed"), "{status:?}");
    assert!(
        status.message().contains("gave up after 2 dial attempts: "),
        "{status:?}"
    );
}
