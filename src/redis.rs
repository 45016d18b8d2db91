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
//!   [`Unavailable`](crate::Unavailable) instead, and never run.
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
//! # Compared with redis-rs's `ConnectionManager`
//!
//! What each does when its server is killed with `kill -9` and restarted on
//! the same port, as observed by the test
//! `side_by_side_with_connection_manager` in `tests/redis.rs` (the same
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
//! | commands issued in a 2.5 s outage of an idle connection, past our 1 s wait limit | all fail fast with [`Unavailable`](crate::Unavailable) after 1.0 s, and never run | the first one or two fail at once, as above; the rest wait and succeed, after 4.3 s: its backoff found the server back only then |
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
//! | [`::redis::RedisError`] | the server answered with an error (`WRONGTYPE`, `LOADING`, …), or the reply could not be parsed | the command reached the server; the connection stays |
//! | [`io::Error`] with the `RedisError` inside ([`get_ref`](io::Error::get_ref)) | the transport failed: reset, closed, refused, timed out | the command may have run; the connection is redialed |
//! | [`NotSent`], [`Unavailable`](crate::Unavailable), [`Closed`](crate::Closed) | see [`error`](crate::error) | |
//!
//! Transport failures are turned into an [`io::Error`] of the matching kind
//! (`BrokenPipe`, `ConnectionReset`, `TimedOut`, …) so that the default
//! [`Classifier`](crate::Classifier) knows them, by type, as "the connection
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

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline,
    RedisError, Value,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Service;

use crate::connect::CloseWatch;
use crate::error::NotSent;
use crate::{BoxError, Client};

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
/// `SELECT`, `HELLO` as the target asks) and spawns the connection's task.
/// See the [module docs](self) for how to use it and what it does.
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
        ConnectFuture(Box::pin(async move {
            let info = info.map_err(into_box)?;
            connect(info, config).await
        }))
    }
}

/// One multiplexed redis connection as a tower service.
///
/// Takes a [`Cmd`] or a [`Pipeline`]; answers with the reply [`Value`] (a
/// pipeline's replies come as an array). Commands from all clones share the
/// one connection, and several may be in flight at once.
///
/// # Readiness
///
/// `poll_ready` is ready at once while the connection is open, and fails
/// once it is known to be closed: its socket reported end-of-file or an
/// error, or its task ended. A command whose response future is first
/// polled once the connection is known to be closed is handed back unsent,
/// as a [`NotSent`] holding the command; one still awaiting its reply when
/// the connection closes fails at once with the transport error. See the
/// [module docs](self#what-happens-to-a-command-when-the-server-goes-away).
///
/// # Errors
///
/// A server error reply is a [`::redis::RedisError`]; a transport failure is
/// an [`io::Error`] with the `RedisError` inside. See
/// [Errors](self#errors).
///
/// # Clone
///
/// Clones share the connection. Its task ends when the last clone, and the
/// last command in flight, is dropped.
pub struct RedisConnection {
    connection: MultiplexedConnection,
    /// `None` for a connection dialed by redis-rs itself, which cannot be
    /// watched.
    watch: Option<Arc<Watch>>,
    /// Closed once the socket reports end-of-file or an error, or the
    /// connection's task ends. Only the connection as dialed wakes its
    /// poller on close; clones just look.
    closed: Option<CloseWatch>,
}

impl Clone for RedisConnection {
    fn clone(&self) -> Self {
        Self {
            connection: self.connection.clone(),
            watch: self.watch.clone(),
            closed: self.closed.as_ref().map(CloseWatch::for_clone),
        }
    }
}

/// A watched connection's task.
struct Watch {
    /// redis-rs's connection task, aborted when the last clone is dropped.
    task: JoinHandle<()>,
    /// Tells when the connection closes; the commands awaiting replies
    /// watch it.
    closer: Closer,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tells, once, that a watched connection has closed, and with what kind of
/// error: to the client, through the [`CloseWatch`] that `poll_ready`
/// polls, and to every command awaiting its reply.
#[derive(Clone)]
struct Closer {
    /// A copy of the connection's `CloseWatch`, which only closes it.
    client: CloseWatch,
    replies: watch::Sender<Option<io::ErrorKind>>,
}

impl Closer {
    /// A closer, and the `CloseWatch` that the connection as dialed polls.
    fn new() -> (Self, CloseWatch) {
        let closed = CloseWatch::new();
        let (replies, _) = watch::channel(None);
        let closer = Self {
            client: closed.for_clone(),
            replies,
        };
        (closer, closed)
    }

    /// Marks the connection closed with `kind`. Only the first call counts.
    fn close(&self, kind: io::ErrorKind) {
        // The commands first: whoever sees the client's watch closed then
        // finds the commands' closed too.
        self.replies.send_if_modified(|closed| {
            let first = closed.is_none();
            if first {
                *closed = Some(kind);
            }
            first
        });
        self.client.close(kind);
    }

    fn subscribe(&self) -> watch::Receiver<Option<io::ErrorKind>> {
        self.replies.subscribe()
    }
}

impl RedisConnection {
    /// Runs redis-rs's handshake over `stream`, and spawns the connection's
    /// task, watching the socket.
    async fn handshake<S>(
        stream: S,
        info: &ConnectionInfo,
        config: AsyncConnectionConfig,
    ) -> Result<Self, BoxError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (closer, closed) = Closer::new();
        let stream = Watched {
            io: stream,
            closer: closer.clone(),
        };
        let (connection, task) =
            MultiplexedConnection::new_with_config(info.redis_settings(), stream, config)
                .await
                .map_err(into_box)?;
        let ended = closer.clone();
        let task = tokio::spawn(async move {
            task.await;
            ended.close(io::ErrorKind::NotConnected);
        });
        Ok(Self {
            connection,
            watch: Some(Arc::new(Watch { task, closer })),
            closed: Some(closed),
        })
    }

    /// Whether the connection is known to be closed: its socket reported
    /// end-of-file or an error, or its task ended.
    ///
    /// Always `false` for a connection that cannot be watched (see
    /// [Targets](self#targets)).
    pub fn is_closed(&self) -> bool {
        self.closed().is_some()
    }

    /// The error that closed the connection, if it is known to be closed.
    fn closed(&self) -> Option<io::Error> {
        let kind = self.closed.as_ref()?.closed()?.kind();
        Some(closed_error(kind))
    }

    /// Sends `request`: hands it back unsent if the connection is known to
    /// be closed when the response future is first polled, and fails it at
    /// once if the connection closes before its reply comes.
    fn send<R: Query>(&mut self, request: R) -> ResponseFuture {
        let mut connection = self.connection.clone();
        let Some(watch) = self.watch.clone() else {
            // Dialed by redis-rs: there is no close to watch.
            return ResponseFuture(Box::pin(async move {
                request.query(&mut connection).await.map_err(into_box)
            }));
        };
        ResponseFuture(Box::pin(async move {
            let mut ended = watch.closer.subscribe();
            // Looked at just before the command goes to redis-rs: a command
            // that has not gone there has not reached the socket.
            let closed = *ended.borrow();
            if let Some(kind) = closed {
                let error = NotSent::with_request(request, closed_error(kind));
                return Err(error.into());
            }
            let result = reply_or_close(request.query(&mut connection), &mut ended).await;
            // Keeps the connection's task alive while the reply is awaited.
            drop(watch);
            result
        }))
    }
}

/// The reply, or, if the connection closes before it comes, a transport
/// error of the close's kind: the command may have been written, so it may
/// have run.
async fn reply_or_close<F>(
    reply: F,
    ended: &mut watch::Receiver<Option<io::ErrorKind>>,
) -> Result<Value, BoxError>
where
    F: Future<Output = Result<Value, RedisError>>,
{
    let mut reply = pin!(reply);
    let mut closed = pin!(ended.wait_for(Option::is_some));
    std::future::poll_fn(|cx| {
        // The close first. redis-rs hands over each reply it reads before
        // it reads on, and the socket is seen to close only by reading on,
        // or by a failed write, after which redis-rs reads no more: a reply
        // handed over before the close shows in the look below.
        let closed = closed.as_mut().poll(cx).map(|seen| {
            seen.ok()
                .and_then(|kind| *kind)
                .unwrap_or(io::ErrorKind::NotConnected)
        });
        let look = match closed {
            // The look that decides is made outside tokio's budget, which
            // could otherwise make a reply that came look pending.
            Poll::Ready(_) => pin!(unbudgeted(reply.as_mut())).poll(cx),
            Poll::Pending => reply.as_mut().poll(cx),
        };
        match look {
            Poll::Ready(result) => Poll::Ready(result.map_err(into_box)),
            Poll::Pending => closed.map(|kind| Err(closed_before_reply(kind))),
        }
    })
    .await
}

/// `future`, polled outside tokio's cooperative budget.
// `tokio::task::coop::unconstrained` needs tokio 1.44; this crate allows
// 1.40, where the function is `tokio::task::unconstrained`.
#[allow(deprecated)]
fn unbudgeted<F: Future>(future: F) -> impl Future<Output = F::Output> {
    tokio::task::unconstrained(future)
}

/// The error of a command called on a closed connection.
fn closed_error(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "redis connection closed")
}

/// The error of a command whose connection closed before its reply came: a
/// transport failure, as redis-rs reports the others.
fn closed_before_reply(kind: io::ErrorKind) -> BoxError {
    into_box(RedisError::from(io::Error::new(
        kind,
        "redis connection closed before the reply came",
    )))
}

/// A request that a [`RedisConnection`] sends: [`Cmd`] and [`Pipeline`],
/// each with its own `query_async`.
trait Query: Send + 'static {
    fn query(
        self,
        connection: &mut MultiplexedConnection,
    ) -> impl Future<Output = Result<Value, RedisError>> + Send + '_;
}

impl Query for Cmd {
    async fn query(self, connection: &mut MultiplexedConnection) -> Result<Value, RedisError> {
        self.query_async::<Value>(connection).await
    }
}

impl Query for Pipeline {
    async fn query(self, connection: &mut MultiplexedConnection) -> Result<Value, RedisError> {
        self.query_async::<Value>(connection).await
    }
}

impl Service<Cmd> for RedisConnection {
    type Response = Value;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Some(closed) = &self.closed {
            if closed.poll_closed(cx).is_ready() {
                let error = self.closed().expect("closed");
                return Poll::Ready(Err(error.into()));
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, cmd: Cmd) -> Self::Future {
        self.send(cmd)
    }
}

impl Service<Pipeline> for RedisConnection {
    type Response = Value;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        <Self as Service<Cmd>>::poll_ready(self, cx)
    }

    fn call(&mut self, pipeline: Pipeline) -> Self::Future {
        self.send(pipeline)
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("connection", &self.connection)
            .field("watched", &self.watch.is_some())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The future of a [`MakeRedis`] dial.
pub struct ConnectFuture(Pin<Box<dyn Future<Output = Result<RedisConnection, BoxError>> + Send>>);

impl Future for ConnectFuture {
    type Output = Result<RedisConnection, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ConnectFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectFuture").finish_non_exhaustive()
    }
}

/// The response future of a [`RedisConnection`].
pub struct ResponseFuture(Pin<Box<dyn Future<Output = Result<Value, BoxError>> + Send>>);

impl Future for ResponseFuture {
    type Output = Result<Value, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Dials `info`: TCP and Unix sockets here, watched; anything else through
/// redis-rs.
async fn connect(
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
            Ok(RedisConnection {
                connection,
                watch: None,
                closed: None,
            })
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

/// A socket that records the first end-of-file or error it reports.
struct Watched<S> {
    io: S,
    closer: Closer,
}

impl<S> Watched<S> {
    fn check<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(error) = &result {
            self.closer.close(error.kind());
        }
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        let before = buf.filled().len();
        let result = std::task::ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        if result.is_ok() && room > 0 && buf.filled().len() == before {
            // End of file: the server closed the connection.
            self.closer.close(io::ErrorKind::UnexpectedEof);
        }
        Poll::Ready(self.check(result))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        Poll::Ready(self.check(result))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = std::task::ready!(Pin::new(&mut self.io).poll_flush(cx));
        Poll::Ready(self.check(result))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = std::task::ready!(Pin::new(&mut self.io).poll_shutdown(cx));
        Poll::Ready(self.check(result))
    }
}

/// A redis error as a [`BoxError`]: transport failures become an
/// [`io::Error`] of the matching kind, with the redis error inside.
fn into_box(error: RedisError) -> BoxError {
    match transport_kind(&error) {
        Some(kind) => Box::new(io::Error::new(kind, error)),
        None => Box::new(error),
    }
}

/// The IO error kind of a transport failure, or `None` for anything else.
fn transport_kind(error: &RedisError) -> Option<io::ErrorKind> {
    if !error.is_io_error() {
        return None;
    }
    // redis-rs keeps the IO error behind an `Arc` in its `source()`.
    let kind = crate::classify::chain(error).find_map(|e| {
        e.downcast_ref::<io::Error>()
            .or_else(|| {
                e.downcast_ref::<Arc<dyn Error + Send + Sync>>()
                    .and_then(|inner| inner.downcast_ref::<io::Error>())
            })
            .map(io::Error::kind)
    });
    Some(kind.unwrap_or(if error.is_timeout() {
        io::ErrorKind::TimedOut
    } else if error.is_connection_refusal() {
        io::ErrorKind::ConnectionRefused
    } else if error.is_connection_dropped() {
        io::ErrorKind::ConnectionAborted
    } else {
        io::ErrorKind::Other
    }))
}

/// The [`::redis::RedisError`] in `error`, whether it is the error itself,
/// sits in its `source()` chain, or is inside an [`io::Error`] (as
/// transport failures are; see [Errors](self#errors)).
///
/// # Example
///
/// ```
/// use std::io;
/// use tower_redial::redis::redis_error;
/// use tower_redial::BoxError;
///
/// let reset = redis::RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset));
/// let error: BoxError = Box::new(io::Error::new(io::ErrorKind::ConnectionReset, reset));
/// assert!(redis_error(&*error).is_some_and(|e| e.is_connection_dropped()));
///
/// let other: BoxError = "no redis here".into();
/// assert!(redis_error(&*other).is_none());
/// ```
pub fn redis_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a RedisError> {
    crate::classify::chain(error).find_map(|e| {
        e.downcast_ref::<RedisError>().or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<RedisError>())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::is_transport_error;

    /// Transport failures become IO errors of the precise kind, which the
    /// default classifier calls dead; the redis error stays reachable.
    #[test]
    fn transport_failures_become_io_errors() {
        for kind in [
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionRefused,
        ] {
            let error = into_box(RedisError::from(io::Error::from(kind)));
            let io = error.downcast_ref::<io::Error>().expect("an io::Error");
            assert_eq!(io.kind(), kind);
            assert!(is_transport_error(&*error), "{kind:?}");
            assert!(redis_error(&*error).is_some_and(RedisError::is_io_error));
        }
    }

    /// A server's error reply stays a `RedisError`, which the default
    /// classifier does not take for a dead connection.
    #[test]
    fn server_errors_stay_redis_errors() {
        let reply = ::redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n")
            .expect("a valid reply")
            .extract_error()
            .expect_err("an error reply");
        let error = into_box(reply);
        assert!(error.is::<RedisError>());
        assert!(!is_transport_error(&*error));
        assert_eq!(
            redis_error(&*error).and_then(RedisError::code),
            Some("WRONGTYPE")
        );
    }

    /// A socket that reports end-of-file marks the connection closed, for
    /// the client and for the commands awaiting replies alike.
    #[tokio::test]
    async fn end_of_file_closes_the_watch() {
        use tokio::io::AsyncReadExt;

        let (client, server) = tokio::io::duplex(64);
        let (closer, closed) = Closer::new();
        let replies = closer.subscribe();
        let mut watched = Watched { io: client, closer };
        drop(server);
        let mut buf = [0; 8];
        assert_eq!(watched.read(&mut buf).await.unwrap(), 0);
        assert_eq!(
            closed.closed().map(|e| e.kind()),
            Some(io::ErrorKind::UnexpectedEof)
        );
        assert_eq!(*replies.borrow(), Some(io::ErrorKind::UnexpectedEof));
    }

    const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

    /// A watched connection over an in-memory socket, and the socket's far
    /// end. Its handshake sends nothing (no password, database 0, no client
    /// name), and it has no response timeout: only a reply or a close ends
    /// a command's wait.
    async fn connection_over_duplex() -> (RedisConnection, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(4096);
        let settings = ::redis::RedisConnectionInfo::default().set_skip_set_lib_name();
        let info = "redis://127.0.0.1/"
            .into_connection_info()
            .expect("a valid URL")
            .set_redis_settings(settings);
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let connection = RedisConnection::handshake(client, &info, config)
            .await
            .expect("a handshake with nothing to say");
        (connection, server)
    }

    fn closer(connection: &RedisConnection) -> &Closer {
        &connection.watch.as_ref().expect("watched").closer
    }

    /// Calls `PING` on `connection`, and reads it off the wire at `server`:
    /// the command is written and awaits its reply.
    async fn ping_written(
        connection: &mut RedisConnection,
        server: &mut tokio::io::DuplexStream,
    ) -> tokio_test::task::Spawn<ResponseFuture> {
        use tokio::io::AsyncReadExt;

        let call = Service::<Cmd>::call(connection, ::redis::cmd("PING"));
        let mut reply = tokio_test::task::spawn(call);
        tokio_test::assert_pending!(reply.poll());
        let mut written = [0; PING.len()];
        server.read_exact(&mut written).await.unwrap();
        assert_eq!(written, PING);
        reply
    }

    /// The hang of project issue 11: a command that redis-rs holds, neither
    /// answered nor failed, on a connection known to be closed waited out
    /// the response timeout. (redis-rs can lose a command so: one sent into
    /// its task's channel as the task ends stays there, tokio issue 7714.)
    /// Here the connection closes under redis-rs, whose socket stays open:
    /// the written command fails at once, with the close's kind, as a
    /// transport error (it may have run), not as `NotSent`.
    #[tokio::test]
    async fn a_command_awaiting_its_reply_fails_when_the_connection_closes() {
        let (mut connection, mut server) = connection_over_duplex().await;
        let mut reply = ping_written(&mut connection, &mut server).await;
        tokio_test::assert_pending!(reply.poll(), "no reply and no close yet");

        closer(&connection).close(io::ErrorKind::ConnectionReset);
        assert!(reply.is_woken());
        let error = tokio_test::assert_ready_err!(reply.poll());
        assert!(!NotSent::is_in(&*error), "{error:?}");
        let kind = error.downcast_ref::<io::Error>().map(io::Error::kind);
        assert_eq!(kind, Some(io::ErrorKind::ConnectionReset), "{error:?}");
        assert!(redis_error(&*error).is_some_and(RedisError::is_io_error));
        assert!(is_transport_error(&*error));
    }

    /// A reply that redis-rs handed over before the connection closed is
    /// the command's answer, even when the close is seen first.
    #[tokio::test]
    async fn a_reply_that_came_before_the_close_is_kept() {
        use tokio::io::AsyncWriteExt;

        let (mut connection, mut server) = connection_over_duplex().await;
        let mut reply = ping_written(&mut connection, &mut server).await;
        server.write_all(b"+PONG\r\n").await.unwrap();
        // Until redis-rs's task has read the reply and handed it over.
        for _ in 0..1000 {
            if reply.is_woken() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(reply.is_woken(), "redis-rs handed the reply over");

        closer(&connection).close(io::ErrorKind::ConnectionReset);
        let value = tokio_test::assert_ready_ok!(reply.poll());
        assert_eq!(value, Value::SimpleString("PONG".into()));
    }

    /// A command whose response future is first polled after the close is
    /// handed back unsent, with the command inside, and nothing is written.
    #[tokio::test]
    async fn a_command_first_polled_after_the_close_is_handed_back() {
        use tokio::io::AsyncReadExt;

        let (mut connection, mut server) = connection_over_duplex().await;
        let command = ::redis::cmd("PING");
        let reply = Service::<Cmd>::call(&mut connection, command.clone());
        closer(&connection).close(io::ErrorKind::ConnectionReset);
        let mut error = reply.await.expect_err("not sent");
        let not_sent = error.downcast_mut::<NotSent>().expect("NotSent");
        let handed_back = not_sent.take_request::<Cmd>().expect("the command");
        assert_eq!(
            handed_back.get_packed_command(),
            command.get_packed_command()
        );

        // The last clone gone, the task ends and the socket closes: with
        // nothing written on it.
        drop(connection);
        let mut written = Vec::new();
        server.read_to_end(&mut written).await.unwrap();
        assert!(written.is_empty(), "{written:?}");
    }
}
