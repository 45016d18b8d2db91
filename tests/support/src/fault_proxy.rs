//! An in-process fault-injection TCP proxy for tests (Toxiproxy and
//! `tc netem` are not available here).
//!
//! [`FaultProxy`] listens on `127.0.0.1` and forwards every accepted
//! connection to an upstream address with two pumps: client to server
//! ([`Direction::Upstream`]) and server to client ([`Direction::Downstream`]).
//! A [`Fault`] can be set and cleared at runtime; pumps, connections and the
//! listener watch for changes and react at once.
//!
//! - [`Fault::Down`]: the listener is closed (new dials are refused) and
//!   every open connection is closed; on [`clear`](FaultProxy::clear) the
//!   proxy listens again on the same port.
//! - [`Fault::ResetPeer`]: every connection, open or new, is aborted with an
//!   RST on both sides (`SO_LINGER` 0).
//! - [`Fault::Blackhole`]: connections (open and new) forward nothing in
//!   either direction and are never closed.
//! - [`Fault::Latency`]: each chunk waits `delay` plus a seeded random jitter
//!   before it is forwarded.
//! - [`Fault::LimitData`]: a connection is closed once `bytes` have been
//!   forwarded in the direction since the fault was set.
//! - [`Fault::SlowClose`]: when one side closes (or fails), the other side
//!   hears of it only `delay` later.
//! - [`Fault::HalfOpen`]: one direction stops forwarding; the other goes on.
//!
//! Stopped directions (blackhole, half-open) stop *reading*: the data waits
//! in the socket buffers, nothing is lost or reordered, and forwarding
//! resumes when the fault is cleared. To the peers it looks like a silent
//! network: no error, no close.
//!
//! [`FaultProxy::run_schedule`] applies a random schedule of faults derived
//! from a seed ([`FaultProxy::schedule`]); the same seed gives the same
//! schedule.
//!
//! Dropping the proxy aborts every task it spawned, also when a test panics.
//! Real sockets and real time: do not use with a paused tokio clock.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A direction of traffic through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Upstream,
    /// Server to client.
    Downstream,
    /// Both directions.
    Both,
}

impl Direction {
    /// Whether `self` covers the single direction `pump`.
    pub fn includes(self, pump: Direction) -> bool {
        self == Direction::Both || self == pump
    }
}

/// A fault the proxy injects until it is cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Refuse new connections (the listener is closed) and close every open
    /// connection.
    Down,
    /// Abort every connection, open or new, with an RST to both sides.
    ResetPeer,
    /// Accept, then forward nothing in either direction and never close.
    Blackhole,
    /// Delay each forwarded chunk by `delay` plus a random `0..=jitter`.
    Latency {
        /// Which direction(s) are delayed.
        direction: Direction,
        /// The fixed part of the delay.
        delay: Duration,
        /// The most random delay added on top (seeded).
        jitter: Duration,
    },
    /// Close a connection once `bytes` have been forwarded in `direction`
    /// since the fault was set.
    LimitData {
        /// Which direction(s) are counted (each on its own).
        direction: Direction,
        /// How many bytes pass before the connection is closed.
        bytes: u64,
    },
    /// When one side closes or fails, wait `delay` before passing it on.
    SlowClose {
        /// How long the close is held back.
        delay: Duration,
    },
    /// The `stopped` direction(s) forward nothing; the others go on.
    HalfOpen {
        /// Which direction stops.
        stopped: Direction,
    },
}

impl Fault {
    /// Whether this fault stops forwarding in the single direction `pump`.
    fn stops(self, pump: Direction) -> bool {
        match self {
            Fault::Blackhole => true,
            Fault::HalfOpen { stopped } => stopped.includes(pump),
            _ => false,
        }
    }
}

/// One step of a random schedule: `fault` is set `at` after the schedule
/// started and cleared `hold` later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScheduledFault {
    /// When the fault is set, from the start of the schedule.
    pub at: Duration,
    /// The fault.
    pub fault: Fault,
    /// How long it stays set.
    pub hold: Duration,
}

/// Counts of what a [`FaultProxy`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections currently open (accepted and not yet closed).
    pub open: u64,
    /// Bytes forwarded client to server.
    pub bytes_upstream: u64,
    /// Bytes forwarded server to client.
    pub bytes_downstream: u64,
    /// Connections aborted with an RST by [`Fault::ResetPeer`].
    pub resets: u64,
    /// Connections closed by [`Fault::LimitData`].
    pub limit_closes: u64,
    /// Closes held back by [`Fault::SlowClose`].
    pub slow_closes: u64,
    /// Connections closed by [`Fault::Down`].
    pub down_closes: u64,
    /// Accepted connections whose upstream dial failed (reset at once).
    pub upstream_failures: u64,
}

/// The current fault and a generation that changes on every set or clear.
#[derive(Clone, Copy, Debug, Default)]
struct FaultState {
    generation: u64,
    fault: Option<Fault>,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    bytes_upstream: AtomicU64,
    bytes_downstream: AtomicU64,
    resets: AtomicU64,
    limit_closes: AtomicU64,
    slow_closes: AtomicU64,
    down_closes: AtomicU64,
    upstream_failures: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    fault: watch::Sender<FaultState>,
    listening: watch::Sender<bool>,
    counters: Counters,
    rng: Mutex<fastrand::Rng>,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

/// A fault-injection TCP proxy on `127.0.0.1`. See the module docs.
pub struct FaultProxy {
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on an ephemeral port of `127.0.0.1`,
    /// with jitter seed 0.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_seeded(upstream, 0).await
    }

    /// Starts a proxy whose latency jitter is drawn from `seed`.
    ///
    /// # Panics
    ///
    /// If no port can be bound.
    pub async fn start_seeded(upstream: SocketAddr, seed: u64) -> Self {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .expect("FaultProxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address of a listener");
        let shared = Arc::new(Shared {
            addr,
            upstream,
            fault: watch::Sender::new(FaultState::default()),
            listening: watch::Sender::new(true),
            counters: Counters::default(),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = tokio::spawn(accept_loop(Some(listener), shared.clone()));
        Self { shared, acceptor }
    }

    /// The address clients connect to. It stays the same across
    /// [`Fault::Down`].
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Sets `fault`, replacing the current one. Takes effect at once (the
    /// tasks react asynchronously; see [`wait_listening`](Self::wait_listening)).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.send_modify(|s| {
            s.generation += 1;
            s.fault = Some(fault);
        });
    }

    /// Clears the current fault: forwarding resumes, and after
    /// [`Fault::Down`] the proxy listens again.
    pub fn clear(&self) {
        self.shared.fault.send_modify(|s| {
            s.generation += 1;
            s.fault = None;
        });
    }

    /// The fault currently set.
    pub fn fault(&self) -> Option<Fault> {
        self.shared.fault.borrow().fault
    }

    /// Whether the listener is open.
    pub fn is_listening(&self) -> bool {
        *self.shared.listening.borrow()
    }

    /// Waits until the listener is open (`true`) or closed (`false`).
    pub async fn wait_listening(&self, on: bool) {
        let mut listening = self.shared.listening.subscribe();
        let _ = listening.wait_for(|l| *l == on).await;
    }

    /// The counts so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            accepted: get(&c.accepted),
            open: get(&c.open),
            bytes_upstream: get(&c.bytes_upstream),
            bytes_downstream: get(&c.bytes_downstream),
            resets: get(&c.resets),
            limit_closes: get(&c.limit_closes),
            slow_closes: get(&c.slow_closes),
            down_closes: get(&c.down_closes),
            upstream_failures: get(&c.upstream_failures),
        }
    }

    /// The random schedule for `seed` that fits in `duration`: faults of
    /// every kind, each set after a pause of 50..=250 ms and held for
    /// 100..=400 ms. Pure: the same seed and duration give the same schedule.
    pub fn schedule(seed: u64, duration: Duration) -> Vec<ScheduledFault> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let ms = Duration::from_millis;
        let mut steps = Vec::new();
        let mut t = Duration::ZERO;
        loop {
            let at = t + ms(rng.u64(50..=250));
            let hold = ms(rng.u64(100..=400));
            if at + hold > duration {
                break steps;
            }
            let direction = match rng.u8(0..3) {
                0 => Direction::Upstream,
                1 => Direction::Downstream,
                _ => Direction::Both,
            };
            let fault = match rng.u8(0..7) {
                0 => Fault::Down,
                1 => Fault::ResetPeer,
                2 => Fault::Blackhole,
                3 => Fault::Latency {
                    direction,
                    delay: ms(rng.u64(5..=40)),
                    jitter: ms(rng.u64(0..=20)),
                },
                4 => Fault::LimitData {
                    direction,
                    bytes: rng.u64(16..=256),
                },
                5 => Fault::SlowClose {
                    delay: ms(rng.u64(50..=200)),
                },
                _ => Fault::HalfOpen { stopped: direction },
            };
            steps.push(ScheduledFault { at, fault, hold });
            t = at + hold;
        }
    }

    /// Applies [`schedule(seed, duration)`](Self::schedule) in real time,
    /// clearing each fault after its hold, and returns it once `duration`
    /// has passed. Ends with no fault set.
    pub async fn run_schedule(&self, seed: u64, duration: Duration) -> Vec<ScheduledFault> {
        let schedule = Self::schedule(seed, duration);
        let start = Instant::now();
        for step in &schedule {
            tokio::time::sleep_until(start + step.at).await;
            self.set_fault(step.fault);
            tokio::time::sleep_until(start + step.at + step.hold).await;
            self.clear();
        }
        tokio::time::sleep_until(start + duration).await;
        self.clear();
        schedule
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for task in std::mem::take(&mut *lock(&self.shared.connections)) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.shared.addr)
            .field("upstream", &self.shared.upstream)
            .field("fault", &self.fault())
            .field("stats", &self.stats())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------

/// Accepts connections while no [`Fault::Down`] is set; while one is, holds
/// no listener at all, so dials are refused.
async fn accept_loop(mut listener: Option<TcpListener>, shared: Arc<Shared>) {
    let mut faults = shared.fault.subscribe();
    loop {
        let down = matches!(faults.borrow_and_update().fault, Some(Fault::Down));
        match (&listener, down) {
            (Some(_), true) => {
                listener = None;
                shared.listening.send_replace(false);
            }
            (None, false) => {
                let rebound = bind(shared.addr).await.unwrap_or_else(|e| {
                    panic!("FaultProxy: cannot bind {} again: {e}", shared.addr)
                });
                listener = Some(rebound);
                shared.listening.send_replace(true);
            }
            (None, true) => {
                // The sender lives in `shared`, so this never fails.
                let _ = faults.changed().await;
            }
            (Some(l), false) => {
                tokio::select! {
                    biased;
                    _ = faults.changed() => {}
                    accepted = l.accept() => match accepted {
                        Ok((stream, _)) => spawn_connection(&shared, stream),
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    },
                }
            }
        }
    }
}

fn spawn_connection(shared: &Arc<Shared>, stream: TcpStream) {
    bump(&shared.counters.accepted, 1);
    bump(&shared.counters.open, 1);
    // Travels in the task's future: the count stays right even on abort.
    let open = OpenGuard(shared.clone());
    let task = tokio::spawn(connection(stream, open));
    let mut connections = lock(&shared.connections);
    connections.retain(|t| !t.is_finished());
    connections.push(task);
}

struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a connection ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Close both sockets (FIN).
    Close,
    /// Abort both sockets (RST).
    Reset,
}

async fn connection(client: TcpStream, open: OpenGuard) {
    let shared = &*open.0;
    let mut faults = shared.fault.subscribe();
    let now = faults.borrow_and_update().fault;
    match now {
        Some(Fault::ResetPeer) => {
            bump(&shared.counters.resets, 1);
            return reset(&client);
        }
        Some(Fault::Down) => {
            bump(&shared.counters.down_closes, 1);
            return;
        }
        _ => {}
    }
    let server = match TcpStream::connect(shared.upstream).await {
        Ok(server) => server,
        Err(_) => {
            bump(&shared.counters.upstream_failures, 1);
            return reset(&client);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();

    let end = tokio::select! {
        pumped = async {
            tokio::try_join!(
                pump(Direction::Upstream, &mut client_read, &mut server_write, shared),
                pump(Direction::Downstream, &mut server_read, &mut client_write, shared),
            )
        } => pumped.err(),
        killed = kill_signal(&mut faults, shared) => Some(killed),
    };
    if let Some(End::Reset) = end {
        reset(client_read.as_ref());
        reset(server_read.as_ref());
    }
    // Dropping the halves closes both sockets.
}

/// Resolves when a fault that ends every connection is set.
async fn kill_signal(faults: &mut watch::Receiver<FaultState>, shared: &Shared) -> End {
    let waited = faults
        .wait_for(|s| matches!(s.fault, Some(Fault::Down | Fault::ResetPeer)))
        .await
        .map(|state| *state);
    let Ok(state) = waited else {
        // The sender lives in `shared`: never.
        return std::future::pending().await;
    };
    if state.fault == Some(Fault::ResetPeer) {
        bump(&shared.counters.resets, 1);
        End::Reset
    } else {
        // Close only once the listener is gone, so that the client's redial
        // is refused rather than accepted into a dying listener's backlog.
        let mut listening = shared.listening.subscribe();
        let _ = listening.wait_for(|l| !*l).await;
        bump(&shared.counters.down_closes, 1);
        End::Close
    }
}

/// Forwards `from` to `to` in direction `dir` (a single direction) under the
/// current fault. `Ok` after passing an EOF on; `Err` when the whole
/// connection must end.
async fn pump(
    dir: Direction,
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    shared: &Shared,
) -> Result<(), End> {
    let mut faults = shared.fault.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    let mut generation = u64::MAX;
    let mut forwarded = 0u64;
    loop {
        let state = *faults.borrow_and_update();
        if state.generation != generation {
            generation = state.generation;
            forwarded = 0;
        }
        let fault = state.fault;
        if fault.is_some_and(|f| f.stops(dir)) {
            // Stop reading: the data waits in the socket buffers.
            let _ = faults.changed().await;
            continue;
        }
        let read = tokio::select! {
            biased;
            _ = faults.changed() => continue,
            read = from.read(&mut buf) => read,
        };
        let n = match read {
            Ok(0) => {
                slow_close(shared).await;
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(_) => {
                slow_close(shared).await;
                return Err(End::Reset);
            }
        };
        let mut chunk = &buf[..n];
        let mut close_after = false;
        match fault {
            Some(Fault::LimitData { direction, bytes }) if direction.includes(dir) => {
                let room = bytes.saturating_sub(forwarded);
                if n as u64 >= room {
                    chunk = &buf[..room as usize];
                    close_after = true;
                }
            }
            Some(Fault::Latency {
                direction,
                delay,
                jitter,
            }) if direction.includes(dir) => {
                let extra = {
                    let nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
                    Duration::from_nanos(lock(&shared.rng).u64(0..=nanos))
                };
                tokio::time::sleep(delay + extra).await;
            }
            _ => {}
        }
        if to.write_all(chunk).await.is_err() {
            return Err(End::Reset);
        }
        forwarded += chunk.len() as u64;
        let counter = match dir {
            Direction::Upstream => &shared.counters.bytes_upstream,
            _ => &shared.counters.bytes_downstream,
        };
        bump(counter, chunk.len() as u64);
        if close_after {
            bump(&shared.counters.limit_closes, 1);
            return Err(End::Close);
        }
    }
}

/// Under [`Fault::SlowClose`], waits its delay before a close is passed on.
async fn slow_close(shared: &Shared) {
    let fault = shared.fault.borrow().fault;
    if let Some(Fault::SlowClose { delay }) = fault {
        bump(&shared.counters.slow_closes, 1);
        tokio::time::sleep(delay).await;
    }
}

/// Makes the socket's close an RST.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut attempt = 1;
    loop {
        match try_bind(addr) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < 100 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            result => return result,
        }
    }
}

fn try_bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
