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

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo,
    Pipeline, RedisError, ServerError, ServerErrorKind, Value,
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
/// `poll_ready` also fails, with [`NotServing`], once the server has
/// refused a command because it is not serving (`-LOADING`,
/// `-MASTERDOWN`): the connection is retired, so that the client redials.
/// Commands already awaiting their replies on it still get them. See
/// [Replies that mean "not run"](self#replies-that-mean-not-run).
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
    /// What the clones share, and each command in flight keeps.
    shared: Arc<Shared>,
    /// Closed once the socket reports end-of-file or an error, the
    /// connection's task ends, or the server refuses a command because it is
    /// not serving. Only the connection as dialed wakes its poller on close;
    /// clones just look.
    closed: CloseWatch,
}

impl Clone for RedisConnection {
    fn clone(&self) -> Self {
        Self {
            connection: self.connection.clone(),
            shared: self.shared.clone(),
            closed: self.closed.for_clone(),
        }
    }
}

/// What the clones of a connection share.
struct Shared {
    /// Closes the connection, for the client and for the commands awaiting
    /// replies.
    closer: Closer,
    /// redis-rs's connection task, when the connection was dialed here,
    /// aborted when the last clone and the last command in flight are gone;
    /// `None` for a connection dialed by redis-rs itself, whose socket
    /// cannot be watched.
    task: Option<JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Closes a connection, once: to the client, through the [`CloseWatch`]
/// that `poll_ready` polls, and to every command awaiting its reply.
///
/// A connection closes in one of two ways. Its socket fails (or its task
/// ends): the client and the commands awaiting replies learn it, with the
/// kind of error. Or the server refuses a command because it is not serving:
/// the connection is retired, and only the client learns it, since the
/// socket is fine and the commands on it get their replies.
#[derive(Clone)]
struct Closer {
    /// A copy of the connection's `CloseWatch`, which only closes it.
    client: CloseWatch,
    replies: watch::Sender<Option<io::ErrorKind>>,
    /// Why the connection was retired, if it was.
    retired: Arc<OnceLock<NotServing>>,
}

impl Closer {
    /// A closer, and the `CloseWatch` that the connection as dialed polls.
    fn new() -> (Self, CloseWatch) {
        let closed = CloseWatch::new();
        let (replies, _) = watch::channel(None);
        let closer = Self {
            client: closed.for_clone(),
            replies,
            retired: Arc::default(),
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

    /// Retires the connection: the server is not serving. The client sees
    /// it closed and redials; the commands awaiting replies on it still get
    /// them.
    fn retire(&self, cause: &NotServing) {
        // The cause first: whoever sees the client's watch closed then finds
        // it.
        let _ = self.retired.set(cause.clone());
        self.client.close(io::ErrorKind::ConnectionAborted);
    }

    /// Why no command may be sent on the connection, if none may: it has
    /// closed, or it was retired.
    fn unusable(&self) -> Option<BoxError> {
        if let Some(kind) = *self.replies.borrow() {
            return Some(closed_error(kind).into());
        }
        let retired = self.retired.get()?;
        Some(retired.clone().into())
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
            shared: Arc::new(Shared {
                closer,
                task: Some(task),
            }),
            closed,
        })
    }

    /// A connection that redis-rs dialed itself: its socket cannot be
    /// watched, so it closes only when retired.
    fn unwatched(connection: MultiplexedConnection) -> Self {
        let (closer, closed) = Closer::new();
        Self {
            connection,
            shared: Arc::new(Shared { closer, task: None }),
            closed,
        }
    }

    /// Whether the connection is known to be closed: its socket reported
    /// end-of-file or an error, or its task ended; or it was retired
    /// because the server is not serving (see [`NotServing`]).
    ///
    /// For a connection that cannot be watched (see
    /// [Targets](self#targets)), only a retirement shows.
    pub fn is_closed(&self) -> bool {
        self.closed.closed().is_some()
    }

    /// Asks the server, with a `PING`, whether it serves commands: one that
    /// refuses it with `-LOADING` or `-MASTERDOWN` fails the dial with
    /// [`NotServing`], as does a transport failure. Any other answer, an
    /// error reply included (a `PING` that the ACL denies, say), passes: the
    /// server is serving.
    async fn check_serving(&self) -> Result<(), BoxError> {
        let ping = ::redis::cmd("PING");
        let mut connection = self.connection.clone();
        let mut ended = self.shared.closer.subscribe();
        let reply = reply_or_close(ping.query_on(&mut connection), &mut ended).await;
        if let Some(refusal) = ping.refusal(&reply) {
            return Err(refusal.cause.into());
        }
        match reply {
            Err(error) if error.code().is_none() => Err(into_box(error)),
            _ => Ok(()),
        }
    }

    /// Sends `request`: hands it back unsent if the connection is known to
    /// be closed (or retired) when the response future is first polled, or
    /// if the server refuses it because it is not serving; fails it at once
    /// if the connection closes before its reply comes.
    fn send<R: Query>(&mut self, request: R) -> ResponseFuture {
        let mut connection = self.connection.clone();
        let shared = self.shared.clone();
        ResponseFuture(Box::pin(async move {
            let closer = &shared.closer;
            let mut ended = closer.subscribe();
            // Looked at just before the command goes to redis-rs: a command
            // that has not gone there has not reached the socket.
            if let Some(error) = closer.unusable() {
                return Err(NotSent::with_request(request, error).into());
            }
            // `shared` keeps the connection's task alive while the reply is
            // awaited.
            let reply = reply_or_close(request.query_on(&mut connection), &mut ended).await;
            if let Some(refusal) = request.refusal(&reply) {
                closer.retire(&refusal.cause);
                if refusal.whole {
                    return Err(NotSent::with_request(request, refusal.cause).into());
                }
            }
            reply.map_err(into_box)
        }))
    }
}

/// The reply, or, if the connection closes before it comes, a transport
/// error of the close's kind: the command may have been written, so it may
/// have run.
async fn reply_or_close<F>(
    reply: F,
    ended: &mut watch::Receiver<Option<io::ErrorKind>>,
) -> Result<Value, RedisError>
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
            Poll::Ready(result) => Poll::Ready(result),
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
fn closed_before_reply(kind: io::ErrorKind) -> RedisError {
    RedisError::from(io::Error::new(
        kind,
        "redis connection closed before the reply came",
    ))
}

/// A request that a [`RedisConnection`] sends: [`Cmd`] and [`Pipeline`],
/// each with its own `query_async`.
trait Query: Send + Sync + 'static {
    /// Sends the request on `connection`, and awaits its reply.
    fn query_on<'a>(
        &'a self,
        connection: &'a mut MultiplexedConnection,
    ) -> impl Future<Output = Result<Value, RedisError>> + Send + 'a;

    /// The server's refusal, in `reply`, of this request's commands because
    /// it is not serving, if it refused any.
    fn refusal(&self, reply: &Result<Value, RedisError>) -> Option<Refusal>;
}

impl Query for Cmd {
    fn query_on<'a>(
        &'a self,
        connection: &'a mut MultiplexedConnection,
    ) -> impl Future<Output = Result<Value, RedisError>> + Send + 'a {
        self.query_async::<Value>(connection)
    }

    fn refusal(&self, reply: &Result<Value, RedisError>) -> Option<Refusal> {
        let Err(error) = reply else { return None };
        let cause = NotServing::from_reply(error)?;
        Some(Refusal { cause, whole: true })
    }
}

impl Query for Pipeline {
    fn query_on<'a>(
        &'a self,
        connection: &'a mut MultiplexedConnection,
    ) -> impl Future<Output = Result<Value, RedisError>> + Send + 'a {
        self.query_async::<Value>(connection)
    }

    fn refusal(&self, reply: &Result<Value, RedisError>) -> Option<Refusal> {
        let errors: Vec<ServerError> = match reply {
            // Each command's error, transactions' included.
            Err(error) => error
                .clone()
                .into_server_errors()?
                .iter()
                .map(|(_, error)| error.clone())
                .collect(),
            // A pipeline that ignores errors answers them as values.
            Ok(Value::Array(values)) => values
                .iter()
                .filter_map(|value| match value {
                    Value::ServerError(error) => Some(error.clone()),
                    _ => None,
                })
                .collect(),
            Ok(_) => return None,
        };
        let refused = errors
            .iter()
            .filter(|error| not_serving_kind(error.kind()))
            .count();
        let first = errors
            .into_iter()
            .find(|error| not_serving_kind(error.kind()))?;
        Some(Refusal {
            cause: NotServing {
                reply: first.into(),
            },
            whole: refused == self.len(),
        })
    }
}

/// The server's refusal of a request's commands because it is not serving.
struct Refusal {
    cause: NotServing,
    /// Whether it refused every command of the request, so that none ran.
    whole: bool,
}

/// Whether a server error of `kind` says the server is not serving:
/// `-LOADING` or `-MASTERDOWN`.
fn not_serving_kind(kind: Option<ServerErrorKind>) -> bool {
    matches!(
        kind,
        Some(ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown)
    )
}

/// The redis server is up, but does not serve commands yet, and said so by
/// refusing one: `-LOADING` (it is loading its dataset into memory, after a
/// restart or while a replica resyncs) or `-MASTERDOWN` (a replica cut off
/// from its master, with `replica-serve-stale-data no`). The refused
/// command did not run.
///
/// A dial whose `PING` is so refused fails with this error: the client
/// backs off and dials again, and requests wait in its queue, within the
/// policy's wait limit. A command so refused on an open connection comes
/// back as a [`NotSent`] holding the command, with this error as its source,
/// and the client re-sends it on its next connection. See
/// [Replies that mean "not run"](self#replies-that-mean-not-run).
///
/// [`source()`](Error::source) is the server's reply, a
/// [`::redis::RedisError`].
#[derive(Clone, Debug)]
pub struct NotServing {
    reply: RedisError,
}

impl NotServing {
    /// The refusal in `reply`, if it is one.
    fn from_reply(reply: &RedisError) -> Option<Self> {
        let ErrorKind::Server(kind) = reply.kind() else {
            return None;
        };
        not_serving_kind(Some(kind)).then(|| Self {
            reply: reply.clone(),
        })
    }

    /// Whether the server is loading its dataset (`-LOADING`); if not, it
    /// is a replica cut off from its master (`-MASTERDOWN`).
    pub fn is_loading(&self) -> bool {
        self.reply.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading)
    }
}

impl fmt::Display for NotServing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_loading() {
            "redis server is loading its dataset"
        } else {
            "redis replica is cut off from its master"
        })
    }
}

impl Error for NotServing {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.reply)
    }
}

impl Service<Cmd> for RedisConnection {
    type Response = Value;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.closed.poll_closed(cx).is_ready() {
            let error = self.shared.closer.unusable().expect("closed or retired");
            return Poll::Ready(Err(error));
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
            .field("watched", &self.shared.task.is_some())
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
        &connection.shared.closer
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

    const LOADING: &[u8] = b"-LOADING Redis is loading the dataset in memory\r\n";

    /// The error in a server's error reply, as redis-rs parses it.
    fn error_reply(reply: &[u8]) -> RedisError {
        ::redis::parse_redis_value(reply)
            .expect("a valid reply")
            .extract_error()
            .expect_err("an error reply")
    }

    /// Reads `command`, as written, off the wire at `server`.
    async fn read_command(server: &mut tokio::io::DuplexStream, command: &Cmd) {
        use tokio::io::AsyncReadExt;

        let expected = command.get_packed_command();
        let mut written = vec![0; expected.len()];
        server.read_exact(&mut written).await.unwrap();
        assert_eq!(written, expected);
    }

    /// `-LOADING` and `-MASTERDOWN` say that the server is not serving, by
    /// their kind; the other refusals of a command that did not run are the
    /// server's answer to it.
    #[test]
    fn not_serving_is_told_by_the_reply_kind() {
        let incr = Cmd::incr("n", 1);
        for (reply, loading) in [
            (LOADING, true),
            (
                &b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n"[..],
                false,
            ),
        ] {
            let refusal = incr.refusal(&Err(error_reply(reply))).expect("a refusal");
            assert!(refusal.whole);
            assert_eq!(refusal.cause.is_loading(), loading);
            assert!(refusal.cause.source().is_some_and(|e| e.is::<RedisError>()));
        }
        for reply in [
            &b"-BUSY Redis is busy running a script.\r\n"[..],
            b"-READONLY You can't write against a read only replica.\r\n",
            b"-NOREPLICAS Not enough good replicas to write.\r\n",
            b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            b"-CLUSTERDOWN The cluster is down\r\n",
            b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            b"-MISCONF Errors writing to the AOF file\r\n",
            b"-ERR unknown command\r\n",
            // Only the code counts, not the text.
            b"-ERR LOADING Redis is loading the dataset in memory\r\n",
        ] {
            let error = error_reply(reply);
            assert!(incr.refusal(&Err(error.clone())).is_none(), "{error:?}");
        }
        assert!(incr.refusal(&Ok(Value::Int(1))).is_none());
    }

    /// A command refused with `-LOADING` comes back unsent, holding the
    /// command, and retires the connection: `poll_ready` fails with
    /// `NotServing`, and the next command is handed back unwritten. A
    /// command written before the refusal still gets its own reply.
    #[tokio::test]
    async fn a_command_refused_as_loading_is_handed_back_and_retires_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut connection, mut server) = connection_over_duplex().await;
        let (a, b) = (Cmd::incr("a", 1), Cmd::incr("b", 1));
        let refused = Service::<Cmd>::call(&mut connection, a.clone());
        let answered = Service::<Cmd>::call(&mut connection, b.clone());
        let server_side = async {
            read_command(&mut server, &a).await;
            read_command(&mut server, &b).await;
            server.write_all(LOADING).await.unwrap();
            server.write_all(b":1\r\n").await.unwrap();
        };
        let (refused, answered, ()) = tokio::join!(refused, answered, server_side);

        let mut error = refused.expect_err("refused");
        let not_sent = error.downcast_mut::<NotSent>().expect("NotSent");
        let cause = not_sent.source().expect("a cause");
        assert!(cause
            .downcast_ref::<NotServing>()
            .is_some_and(NotServing::is_loading));
        let handed_back = not_sent.take_request::<Cmd>().expect("the command");
        assert_eq!(handed_back.get_packed_command(), a.get_packed_command());
        assert_eq!(answered.expect("answered"), Value::Int(1));

        assert!(connection.is_closed(), "retired");
        let ready = std::future::poll_fn(|cx| Service::<Cmd>::poll_ready(&mut connection, cx));
        let error = ready.await.expect_err("a retired connection is not ready");
        assert!(error.is::<NotServing>(), "{error:?}");
        let error = Service::<Cmd>::call(&mut connection, b.clone())
            .await
            .expect_err("not sent");
        assert!(NotSent::is_in(&*error), "{error:?}");

        // The last clone gone, the socket closes: with nothing more written.
        drop(connection);
        let mut written = Vec::new();
        server.read_to_end(&mut written).await.unwrap();
        assert!(written.is_empty(), "{written:?}");
    }

    /// A pipeline comes back unsent only when the server refused every one
    /// of its commands as not serving; one it refused in part reaches the
    /// caller, since the rest ran. Either way the connection is retired.
    #[tokio::test]
    async fn a_pipeline_is_handed_back_only_when_all_of_it_was_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        const EXECABORT: &[u8] =
            b"-EXECABORT Transaction discarded because of previous errors.\r\n";
        for (atomic, replies, whole) in [
            (false, vec![LOADING, LOADING], true),
            (false, vec![LOADING, b":1\r\n"], false),
            // MULTI is served while loading; each command it queues is
            // refused, so EXEC discards the transaction.
            (true, vec![b"+OK\r\n", LOADING, LOADING, EXECABORT], true),
        ] {
            let (mut connection, mut server) = connection_over_duplex().await;
            let mut pipeline = ::redis::pipe();
            pipeline.incr("a", 1).incr("b", 1);
            if atomic {
                pipeline.atomic();
            }
            let packed = pipeline.get_packed_pipeline();
            let reply = Service::<Pipeline>::call(&mut connection, pipeline);
            let server_side = async {
                let mut written = vec![0; packed.len()];
                server.read_exact(&mut written).await.unwrap();
                server.write_all(&replies.concat()).await.unwrap();
            };
            let (reply, ()) = tokio::join!(reply, server_side);
            let error = reply.expect_err("refused");
            assert_eq!(NotSent::is_in(&*error), whole, "{error:?}");
            if !whole {
                let redis = redis_error(&*error).expect("the pipeline's error");
                assert_eq!(
                    redis.kind(),
                    ErrorKind::Server(ServerErrorKind::BusyLoading)
                );
            }
            assert!(connection.is_closed(), "retired");
        }
    }

    /// A dial's `PING`: refused as not serving, it fails the dial with
    /// `NotServing`; answered, even with an error, it passes.
    #[tokio::test]
    async fn a_dial_checks_that_the_server_serves() {
        use tokio::io::AsyncWriteExt;

        for (reply, serving) in [
            (&b"+PONG\r\n"[..], true),
            (
                b"-NOPERM this user has no permissions to run the 'ping' command\r\n",
                true,
            ),
            (LOADING, false),
            (b"-MASTERDOWN Link with MASTER is down\r\n", false),
        ] {
            let (connection, mut server) = connection_over_duplex().await;
            let server_side = async {
                read_command(&mut server, &::redis::cmd("PING")).await;
                server.write_all(reply).await.unwrap();
            };
            let (checked, ()) = tokio::join!(connection.check_serving(), server_side);
            match checked {
                Ok(()) => assert!(serving, "{reply:?}"),
                Err(error) => {
                    assert!(!serving, "{reply:?}: {error:?}");
                    assert!(error.is::<NotServing>(), "{error:?}");
                }
            }
        }
    }
}
