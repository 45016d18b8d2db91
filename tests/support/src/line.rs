//! A tiny pipelined line protocol over real TCP, for tests and examples: a
//! controllable server ([`LineServer`]) and a client connection service
//! ([`LineConnection`]).
//!
//! # Protocol
//!
//! Text lines ending in `\n`. One reply line per request, in order, and
//! requests may be pipelined:
//!
//! | request | reply |
//! |---|---|
//! | `GET key` | `VALUE <v>` or `NIL` |
//! | `SET key value` | `OK` |
//! | `INCR key` | `INT <n>`, the new value |
//! | `PING` | `PONG` |
//! | anything else | `ERR <message>` |
//!
//! Keys and values are single tokens. Commands are case-insensitive.
//!
//! # Server
//!
//! [`LineServer`] binds `127.0.0.1`, keeps its data in a [`Store`] that
//! survives [`stop`](LineServer::stop) and [`restart`](LineServer::restart)
//! (it models a durable database), and can misbehave on demand: reset every
//! connection, accept and at once close, stop reading requests, or hold its
//! replies. Dropping it aborts every task it spawned.
//!
//! # Client
//!
//! [`LineConnection`] is a `tower::Service<String>` over one TCP connection:
//! the crate's `connect::Framed` with a line codec. Its errors carry their
//! meaning by type:
//!
//! - a request that never left its queue comes back as a `NotSent`
//!   holding the request (`take_request::<String>()`);
//! - a request that was (even partly) written, then lost its connection,
//!   fails with a `ConnectionLost` around the [`io::Error`]
//!   (`UnexpectedEof`, `ConnectionReset`, ...), because the server may have
//!   executed it.
//!
//! # Time
//!
//! Everything here is real sockets. Do not combine it with a paused tokio
//! clock (`start_paused`): a paused runtime skips timers forward while it
//! waits for socket events, so timeouts would fire early.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder, Framed, LinesCodec, LinesCodecError};
use tower::Service;

/// The boxed error of [`LineConnection`]; the same type as
/// `tower_redial::BoxError`.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// How often, and how far apart, a bind that found its port in use is tried.
const BIND_ATTEMPTS: u32 = 50;
const BIND_RETRY_DELAY: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------
// Error helpers
// ---------------------------------------------------------------------------

/// The first error of type `E` in `error`'s `source()` chain, starting with
/// `error` itself. Pass a [`BoxError`] as `&*error`.
pub fn find_error<'a, E: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a E> {
    std::iter::successors(Some(error), |&e| e.source()).find_map(|e| e.downcast_ref::<E>())
}

/// The kind of the first [`io::Error`] in `error`'s `source()` chain.
pub fn io_kind(error: &(dyn Error + 'static)) -> Option<io::ErrorKind> {
    tower_redial::classify::io_error_kind(error)
}

/// How long [`deadline`] lets a future run before declaring a hang.
pub const HANG_LIMIT: Duration = Duration::from_secs(10);

/// Awaits `future`, panicking with `what` if it has not finished within
/// [`HANG_LIMIT`]. A guard against hangs, not a timing assertion: the limit
/// is far above anything a working test needs.
pub async fn deadline<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_LIMIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("hung for {HANG_LIMIT:?}: {what}"),
    }
}

/// Sends one request line through `service` (waiting for readiness first)
/// and returns its reply.
pub async fn request<S>(service: &mut S, line: &str) -> Result<String, BoxError>
where
    S: Service<String, Response = String, Error = BoxError>,
{
    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(line.to_string()).await
}

/// An address on `127.0.0.1` where nothing listens (a port that was free a
/// moment ago): connecting to it is refused.
pub fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("bind an ephemeral port on 127.0.0.1");
    listener
        .local_addr()
        .expect("local address of a bound listener")
}

// ---------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------

/// The server's key/value data, shared by every connection and kept across
/// restarts. Cloning gives another handle to the same data.
#[derive(Clone, Default)]
pub struct Store {
    values: Arc<Mutex<HashMap<String, String>>>,
    stats: Arc<watch::Sender<StoreStats>>,
}

/// Counts of what a [`Store`] executed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Requests executed, including malformed ones answered with `ERR`.
    pub commands: u64,
    /// `INCR`s that changed a value.
    pub incr_executions: u64,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Executes one request line and returns its reply line (without `\n`).
    pub fn execute(&self, line: &str) -> String {
        let mut values = self.values();
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut incremented = false;
        let reply = match words.as_slice() {
            [] => "ERR empty request".to_string(),
            [cmd, key] if cmd.eq_ignore_ascii_case("GET") => match values.get(*key) {
                Some(value) => format!("VALUE {value}"),
                None => "NIL".to_string(),
            },
            [cmd, key, value] if cmd.eq_ignore_ascii_case("SET") => {
                values.insert(key.to_string(), value.to_string());
                "OK".to_string()
            }
            [cmd, key] if cmd.eq_ignore_ascii_case("INCR") => {
                let current = values.get(*key).map(|v| v.parse::<i64>());
                match current.unwrap_or(Ok(0)) {
                    Err(_) => "ERR value is not an integer".to_string(),
                    Ok(n) => match n.checked_add(1) {
                        None => "ERR increment would overflow".to_string(),
                        Some(n) => {
                            values.insert(key.to_string(), n.to_string());
                            incremented = true;
                            format!("INT {n}")
                        }
                    },
                }
            }
            [cmd] if cmd.eq_ignore_ascii_case("PING") => "PONG".to_string(),
            [cmd, ..]
                if ["GET", "SET", "INCR", "PING"]
                    .iter()
                    .any(|known| cmd.eq_ignore_ascii_case(known)) =>
            {
                format!("ERR wrong number of arguments for {}", cmd.to_uppercase())
            }
            [cmd, ..] => format!("ERR unknown command {cmd}"),
        };
        // Counted while the values are still locked, so that the counts and
        // the data always agree.
        self.stats.send_modify(|stats| {
            stats.commands += 1;
            stats.incr_executions += u64::from(incremented);
        });
        reply
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.values().get(key).cloned()
    }

    /// Stores `value` under `key` directly (not counted as a command).
    pub fn set(&self, key: &str, value: &str) {
        self.values().insert(key.to_string(), value.to_string());
    }

    /// The counter under `key`: 0 when missing or not an integer.
    pub fn counter(&self, key: &str) -> i64 {
        self.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The counts so far.
    pub fn stats(&self) -> StoreStats {
        *self.stats.borrow()
    }

    /// Requests executed so far, including malformed ones.
    pub fn commands(&self) -> u64 {
        self.stats().commands
    }

    /// `INCR`s executed so far (those that changed a value).
    pub fn incr_executions(&self) -> u64 {
        self.stats().incr_executions
    }

    /// Waits until at least `n` requests have been executed.
    pub async fn wait_for_commands(&self, n: u64) {
        self.wait_for(|stats| stats.commands >= n).await;
    }

    /// Waits until at least `n` `INCR`s have been executed.
    pub async fn wait_for_incr_executions(&self, n: u64) {
        self.wait_for(|stats| stats.incr_executions >= n).await;
    }

    async fn wait_for(&self, done: impl FnMut(&StoreStats) -> bool) {
        let mut stats = self.stats.subscribe();
        // The sender lives in `self`, so this never fails.
        let _ = stats.wait_for(done).await;
    }

    fn values(&self) -> MutexGuard<'_, HashMap<String, String>> {
        // A panicking test thread must not poison the data for the others.
        self.values.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("values", &*self.values())
            .field("stats", &self.stats())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A line-protocol server on `127.0.0.1` for tests.
///
/// Every method takes `&self`, so the server can be shared (for example in an
/// `Arc`) with the task that provokes an outage. Dropping it aborts its
/// listener and every connection task, also when a test panics; the port and
/// the sockets close as soon as the runtime drops the aborted tasks (use
/// [`stop`](Self::stop) to wait for that).
pub struct LineServer {
    addr: SocketAddr,
    store: Store,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<Acceptor>>,
}

/// Counts of what a [`LineServer`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted since the server was created, across restarts,
    /// including those closed at once in accept-then-close mode.
    pub accepted: u64,
    /// Connections currently open.
    pub open: usize,
}

/// State shared by the server handle, its accept loop and its connections.
struct Shared {
    stats: watch::Sender<ServerStats>,
    accept_then_close: AtomicBool,
    stalled: watch::Sender<bool>,
    hold_replies: watch::Sender<bool>,
    connections: Mutex<Vec<ConnectionHandle>>,
}

/// The running listener: its accept-loop task and the signal that stops it.
struct Acceptor {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// One served connection: its task and the signal that closes it.
struct ConnectionHandle {
    close: oneshot::Sender<Close>,
    task: JoinHandle<()>,
}

/// How the server closes a connection.
#[derive(Clone, Copy, Debug)]
enum Close {
    /// FIN: shut down the write side, then close.
    Graceful,
    /// RST: close with `SO_LINGER` set to zero.
    Reset,
}

impl LineServer {
    /// Starts a server on an ephemeral port of `127.0.0.1`.
    ///
    /// # Panics
    ///
    /// If the port cannot be bound.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a server on `addr` (port 0 for an ephemeral one).
    ///
    /// # Panics
    ///
    /// If `addr` cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, Store::new()).await
    }

    /// Starts a server on `addr` that serves an existing `store`, for example
    /// one kept from a server that was dropped.
    ///
    /// # Panics
    ///
    /// If `addr` cannot be bound.
    pub async fn start_with(addr: SocketAddr, store: Store) -> Self {
        let listener = bind(addr)
            .await
            .unwrap_or_else(|e| panic!("LineServer: cannot bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local address of a listener");
        let shared = Arc::new(Shared {
            stats: watch::Sender::new(ServerStats::default()),
            accept_then_close: AtomicBool::new(false),
            stalled: watch::Sender::new(false),
            hold_replies: watch::Sender::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = Acceptor::spawn(listener, shared.clone(), store.clone());
        Self {
            addr,
            store,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    /// The address the server listens on; it stays the same across restarts.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's data, shared with it.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The counter under `key`: 0 when missing or not an integer.
    pub fn counter(&self, key: &str) -> i64 {
        self.store.counter(key)
    }

    /// The value stored under `key`.
    pub fn value(&self, key: &str) -> Option<String> {
        self.store.get(key)
    }

    /// `INCR`s executed so far, across restarts.
    pub fn incr_executions(&self) -> u64 {
        self.store.incr_executions()
    }

    /// Requests executed so far, across restarts.
    pub fn commands(&self) -> u64 {
        self.store.commands()
    }

    /// Waits until at least `n` `INCR`s have been executed.
    pub async fn wait_for_incr_executions(&self, n: u64) {
        self.store.wait_for_incr_executions(n).await;
    }

    /// Waits until at least `n` requests have been executed.
    pub async fn wait_for_commands(&self, n: u64) {
        self.store.wait_for_commands(n).await;
    }

    /// The connection counts so far.
    pub fn stats(&self) -> ServerStats {
        *self.shared.stats.borrow()
    }

    /// Connections accepted since the server was created, across restarts.
    pub fn accepted(&self) -> u64 {
        self.stats().accepted
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.stats().open
    }

    /// Waits until at least `n` connections have been accepted in all.
    pub async fn wait_for_accepted(&self, n: u64) {
        self.wait_for(|stats| stats.accepted >= n).await;
    }

    /// Waits until exactly `n` connections are open.
    pub async fn wait_for_open_connections(&self, n: usize) {
        self.wait_for(|stats| stats.open == n).await;
    }

    /// Whether the listener is up (not [`stop`](Self::stop)ped).
    pub fn is_running(&self) -> bool {
        lock(&self.acceptor).is_some()
    }

    /// In this mode the server accepts each new connection and closes it at
    /// once (FIN), without reading anything.
    pub fn set_accept_then_close(&self, on: bool) {
        self.shared.accept_then_close.store(on, Ordering::SeqCst);
    }

    /// While stalled, connections read no further requests: requests pile up
    /// unread in the socket, unexecuted, and nothing is answered.
    pub fn set_stalled(&self, on: bool) {
        self.shared.stalled.send_replace(on);
    }

    /// While holding, each connection executes the request it has read but
    /// keeps its reply (and reads nothing more) until holding is turned off.
    /// A reply held when the connection closes is lost: the request was
    /// executed but its client never hears of it.
    pub fn set_hold_replies(&self, on: bool) {
        self.shared.hold_replies.send_replace(on);
    }

    /// Closes the listener and every open connection (FIN; RST for a
    /// connection whose requests were left unread). Once this returns,
    /// connecting to [`addr`](Self::addr) is refused. The store is kept.
    /// Does nothing more if the server is already stopped.
    pub async fn stop(&self) {
        let acceptor = lock(&self.acceptor).take();
        if let Some(acceptor) = acceptor {
            let _ = acceptor.stop.send(());
            // The accept loop owns the listener; when it ends, the port is
            // closed and no further connection gets registered.
            let _ = acceptor.task.await;
        }
        self.shared.close_connections(Close::Graceful).await;
    }

    /// [`stop`](Self::stop)s, then listens again on the same port. Also
    /// brings a stopped server back up.
    ///
    /// # Panics
    ///
    /// If the port cannot be bound again.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = bind(self.addr)
            .await
            .unwrap_or_else(|e| panic!("LineServer: cannot bind {} again: {e}", self.addr));
        let acceptor = Acceptor::spawn(listener, self.shared.clone(), self.store.clone());
        if let Some(old) = lock(&self.acceptor).replace(acceptor) {
            // Only when two restarts raced; keep the newest listener.
            old.task.abort();
        }
    }

    /// Aborts every open connection with an RST (`SO_LINGER` 0). The listener
    /// stays up. Once this returns, every connection that was open is reset.
    pub async fn reset_all(&self) {
        self.shared.close_connections(Close::Reset).await;
    }

    async fn wait_for(&self, done: impl FnMut(&ServerStats) -> bool) {
        let mut stats = self.shared.stats.subscribe();
        // The sender lives in `self`, so this never fails.
        let _ = stats.wait_for(done).await;
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        if let Some(acceptor) = lock(&self.acceptor).take() {
            acceptor.task.abort();
        }
        for connection in std::mem::take(&mut *lock(&self.shared.connections)) {
            connection.task.abort();
        }
    }
}

impl fmt::Debug for LineServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineServer")
            .field("addr", &self.addr)
            .field("running", &self.is_running())
            .field("stats", &self.stats())
            .field("store", &self.store)
            .finish()
    }
}

impl Acceptor {
    fn spawn(listener: TcpListener, shared: Arc<Shared>, store: Store) -> Self {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared, store, stopped));
        Self { stop, task }
    }
}

impl Shared {
    /// Counts, registers and spawns the task serving `stream`.
    ///
    /// All under the registry lock, so whoever sees the connection counted
    /// and then closes connections closes this one too.
    fn serve(self: &Arc<Self>, stream: TcpStream, store: Store) {
        let (close, closed) = oneshot::channel();
        let mut connections = lock(&self.connections);
        connections.retain(|c| !c.task.is_finished());
        self.stats.send_modify(|stats| {
            stats.accepted += 1;
            stats.open += 1;
        });
        // The guard travels inside the task's future, so it is dropped (and
        // the count kept right) even if the task is aborted before it runs.
        let open = OpenGuard(self.clone());
        let task = tokio::spawn(serve_connection(stream, store, open, closed));
        connections.push(ConnectionHandle { close, task });
    }

    /// Closes every registered connection and waits for their tasks to end.
    async fn close_connections(&self, how: Close) {
        let connections = std::mem::take(&mut *lock(&self.connections));
        let mut tasks = Vec::with_capacity(connections.len());
        for connection in connections {
            let _ = connection.close.send(how);
            tasks.push(connection.task);
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Decrements the open-connection count when a connection task ends, also
/// when it is aborted.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.stats.send_modify(|stats| stats.open -= 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    store: Store,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Transient (for example out of file descriptors): try again
                // shortly rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        if shared.accept_then_close.load(Ordering::SeqCst) {
            shared.stats.send_modify(|stats| stats.accepted += 1);
            drop(stream);
        } else {
            shared.serve(stream, store.clone());
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    store: Store,
    open: OpenGuard,
    mut close: oneshot::Receiver<Close>,
) {
    let shared = &open.0;
    let _ = stream.set_nodelay(true);
    let mut stalled = shared.stalled.subscribe();
    let mut hold = shared.hold_replies.subscribe();
    let mut framed = Framed::new(stream, StrictLines::default());

    let how = loop {
        let request = tokio::select! {
            how = &mut close => break how.unwrap_or(Close::Graceful),
            request = next_request(&mut framed, &mut stalled) => request,
        };
        let line = match request {
            Some(Ok(line)) => line,
            // The client closed, or the connection broke.
            Some(Err(_)) | None => return,
        };
        let reply = store.execute(&line);
        tokio::select! {
            how = &mut close => break how.unwrap_or(Close::Graceful),
            sent = send_reply(&mut framed, &mut hold, reply) => {
                if sent.is_err() {
                    return;
                }
            }
        }
    };

    let stream = framed.into_inner();
    match how {
        Close::Graceful => {
            let mut stream = stream;
            let _ = stream.shutdown().await;
        }
        Close::Reset => {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    }
}

/// The next request line, once the server is not stalled.
async fn next_request(
    framed: &mut Framed<TcpStream, StrictLines>,
    stalled: &mut watch::Receiver<bool>,
) -> Option<Result<String, LinesCodecError>> {
    // The sender lives as long as the server; if it is gone, just carry on.
    let _ = stalled.wait_for(|stalled| !*stalled).await;
    framed.next().await
}

/// Sends `reply`, once replies are not held.
async fn send_reply(
    framed: &mut Framed<TcpStream, StrictLines>,
    hold: &mut watch::Receiver<bool>,
    reply: String,
) -> Result<(), LinesCodecError> {
    let _ = hold.wait_for(|hold| !*hold).await;
    framed.send(reply).await
}

/// Binds a listener with `SO_REUSEADDR`, so that a restart can take its port
/// back while old connections sit in `TIME_WAIT`. A port still in use is
/// tried again a few times.
async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut attempt = 1;
    loop {
        match try_bind(addr) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < BIND_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(BIND_RETRY_DELAY).await;
            }
            result => return result,
        }
    }
}

fn try_bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Client connection
// ---------------------------------------------------------------------------

/// A pipelined client connection: a `tower::Service<String>` whose response
/// is the reply line (without `\n`). It is the crate's
/// [`connect::Framed`](tower_redial::connect::Framed) over [`StrictLines`],
/// so its rules are `Framed`'s:
///
/// - `poll_ready` is `Ready(Ok)` while the connection is open and
///   `Ready(Err)` once it has ended, and its end wakes the client, so an
///   idle connection's death is noticed with no request.
/// - A request never written fails with a `NotSent` (holding it if it
///   was still queued).
/// - A written request whose reply never came fails with a
///   `ConnectionLost` around the [`io::Error`] that ended the connection:
///   kind `UnexpectedEof` when the server closed it, else the socket's error
///   (such as `ConnectionReset`).
/// - A request containing a line break fails at once with `InvalidInput`.
pub struct LineConnection {
    framed: tower_redial::connect::Framed<String, String>,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
}

impl LineConnection {
    /// Turns a connected stream into a connection (sets `TCP_NODELAY` and
    /// spawns the task that owns the socket).
    pub async fn handshake(io: TcpStream) -> io::Result<LineConnection> {
        io.set_nodelay(true)?;
        let local_addr = io.local_addr()?;
        let peer_addr = io.peer_addr()?;
        Ok(LineConnection {
            framed: tower_redial::connect::Framed::new(io, StrictLines::default()),
            local_addr,
            peer_addr,
        })
    }

    /// Connects to `addr` and [`handshake`](Self::handshake)s.
    pub async fn connect(addr: SocketAddr) -> io::Result<LineConnection> {
        Self::handshake(TcpStream::connect(addr).await?).await
    }

    /// Whether the connection has ended (`poll_ready` fails).
    pub fn is_closed(&self) -> bool {
        self.framed.is_closed()
    }

    /// Waits until the connection has ended.
    pub async fn closed(&self) {
        self.framed.closed().await;
    }

    /// The client side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }
}

impl fmt::Debug for LineConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineConnection")
            .field("local_addr", &self.local_addr)
            .field("peer_addr", &self.peer_addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Service<String> for LineConnection {
    type Response = String;
    type Error = BoxError;
    type Future = futures::future::Either<
        tower_redial::connect::FramedFuture<String>,
        std::future::Ready<Result<String, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.framed.poll_ready(cx)
    }

    fn call(&mut self, line: String) -> Self::Future {
        if line.contains('\n') || line.contains('\r') {
            let error = io::Error::new(
                io::ErrorKind::InvalidInput,
                "a request must be a single line",
            );
            return futures::future::Either::Right(std::future::ready(Err(error.into())));
        }
        futures::future::Either::Left(self.framed.call(line))
    }
}

/// `LinesCodec`, except that a last line cut off by the end of the stream is
/// an error, not a line: a half-received request must not run, and a
/// half-received reply must not pass for an answer.
#[derive(Debug, Default)]
pub struct StrictLines(LinesCodec);

impl Decoder for StrictLines {
    type Item = String;
    type Error = LinesCodecError;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<String>, LinesCodecError> {
        self.0.decode(buf)
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<String>, LinesCodecError> {
        match self.0.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None if buf.is_empty() => Ok(None),
            None => {
                // Drop the fragment, and the codec's note of how far it read.
                buf.clear();
                self.0 = LinesCodec::new();
                Err(LinesCodecError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "line cut off by the end of the stream",
                )))
            }
        }
    }
}

impl Encoder<String> for StrictLines {
    type Error = LinesCodecError;

    fn encode(&mut self, line: String, buf: &mut bytes::BytesMut) -> Result<(), LinesCodecError> {
        self.0.encode(line, buf)
    }
}
