//! Redis: the `redis` crate's multiplexed connection as a connection service.
//!
//! [`MakeRedis`] is a connection factory for
//! [`ReconnectLayer`](crate::ReconnectLayer): given a redis URL or a
//! [`ConnectionInfo`], it dials and hands back a [`RedisConnection`], a tower
//! service over one [`MultiplexedConnection`] that takes a [`Cmd`] (or a
//! [`Pipeline`]) and answers with a [`Value`]. The layer turns it into a
//! [`RedisClient`] that stays connected.
//!
//! Needs the `redis` feature.
//!
//! # Example
//!
//! ```no_run
//! use redis::Cmd;
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_redial::redis::{MakeRedis, RedisClient};
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let client: RedisClient = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(MakeRedis::new())
//!     .multiplexed("redis://127.0.0.1:6379/");
//!
//! // Clone the client into each task; nothing is dialed until the first command.
//! let visits = client.clone().oneshot(Cmd::incr("visits", 1)).await?;
//! let visits: i64 = redis::from_redis_value(visits)?;
//! println!("visit number {visits}");
//! # Ok(())
//! # }
//! ```
//!
//! `examples/redis.rs` runs this against a `redis-server` that it kills and
//! restarts: `cargo run --example redis --features redis`.
//!
//! # What happens to a command when the server goes away
//!
//! Each [`RedisConnection`] watches its own socket. The moment the socket
//! reports end-of-file or an error, or redis-rs's connection task ends, the
//! connection is known to be closed:
//!
//! - **Commands that were sent**, and are still awaiting their replies, fail
//!   at once with the transport error (an [`io::Error`], see
//!   [Errors](#errors)). They may or may not have run on the server, so they
//!   are not sent again (at most once), unless you opt in with
//!   [`ReconnectLayer::resend_if`](crate::ReconnectLayer::resend_if).
//! - **Commands issued afterwards** are not written to the dead socket:
//!   `poll_ready` fails, the client drops the connection and redials, and
//!   the commands wait in the client's queue, to be sent on the new
//!   connection. Past the policy's wait limit they fail fast with
//!   [`Unavailable`](crate::error::Unavailable) instead, and never run.
//! - **A command that reaches a connection already known to be closed** (in
//!   the instant between `poll_ready` and the first poll of its response
//!   future) comes back as [`NotSent`], with the command inside, and the
//!   client sends it on the next connection.
//!
//! One case cannot be told apart: commands that redis-rs had queued inside
//! its connection task, but not yet written, when the socket died. redis-rs
//! reports them exactly like commands that were written (a `BrokenPipe`), so
//! they too count as possibly sent, and are not re-sent.
//!
//! A command never waits for its reply on a connection known to be closed.
//! redis-rs alone does not promise this: a command handed to its connection
//! task in the very instant the task ends can be neither written nor
//! failed, and waits out the response timeout (tokio's channel keeps a value
//! sent with a permit taken just before its receiver was dropped; tokio
//! issue 7714). Here such a command fails with the transport error as soon
//! as the connection is known to be closed, like the others in flight.
//!
//! A graceful `SHUTDOWN` looks the same from here as a `kill -9`: the
//! server stops reading, exits, and the kernel closes its sockets. It does
//! not answer the commands queued behind the `SHUTDOWN`, and replies it had
//! not yet written are lost, so the commands in flight fail as possibly sent
//! and the rest wait, or are handed back and re-sent, exactly as above.
//!
//! # A server that is up but not serving
//!
//! A `redis-server` restarted with persistence (an append-only file or an
//! RDB snapshot) accepts connections at once, but until it has loaded its
//! dataset it refuses almost every command with `-LOADING`, without running
//! it. Handing that to the caller would fail a command that merely came too
//! early, so:
//!
//! - **A dial** ends with a `PING`. A server that refuses it with
//!   `-LOADING` fails the dial with [`NotServing`]: the client backs off and
//!   dials again, as it does while the port is closed, and commands wait in
//!   its queue, within the policy's wait limit. Past it they fail fast with
//!   [`Unavailable`](crate::error::Unavailable), whose `source()` is the
//!   `NotServing`, and never run. The `PING` costs one round trip per dial.
//! - **A command refused with `-LOADING`** on an open connection (the server
//!   reloads, as `DEBUG RELOAD` makes it, or a replica loads its master's
//!   dataset) comes back as [`NotSent`], holding the command, and the
//!   connection is retired: its `poll_ready` fails with `NotServing`, the
//!   client redials, and the command is re-sent on the next connection,
//!   within the policy's re-send attempts and budget. Commands already
//!   awaiting their replies on the retired connection still get them.
//!
//! A replica cut off from its master, with `replica-serve-stale-data no`,
//! refuses commands (`PING` too) with `-MASTERDOWN` until its link is back,
//! and is handled the same way.
//!
//! # Replies that mean "not run"
//!
//! redis-server refuses a command with each of these replies before it
//! runs it (in `processCommand`, or in cluster routing, before `call`).
//!
//! | reply | what the client does | why |
//! |---|---|---|
//! | `-LOADING` | a dial so answered fails with [`NotServing`], and is retried by the backoff; a command so answered is re-sent on the next connection, and its connection retired | every command is refused until the dataset is loaded, which ends by itself; the next connection that passes its `PING` finds it loaded |
//! | `-MASTERDOWN` | the same as `-LOADING` | the same, until the replica's link to its master is back |
//! | `-BUSY` | passed to the caller as a [`::redis::RedisError`]; the connection stays | a script or function has run past `busy-reply-threshold`. It may run forever, and only a command sent on a connection (`SCRIPT KILL`, `FUNCTION KILL`, `SHUTDOWN NOSAVE`) ends it: holding commands back would hold those back too |
//! | `-READONLY` | passed to the caller; the connection stays | the server is a replica, and every connection to it gets the same answer: a re-send would loop. After a failover behind a DNS name, a new dial may reach the new primary: to redial on `-READONLY`, give the policy a [`Classifier`](crate::classify::Classifier) that calls it dead (below); the command is still not re-sent |
//! | `-NOREPLICAS` | passed to the caller; the connection stays | writes are refused until enough replicas keep up (`min-replicas-to-write`); reads are served, and every connection gets the same answer |
//! | `-TRYAGAIN`, `-CLUSTERDOWN`, `-MOVED`, `-ASK`, `-CROSSSLOT` | passed to the caller; the connection stays | cluster routing: this client talks to one node, and redialing it changes nothing; use redis-rs's cluster client |
//! | `-OOM`, `-MISCONF`, `-NOAUTH`, `-NOPERM` | passed to the caller; the connection stays | the server's settings or state refuse the command, on every connection alike |
//!
//! The replies are told apart by redis-rs's [`ServerErrorKind`], never by
//! their text.
//!
//! A pipeline is handed back as [`NotSent`] only when the server refused
//! every one of its commands with `-LOADING` or `-MASTERDOWN` (a
//! transaction's too: its `EXEC` is then aborted). If it refused only some,
//! the others ran: the pipeline's error reaches the caller, and the
//! connection is still retired.
//!
//! To redial on `-READONLY`:
//!
//! ```
//! use redis::{ErrorKind, ServerErrorKind};
//! use tower_redial::classify::Classifier;
//! use tower_redial::redis::redis_error;
//! use tower_redial::{classify, ReconnectPolicy};
//!
//! let classifier = Classifier::new(|error| {
//!     classify::is_transport_error(error)
//!         || redis_error(error)
//!             .is_some_and(|e| e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly))
//! });
//! let policy = ReconnectPolicy::builder().classifier(classifier).build()?;
//! # Ok::<_, tower_redial::error::InvalidPolicy>(())
//! ```
//!
//! # Compared with redis-rs's `ConnectionManager`
//!
//! What each does when its server is killed with `kill -9` and restarted on
//! the same port, as observed by the test
//! `side_by_side_with_connection_manager` in `tests/interop/tests/redis/client.rs` (the same
//! script run once against each; the same in every run). Both speak RESP2
//! with a 10 s response timeout; `ConnectionManager` has its default
//! reconnect settings (6 retries, 100 ms × 2 with jitter), `RedisClient` a
//! 1 s wait limit and a backoff from 10 ms, capped at 100 ms. In each outage
//! the script issues 8 `INCR`s at once.
//!
//! | when the server dies… | `RedisClient` | `ConnectionManager` |
//! |---|---|---|
//! | the command in flight (an `INCR` the server held, unrun) | fails with `broken pipe`; not re-sent; the books show it never ran | the same |
//! | commands issued in a 0.3 s outage, after the in-flight command failed | all wait and succeed, 0.36 s after they were issued | all wait and succeed, after 0.54 s: the failed in-flight command had started its reconnect |
//! | commands issued in a 0.3 s outage of an idle connection | all wait and succeed, after 0.36 s | the first one or two to reach the dead connection fail at once with `broken pipe`; the rest wait and succeed, after 0.54 s |
//! | commands issued in a 2.5 s outage of an idle connection, past our 1 s wait limit | all fail fast with [`Unavailable`](crate::error::Unavailable) after 1.0 s, and never run | the first one or two fail at once, as above; the rest wait and succeed, after 4.3 s: its backoff found the server back only then |
//!
//! In short: `ConnectionManager` learns that its connection died only when a
//! command fails on it, so after a quiet spell it is one of your commands
//! that finds out, and fails. It has no wait limit: commands wait for as long
//! as its reconnect retries last (6 retries by default, from 100 ms and
//! doubling; longer when each dial times out). `RedisClient` learns it from
//! the socket itself, so it writes no command to a connection it knows is
//! dead, and no command waits longer than the wait limit.
//!
//! # Errors
//!
//! | error | when | what to do with it |
//! |---|---|---|
//! | [`::redis::RedisError`] | the server answered with an error (`WRONGTYPE`, `BUSY`, `READONLY`, …), or the reply could not be parsed | the command reached the server; the connection stays |
//! | [`io::Error`] with the `RedisError` inside ([`get_ref`](io::Error::get_ref)) | the transport failed: reset, closed, refused, timed out | the command may have run; the connection is redialed |
//! | [`NotSent`], [`Unavailable`](crate::error::Unavailable), [`Closed`](crate::error::Closed) | see [`error`](crate::error) | |
//! | [`NotServing`] | a dial's error (so the `source()` of [`Unavailable`](crate::error::Unavailable)), or the `source()` of a [`NotSent`] whose re-sends are spent: the server is up but not serving (`LOADING`, `MASTERDOWN`) | nothing ran; see [Replies that mean "not run"](#replies-that-mean-not-run) |
//!
//! Transport failures are turned into an [`io::Error`] of the matching kind
//! (`BrokenPipe`, `ConnectionReset`, `TimedOut`, …) so that the default
//! [`Classifier`](crate::classify::Classifier) knows them, by type, as "the connection
//! is dead". [`redis_error`] finds the [`::redis::RedisError`] in either form.
//!
//! # Timeouts
//!
//! - Each dial is bounded by the policy's
//!   [`connect_timeout`](crate::ReconnectPolicyBuilder::connect_timeout); the
//!   connection timeout of the [`AsyncConnectionConfig`] is not used.
//! - Each command is bounded by the config's response timeout: 500 ms in
//!   redis-rs's default config, which [`MakeRedis::new`] uses. A command
//!   that times out fails with a `TimedOut` [`io::Error`], which the default
//!   classifier takes for a dead connection, so the connection is redialed.
//!   For blocking commands (`BLPOP` and the like), raise or remove it with
//!   [`MakeRedis::with_config`].
//!
//! # Targets
//!
//! The target is anything redis-rs turns into a [`ConnectionInfo`]: a URL
//! (`&str`, `String`) or a `ConnectionInfo`. It is parsed and resolved
//! afresh on every dial; to catch a malformed URL up front, parse it
//! yourself with [`IntoConnectionInfo`] and pass the `ConnectionInfo`. A
//! URL's password is never printed: the client's logs mask it, and
//! `ConnectionInfo`'s own `Debug` form hides it.
//!
//! TCP (`redis://`) and Unix-socket (`redis+unix://`) addresses are dialed
//! here, with the address's TCP settings, and watched as described above.
//! Host names are resolved with the system resolver; a resolver set in the
//! `AsyncConnectionConfig` is not used. Any other address (TLS, which needs
//! one of redis-rs's TLS features) is dialed by redis-rs itself; such a
//! connection cannot be watched, so it is found dead only when a command
//! fails on it with a transport error.
//!
//! [`MultiplexedConnection`]: ::redis::aio::MultiplexedConnection
//! [`Pipeline`]: ::redis::Pipeline
//! [`ServerErrorKind`]: ::redis::ServerErrorKind
//! [`NotSent`]: crate::error::NotSent

use std::fmt;
use std::io;
use std::task::{Context, Poll};

use ::redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value,
};
use tokio::net::TcpStream;
use tower::Service;

use crate::boxed::boxed_future;
use crate::{BoxError, Client};

mod connection;
mod errors;
mod manager;
mod refusal;
mod request;

use errors::into_box;

pub use connection::{RedisConnection, ResponseFuture};
pub use errors::{client_error, redis_error};
pub use manager::RedisManager;
pub use refusal::NotServing;
pub use request::RedisRequest;

/// A reconnecting redis client, as made by
/// [`ReconnectLayer`](crate::ReconnectLayer) over [`MakeRedis`]: sends a
/// [`Cmd`], answers with a [`Value`].
///
/// For pipelines, make a `Client<Pipeline, Value>` the same way.
pub type RedisClient = Client<Cmd, Value>;

/// A connection factory: dials a redis server and makes a
/// [`RedisConnection`].
///
/// As a `Service<T>`, where `T` is a URL or a [`ConnectionInfo`] (anything
/// [`IntoConnectionInfo`]), it connects, runs redis-rs's handshake (`AUTH`,
/// `SELECT`, `HELLO` as the target asks), spawns the connection's task, and
/// sends a `PING`: a server that is up but not serving yet (loading its
/// dataset, say) fails the dial with [`NotServing`]. See the
/// [module docs](self) for how to use it and what it does.
///
/// # Default
///
/// redis-rs's default [`AsyncConnectionConfig`]: a 500 ms response timeout,
/// no concurrency limit.
#[derive(Clone, Default)]
pub struct MakeRedis {
    config: AsyncConnectionConfig,
}

impl MakeRedis {
    /// A factory with redis-rs's default connection config.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory whose connections use `config`: its response timeout,
    /// pipeline buffer size, concurrency limit and push sender. Its
    /// connection timeout and DNS resolver are not used (see the
    /// [module docs](self#timeouts)).
    pub fn with_config(config: AsyncConnectionConfig) -> Self {
        Self { config }
    }
}

impl fmt::Debug for MakeRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeRedis")
            .field("config", &self.config)
            .finish()
    }
}

impl<T> Service<T> for MakeRedis
where
    T: IntoConnectionInfo,
{
    type Response = RedisConnection;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: T) -> Self::Future {
        let info = target.into_connection_info();
        let config = self.config.clone();
        ConnectFuture::new(async move {
            let info = info.map_err(into_box)?;
            connect(info, config).await
        })
    }
}

boxed_future! {
    /// The future of a [`MakeRedis`] dial.
    pub struct ConnectFuture => Result<RedisConnection, BoxError>;
}

/// Dials `info`, and checks that the server serves commands.
async fn connect(
    info: ConnectionInfo,
    config: AsyncConnectionConfig,
) -> Result<RedisConnection, BoxError> {
    let connection = dial(info, config).await?;
    connection.check_serving().await?;
    Ok(connection)
}

/// Dials `info`: TCP and Unix sockets here, watched; anything else through
/// redis-rs.
async fn dial(
    info: ConnectionInfo,
    config: AsyncConnectionConfig,
) -> Result<RedisConnection, BoxError> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            apply_tcp_settings(&stream, info.tcp_settings())?;
            RedisConnection::handshake(stream, &info, config).await
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await?;
            RedisConnection::handshake(stream, &info, config).await
        }
        _ => {
            // Our connect timeout bounds the dial.
            let config = config.set_connection_timeout(None);
            let connection = ::redis::Client::open(info)
                .map_err(into_box)?
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(into_box)?;
            Ok(RedisConnection::unwatched(connection))
        }
    }
}

/// Applies the address's TCP settings, as redis-rs does.
fn apply_tcp_settings(
    stream: &TcpStream,
    settings: &::redis::io::tcp::TcpSettings,
) -> io::Result<()> {
    use ::redis::io::tcp::socket2::SockRef;

    stream.set_nodelay(settings.nodelay())?;
    let socket = SockRef::from(stream);
    if let Some(keepalive) = settings.keepalive() {
        socket.set_tcp_keepalive(keepalive)?;
    }
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    socket.set_tcp_user_timeout(settings.user_timeout())?;
    Ok(())
}
