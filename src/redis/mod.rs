//! Redis: the `redis` crate's multiplexed connection as a connection service.
//!
//! [`MakeRedis`] is a connection factory for
//! [`ReconnectLayer`](crate::ReconnectLayer): given a redis URL or a
//! [`ConnectionInfo`], it dials and hands back a [`RedisConnection`], a tower
//! service over one [`MultiplexedConnection`] that takes a [`Cmd`] (or a
//! [`Pipeline`]) and answers with a [`Value`]. The layer turns it into a
//! client that stays connected, in one of two forms:
//!
//! - [`RedisManager`]: the drop-in for redis-rs's `ConnectionManager`. It
//!   implements redis-rs's [`ConnectionLike`](::redis::aio::ConnectionLike),
//!   so redis-rs's own API runs on it: `con.incr("visits", 1).await?`,
//!   pipelines, transactions, scripts. See
//!   [The drop-in for `ConnectionManager`](#the-drop-in-for-connectionmanager).
//! - [`RedisClient`]: a tower `Service` of [`Cmd`]s, answered with
//!   [`Value`]s, to compose with other tower layers.
//!
//! Needs the `redis` feature; `rediss://` (TLS) needs `redis-tls` (see
//! [TLS](#tls)).
//!
//! # The drop-in for `ConnectionManager`
//!
//! Code written for redis-rs's `ConnectionManager` compiles against a
//! [`RedisManager`] unchanged, apart from how it is made: it is `Clone`, and
//! every [`AsyncCommands`](::redis::AsyncCommands) method,
//! [`Pipeline`](::redis::Pipeline) and [`Script`](https://docs.rs/redis/latest/redis/struct.Script.html) runs on
//! it. `tests/interop/tests/redis/drop_in.rs` runs the same generic code on
//! each, and `drop_in_outage.rs` beside it, through `kill -9`s of the
//! server.
//!
//! ```no_run
//! use redis::AsyncCommands;
//! use tower::ServiceBuilder;
//! use tower_redial::redis::{MakeRedis, RedisManager};
//! use tower_redial::{ReconnectLayer, ReconnectPolicy};
//!
//! // Code written for ConnectionManager: nothing here changes.
//! async fn visit<C>(con: &C) -> redis::RedisResult<(i64, Option<String>)>
//! where
//!     C: redis::aio::ConnectionLike + Clone + Send + Sync,
//! {
//!     let mut con = con.clone();
//!     let visits: i64 = con.incr("visits", 1).await?;
//!     let () = con.set_ex("last", "now", 60).await?;
//!     let (n, last): (i64, Option<String>) = redis::pipe()
//!         .atomic()
//!         .incr("visits", 1)
//!         .get("last")
//!         .query_async(&mut con)
//!         .await?;
//!     Ok((visits.max(n), last))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> redis::RedisResult<()> {
//! // Instead of `redis::Client::open(url)?.get_connection_manager().await?`:
//! let make = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(MakeRedis::new());
//! let con = RedisManager::new(&make, "redis://127.0.0.1:6379/")?;
//! let (visits, last) = visit(&con).await?;
//! # let _ = (visits, last);
//! # Ok(())
//! # }
//! ```
//!
//! What changes is what happens when the server goes away: the client's
//! rules, below, instead of `ConnectionManager`'s (see
//! [Compared with redis-rs's `ConnectionManager`](#compared-with-redis-rss-connectionmanager)).
//! A pipeline is one request of the client: sent whole on one connection,
//! and re-sent whole, only if the server refused all of it unrun, or not at
//! all. What does not carry over: `ConnectionManager`'s inherent methods
//! (its RESP3 `subscribe` and the like; see [Pub/sub](#pubsub)), and its
//! reconnect settings, which the [`ReconnectPolicy`](crate::ReconnectPolicy)
//! replaces.
//!
//! # Errors of the drop-in
//!
//! redis-rs's `ConnectionLike` returns a [`::redis::RedisError`], so a
//! [`RedisManager`] turns each error into one. redis-rs's own errors come
//! as redis-rs made them; the client's come inside an IO `RedisError` whose
//! IO kind says what redis-rs's checks should say, shown as the client's
//! error, with the client's error's `source()` chain after it.
//! [`client_error`] finds the client's error in it.
//!
//! | the client's error | the `RedisError` | `is_io_error` | `is_connection_dropped` | `is_timeout` | did it run? |
//! |---|---|---|---|---|---|
//! | an error reply (`WRONGTYPE`, …), a parse error | itself: `kind()`, `code()`, `detail()` as redis-rs gives them | no | no | no | it reached the server |
//! | a transport failure (reset, broken pipe, response timeout, refused) | itself, as redis-rs made it | yes | as redis-rs says | for a timeout | it may have |
//! | [`Unavailable`](crate::error::Unavailable): no connection within the wait limit | IO, `NotConnected` | yes | yes | no | no |
//! | [`NotSent`]: handed back unsent, its re-sends spent | IO, `NotConnected` | yes | yes | no | no |
//! | [`Closed`](crate::error::Closed): the client gave up for good | IO, `ConnectionAborted` | yes | yes | no | no |
//! | [`ResponseTimeout`](crate::error::ResponseTimeout): the policy's response timeout | IO, `TimedOut` | yes | no | yes | it may have |
//! | [`ConnectionLost`](crate::error::ConnectionLost) | IO, the kind of the IO error in its chain (`ConnectionReset` if none) | yes | for a drop's kind | for `TimedOut` | it may have |
//! | anything else ([`Overloaded`](crate::error::Overloaded), [`Panicked`](crate::error::Panicked), …) | IO, `Other` | yes | no | no | see [`error`](crate::error) |
//!
//! So a redis-rs retry loop that re-sends on `is_connection_dropped()`
//! re-sends what failed fast, which never ran; to tell "never ran" from "may
//! have run", ask [`client_error`]:
//!
//! ```
//! use tower_redial::error::{NotSent, Unavailable};
//! use tower_redial::redis::client_error;
//!
//! /// Whether the command surely did not run.
//! fn never_ran(error: &redis::RedisError) -> bool {
//!     client_error(error).is_some_and(|e| e.is::<Unavailable>() || NotSent::is_in(e))
//! }
//! # assert!(!never_ran(&redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))));
//! ```
//!
//! # Pub/sub
//!
//! A [`RedisManager`] refuses `SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`, their
//! `UNSUBSCRIBE`s and `MONITOR`, alone or in a pipeline, before sending
//! anything: the `RedisError` is of kind [`Client`](::redis::ErrorKind::Client),
//! with the command's name as its `detail()`. Its connection is shared by
//! every clone and every caller, and over RESP2 a subscribed connection
//! refuses every other command; subscriptions would also be lost, unseen, at
//! each redial. Use redis-rs's own [`PubSub`](::redis::aio::PubSub)
//! (`redis::Client::get_async_pubsub`), a connection of its own, to
//! subscribe; `PUBLISH` is an ordinary command and works on the drop-in.
//!
//! # Connection state
//!
//! The drop-in's connection is shared by every clone and replaced at each
//! redial, so it carries no state of one caller's from one command to the
//! next. It refuses, before sending anything, with a `RedisError` of kind
//! [`Client`](::redis::ErrorKind::Client) naming the command:
//!
//! | command | refused | instead |
//! |---|---|---|
//! | `SELECT`, `RESET` | alone and in a pipeline | the database in the URL (`redis://host/5`): it is selected on every new connection |
//! | `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH` | alone | `redis::pipe().atomic()`, or these commands in one pipeline: a pipeline is sent whole, on one connection |
//!
//! Sent one by one, a transaction's commands could be split by a redial:
//! those after it would go to the new connection, where no `MULTI` is open,
//! and run at once.
//!
//! # Example of the tower form
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
//! | [`io::Error`] with the `RedisError` inside ([`get_ref`](std::io::Error::get_ref)) | the transport failed: reset, closed, refused, timed out | the command may have run; the connection is redialed |
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
//! `AsyncConnectionConfig` is not used. Any other address (TLS, see
//! below) is dialed by redis-rs itself; such a connection cannot be
//! watched, so it is found dead only when a command fails on it with a
//! transport error.
//!
//! # TLS
//!
//! With the `redis-tls` feature, `rediss://` targets are dialed through
//! redis-rs's rustls support (its `tokio-rustls-comp` feature), with
//! rustls's `ring` crypto provider (should your build also enable rustls's
//! `aws-lc-rs`, rustls asks you to install a process-wide provider first).
//! The server's certificate is checked
//! against the system's roots; for roots of your own, or a client
//! certificate, build the target with redis-rs's
//! [`Client::build_with_tls`](https://docs.rs/redis/latest/redis/struct.Client.html#method.build_with_tls)
//! and pass its [`ConnectionInfo`]:
//!
//! ```no_run
//! # #[cfg(feature = "redis-tls")]
//! # fn main() -> redis::RedisResult<()> {
//! use redis::TlsCertificates;
//!
//! let certificates = TlsCertificates {
//!     client_tls: None,
//!     root_cert: Some(std::fs::read("ca.crt")?),
//! };
//! let target = redis::Client::build_with_tls("rediss://cache.internal:6380/", certificates)?
//!     .get_connection_info()
//!     .clone();
//! # let _ = target;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "redis-tls"))]
//! # fn main() {}
//! ```
//!
//! Every dial is a new TLS handshake: a server restarted with a new
//! certificate is checked afresh on the redial. A certificate that fails the
//! check fails the dial, so past the wait limit requests fail with
//! [`Unavailable`](crate::error::Unavailable) whose `source()` shows
//! rustls's error as rustls shows it (`invalid peer certificate:
//! UnknownIssuer`), with the [`rustls::Error`] itself in its chain (inside
//! the `io::Error` that redis-rs wraps it in). These are tested in
//! `tests/interop/tests/redis/tls.rs` against `redis-server --tls-port`.
//!
//! A TLS connection is not watched (see [Targets](#targets)): a server's
//! death is seen when a command fails on the connection with a transport
//! error, which may be the first command after a quiet spell.
//!
//! [`rustls::Error`]: https://docs.rs/rustls/latest/rustls/enum.Error.html
//!
//! [`MultiplexedConnection`]: ::redis::aio::MultiplexedConnection
//! [`ConnectionInfo`]: ::redis::ConnectionInfo
//! [`IntoConnectionInfo`]: ::redis::IntoConnectionInfo
//! [`AsyncConnectionConfig`]: ::redis::AsyncConnectionConfig
//! [`io::Error`]: std::io::Error
//! [`Pipeline`]: ::redis::Pipeline
//! [`ServerErrorKind`]: ::redis::ServerErrorKind
//! [`NotSent`]: crate::error::NotSent

use ::redis::{Cmd, Value};

use crate::Client;

mod close;
mod connection;
mod errors;
mod make;
mod manager;
mod refusal;
mod request;

pub use connection::{RedisConnection, ResponseFuture};
pub use errors::{client_error, redis_error};
pub use make::{ConnectFuture, MakeRedis};
pub use manager::RedisManager;
pub use refusal::NotServing;
pub use request::RedisRequest;

/// A reconnecting redis client, as made by
/// [`ReconnectLayer`](crate::ReconnectLayer) over [`MakeRedis`]: sends a
/// [`Cmd`], answers with a [`Value`].
///
/// For pipelines, make a `Client<Pipeline, Value>` the same way. For
/// redis-rs's own API (`AsyncCommands`) on a reconnecting connection, use
/// [`RedisManager`].
pub type RedisClient = Client<Cmd, Value>;
