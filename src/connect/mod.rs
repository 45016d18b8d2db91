//! Turning a raw connector into a connection factory.
//!
//! [`ReconnectLayer`](crate::ReconnectLayer) wraps a factory of connection
//! *services*. A raw connector, such as [`TcpConnector`] or hyper-util's
//! `HttpConnector`, yields IO instead. [`Handshake`] pairs it with an async
//! function that turns the IO into a service: a framed codec, hyper's
//! `client::conn::http1::handshake`, a database client's setup.
//!
//! For a protocol of your own, make the service a [`Framed`]: one task
//! owns the IO, replies are matched to requests in order, a request dropped
//! mid-flight cannot leave its reply for the next one, and an idle
//! connection's end is seen at once.
//!
//! # Example
//!
//! ```
//! use tokio::net::{TcpListener, TcpStream};
//! use tokio_util::codec::LinesCodec;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_redial::connect::{Framed, Handshake, TcpConnector};
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # let listener = TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?;
//! # tokio::spawn(async move {
//! #     use futures::{SinkExt, StreamExt};
//! #     let (io, _) = listener.accept().await.unwrap();
//! #     let mut lines = tokio_util::codec::Framed::new(io, LinesCodec::new());
//! #     while let Some(Ok(line)) = lines.next().await {
//! #         let n: u64 = line.parse().unwrap();
//! #         lines.send((n + 1).to_string()).await.unwrap();
//! #     }
//! # });
//! // A line protocol: each request is a line, and so is each reply.
//! async fn handshake(io: TcpStream) -> std::io::Result<Framed<String, String>> {
//!     Ok(Framed::new(io, LinesCodec::new()))
//! }
//!
//! let make = Handshake::new(TcpConnector::new(), handshake);
//! let client = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(make)
//!     .multiplexed(addr);
//! assert_eq!(client.oneshot("41".to_string()).await?, "42");
//! # Ok(())
//! # }
//! ```

mod factory;
mod framed;
mod future;

pub use factory::Factory;
pub use framed::{Framed, FramedFuture};
pub use future::{HandshakeFuture, TcpConnecting};

use std::fmt;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpStream, ToSocketAddrs};
use tower::make::MakeConnection;
use tower::Service;

pub use crate::close::CloseWatch;
use crate::BoxError;

/// A connection factory made of a raw connector and a handshake.
///
/// As a `Service<Target>`, it connects with the connector, then hands the IO
/// to `handshake`, whose output is the connection service. Either step's
/// error fails the dial.
///
/// Each dial calls a fresh clone of `handshake`, so state kept in the
/// closure itself starts over on every dial; share state across dials
/// through an `Arc` the closure captures.
#[derive(Clone)]
pub struct Handshake<C, H> {
    connector: C,
    handshake: H,
}

impl<C, H> Handshake<C, H> {
    /// Pairs a connector with a handshake function.
    pub fn new(connector: C, handshake: H) -> Self {
        Self {
            connector,
            handshake,
        }
    }
}

impl<C, H> fmt::Debug for Handshake<C, H>
where
    C: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl<C, H, T, F, S, E> Service<T> for Handshake<C, H>
where
    C: MakeConnection<T>,
    C::Error: Into<BoxError>,
    H: FnMut(C::Connection) -> F + Clone,
    F: Future<Output = Result<S, E>>,
    E: Into<BoxError>,
{
    type Response = S;
    type Error = BoxError;
    type Future = HandshakeFuture<C::Future, H, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.connector.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: T) -> Self::Future {
        HandshakeFuture::new(
            self.connector.make_connection(target),
            self.handshake.clone(),
        )
    }
}

/// A plain TCP connector: resolves the target afresh and connects, then sets
/// the socket options it was built with.
///
/// The target is anything tokio can resolve: a `SocketAddr`, a
/// `"host:port"` string, an `(IpAddr, u16)` pair. Resolution and connecting
/// are tokio's [`TcpStream::connect`]: when a name resolves to several
/// addresses they are tried one after another, in order, until one connects
/// (no Happy Eyeballs racing; hyper-util's `HttpConnector` does that).
///
/// Options are set on the connected socket, before it is handed out. If one
/// cannot be set, the dial fails with that error.
///
/// # Presets
///
/// | constructor | `TCP_NODELAY` | keepalive | `TCP_USER_TIMEOUT` |
/// |---|---|---|---|
/// | [`new`](TcpConnector::new) (also `Default`) | on | the system's (off) | the system's (off) |
/// | [`detect_dead_peers`](TcpConnector::detect_dead_peers) | on | idle 10 s, then every 5 s, 3 probes | 30 s |
///
/// Each setting can then be changed with [`nodelay`](TcpConnector::nodelay),
/// [`keepalive`](TcpConnector::keepalive) and
/// [`user_timeout`](TcpConnector::user_timeout).
///
/// # Detecting dead peers
///
/// A peer that closes or restarts sends FIN or RST, and the connection fails
/// at once. A peer that vanishes (host crash, pulled cable, a NAT or firewall
/// that forgot the flow) sends nothing, and by default Linux takes a long
/// time to notice:
///
/// | what is lost | Linux default | [`detect_dead_peers`](TcpConnector::detect_dead_peers) |
/// |---|---|---|
/// | an idle connection | never: keepalive is off per socket; with `SO_KEEPALIVE` alone, after 2 h idle and 9 probes 75 s apart (≈ 2 h 11 min) | ≈ 30 s: probes from 10 s idle, every 5 s; Linux drops the connection once probes go unanswered past the 30 s user timeout |
/// | a connection with data sent but not acknowledged | ≈ 15 min (`tcp_retries2 = 15` retransmissions) | 30 s (`TCP_USER_TIMEOUT`) |
/// | a connection whose peer closed or restarted | at once (FIN/RST) | at once |
///
/// Once the kernel drops the connection, the next read or write on it fails,
/// and [`Reconnect`](crate::reconnect::Reconnect) redials. Keepalive probes also keep
/// idle NAT and load-balancer mappings alive.
///
/// `TCP_USER_TIMEOUT` exists on Linux and Android only; elsewhere
/// [`user_timeout`](TcpConnector::user_timeout) is accepted and ignored.
/// Likewise, keepalive's interval and probe count are set only where the
/// system has them (Linux, Android, the BSDs, macOS and iOS, illumos;
/// Windows has the interval but not the count), and are otherwise ignored.
///
/// # hyper-util's `HttpConnector`
///
/// hyper-util's `HttpConnector` has the same settings, so the preset needs no
/// wrapper there:
///
/// ```
/// use std::time::Duration;
/// use hyper_util::client::legacy::connect::HttpConnector;
///
/// // The `detect_dead_peers` preset, on hyper-util's connector.
/// let mut http = HttpConnector::new();
/// http.set_nodelay(true);
/// http.set_keepalive(Some(Duration::from_secs(10)));
/// http.set_keepalive_interval(Some(Duration::from_secs(5)));
/// http.set_keepalive_retries(Some(3));
/// #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
/// http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
/// ```
///
/// Leave its `set_connect_timeout` unset when it is wrapped in a
/// [`Dial`](crate::dial::Dial): the dial's policy times each attempt.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceExt;
/// use tower_redial::connect::{Keepalive, TcpConnector};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// let connector = TcpConnector::new()
///     .keepalive(Keepalive::new(Duration::from_secs(60)).interval(Duration::from_secs(10)))
///     .user_timeout(Duration::from_secs(45));
/// let stream = connector.oneshot(addr).await?;
/// assert!(stream.nodelay()?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConnector {
    nodelay: bool,
    keepalive: Option<Keepalive>,
    user_timeout: Option<Duration>,
}

impl TcpConnector {
    /// A connector with `TCP_NODELAY` set on each connection, and the
    /// system's keepalive and user timeout.
    pub const fn new() -> Self {
        Self {
            nodelay: true,
            keepalive: None,
            user_timeout: None,
        }
    }

    /// A connector that notices a vanished peer within about 30 s: keepalive
    /// probes after 10 s idle, every 5 s, 3 of them; a 30 s
    /// `TCP_USER_TIMEOUT`; and `TCP_NODELAY`. See
    /// [Detecting dead peers](TcpConnector#detecting-dead-peers).
    pub const fn detect_dead_peers() -> Self {
        Self {
            nodelay: true,
            keepalive: Some(Keepalive::DETECT_DEAD_PEERS),
            user_timeout: Some(Duration::from_secs(30)),
        }
    }

    /// Sets whether `TCP_NODELAY` is set (Nagle's algorithm off). On by
    /// default.
    pub const fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// Turns TCP keepalive on with these settings, or leaves it to the system
    /// with `None`.
    pub fn keepalive(mut self, keepalive: impl Into<Option<Keepalive>>) -> Self {
        self.keepalive = keepalive.into();
        self
    }

    /// Sets `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged
    /// before the kernel drops the connection. `None` leaves it to the
    /// system. Linux and Android only; ignored elsewhere.
    pub fn user_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.user_timeout = timeout.into();
        self
    }

    fn configure(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        let socket = socket2::SockRef::from(stream);
        if let Some(keepalive) = &self.keepalive {
            socket.set_tcp_keepalive(&keepalive.to_socket2())?;
        }
        #[cfg(any(target_os = "android", target_os = "linux"))]
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

impl Default for TcpConnector {
    /// The same as [`TcpConnector::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Service<T> for TcpConnector
where
    T: ToSocketAddrs + Send + 'static,
{
    type Response = TcpStream;
    type Error = io::Error;
    type Future = TcpConnecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: T) -> Self::Future {
        let options = *self;
        TcpConnecting::new(async move {
            let stream = TcpStream::connect(target).await?;
            options.configure(&stream)?;
            Ok(stream)
        })
    }
}

/// TCP keepalive settings for [`TcpConnector::keepalive`].
///
/// After the connection has been idle for `idle`, the kernel sends a probe,
/// then another every `interval`; after `retries` unanswered probes it drops
/// the connection. Unset values are the system's (Linux: 75 s interval, 9
/// probes). Some systems count in whole seconds.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_redial::connect::Keepalive;
///
/// let keepalive = Keepalive::new(Duration::from_secs(10))
///     .interval(Duration::from_secs(5))
///     .retries(3);
/// assert_eq!(keepalive, Keepalive::DETECT_DEAD_PEERS);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    idle: Duration,
    interval: Option<Duration>,
    retries: Option<u32>,
}

impl Keepalive {
    /// The keepalive of [`TcpConnector::detect_dead_peers`]: probes after
    /// 10 s idle, every 5 s, 3 of them.
    pub const DETECT_DEAD_PEERS: Self = Self::new(Duration::from_secs(10))
        .interval(Duration::from_secs(5))
        .retries(3);

    /// Probes after the connection has been idle for `idle`
    /// (`TCP_KEEPIDLE`), with the system's interval and count.
    pub const fn new(idle: Duration) -> Self {
        Self {
            idle,
            interval: None,
            retries: None,
        }
    }

    /// Sets the time between probes (`TCP_KEEPINTVL`). Ignored where the
    /// system has no such setting.
    pub const fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Sets how many unanswered probes drop the connection (`TCP_KEEPCNT`).
    /// Ignored where the system has no such setting (Windows among them).
    pub const fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    fn to_socket2(self) -> socket2::TcpKeepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(self.idle);
        // The systems where socket2 has each setting; see its `TcpKeepalive`.
        #[cfg(any(
            target_os = "android",
            target_os = "dragonfly",
            target_os = "freebsd",
            target_os = "fuchsia",
            target_os = "illumos",
            target_os = "ios",
            target_os = "linux",
            target_os = "macos",
            target_os = "netbsd",
            target_os = "tvos",
            target_os = "watchos",
            target_os = "windows",
        ))]
        let keepalive = match self.interval {
            Some(interval) => keepalive.with_interval(interval),
            None => keepalive,
        };
        #[cfg(any(
            target_os = "android",
            target_os = "dragonfly",
            target_os = "freebsd",
            target_os = "fuchsia",
            target_os = "illumos",
            target_os = "ios",
            target_os = "linux",
            target_os = "macos",
            target_os = "netbsd",
            target_os = "tvos",
            target_os = "watchos",
        ))]
        let keepalive = match self.retries {
            Some(retries) => keepalive.with_retries(retries),
            None => keepalive,
        };
        keepalive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// Each dial calls a fresh clone of the handshake: state kept in the
    /// closure starts over, state behind an `Arc` carries on.
    #[tokio::test]
    async fn each_dial_calls_a_fresh_clone_of_the_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move {
            let mut kept = Vec::new();
            for _ in 0..2 {
                kept.push(listener.accept().await.unwrap());
            }
            kept
        });
        let shared = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut own = 0;
        let handshake = {
            let shared = shared.clone();
            move |_io: tokio::net::TcpStream| {
                own += 1;
                let total = shared.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let seen = (own, total);
                async move { Ok::<_, BoxError>(seen) }
            }
        };
        // Both dials on the one factory.
        let mut make = Handshake::new(TcpConnector::new(), handshake);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let dial = async {
                ServiceExt::<std::net::SocketAddr>::ready(&mut make)
                    .await?
                    .call(addr)
                    .await
            };
            seen.push(
                tokio::time::timeout(Duration::from_secs(10), dial)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let (first, second) = (seen[0], seen[1]);
        assert_eq!((first, second), ((1, 1), (1, 2)));
        drop(accepting);
    }
}
