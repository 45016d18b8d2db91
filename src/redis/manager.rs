//! The drop-in for redis-rs's `ConnectionManager`: a client that redis-rs's
//! commands, pipelines and scripts run on.

use std::fmt;

use ::redis::aio::ConnectionLike;
use ::redis::{
    Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, Value,
};
use tower::ServiceExt;

use super::errors::into_redis_error;
use super::request::RedisRequest;
use crate::connect::Factory;
use crate::retry::ResendPolicy;
use crate::{Client, MakeReconnect};

/// A reconnecting redis connection that redis-rs's commands run on: the
/// drop-in for redis-rs's [`ConnectionManager`].
///
/// It implements redis-rs's [`ConnectionLike`], so every
/// [`AsyncCommands`](::redis::AsyncCommands) method, [`Pipeline`] (a
/// transaction too) and [`Script`](https://docs.rs/redis/latest/redis/struct.Script.html) runs on it, and it is
/// `Clone`: code written for `ConnectionManager` compiles against it
/// unchanged, apart from how it is made. Underneath is a
/// `Client<RedisRequest, Value>` over [`MakeRedis`](super::MakeRedis), so
/// the client's rules hold: requests wait in its queue while it redials,
/// fail fast with [`Unavailable`](crate::error::Unavailable) past the wait
/// limit, and are re-sent only when they provably never ran. A pipeline is
/// one request: sent whole, and re-sent whole or not at all.
///
/// Errors are [`RedisError`]s: see
/// [Errors of the drop-in](super#errors-of-the-drop-in) for the mapping,
/// and [`client_error`](super::client_error) to reach the client's own
/// error. Pub/sub commands, `SELECT` and `RESET`, and a transaction's
/// commands sent one by one are refused: see [Pub/sub](super#pubsub) and
/// [Connection state](super#connection-state).
///
/// # Example
///
/// ```no_run
/// use redis::AsyncCommands;
/// use tower::ServiceBuilder;
/// use tower_redial::redis::{MakeRedis, RedisManager};
/// use tower_redial::{ReconnectLayer, ReconnectPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> redis::RedisResult<()> {
/// let make = ServiceBuilder::new()
///     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
///     .service(MakeRedis::new());
/// let mut con = RedisManager::new(&make, "redis://127.0.0.1:6379/")?;
///
/// let visits: i64 = con.incr("visits", 1).await?;
/// let (n, last): (i64, Option<String>) = redis::pipe()
///     .atomic()
///     .incr("visits", 1)
///     .get("last")
///     .query_async(&mut con)
///     .await?;
/// # let _ = (visits, n, last);
/// # Ok(())
/// # }
/// ```
///
/// [`ConnectionManager`]: https://docs.rs/redis/latest/redis/aio/struct.ConnectionManager.html
#[derive(Clone)]
pub struct RedisManager {
    client: Client<RedisRequest, Value>,
    db: i64,
}

impl RedisManager {
    /// A connection to `target` (a redis URL or a [`ConnectionInfo`]),
    /// made by `make`: a [`MakeRedis`](super::MakeRedis) wrapped by a
    /// [`ReconnectLayer`](crate::ReconnectLayer), as a `ServiceBuilder`
    /// gives it. Nothing is dialed until the first command.
    ///
    /// # Errors
    ///
    /// If `target` is not a valid redis address (a malformed URL, say): the
    /// same error as redis-rs's `Client::open` gives.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime, as the client's task is spawned
    /// here.
    pub fn new<M, R>(
        make: &MakeReconnect<M, R>,
        target: impl IntoConnectionInfo,
    ) -> RedisResult<Self>
    where
        M: Factory<ConnectionInfo, RedisRequest>,
        M::Response: tower::Service<RedisRequest, Response = Value> + Clone + Sync,
        R: ResendPolicy<RedisRequest>,
    {
        let info = target.into_connection_info()?;
        let db = info.redis_settings().db();
        Ok(Self {
            client: make.multiplexed(info),
            db,
        })
    }

    /// The client underneath: its [`state`](Client::state) watch and
    /// [`stats`](Client::stats), or a tower `Service` of [`RedisRequest`]s.
    pub fn client(&self) -> &Client<RedisRequest, Value> {
        &self.client
    }

    /// Sends `request` on a clone of the client, so that a caller that stops
    /// waiting leaves no place held in its queue.
    async fn send(&self, request: RedisRequest) -> RedisResult<Value> {
        self.client
            .clone()
            .oneshot(request)
            .await
            .map_err(into_redis_error)
    }
}

impl ConnectionLike for RedisManager {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            refuse(cmd, false)?;
            self.send(RedisRequest::Cmd(cmd.clone())).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            pipeline.cmd_iter().try_for_each(|cmd| refuse(cmd, true))?;
            let request = RedisRequest::Pipeline {
                pipeline: pipeline.clone(),
                offset,
                count,
            };
            match self.send(request).await? {
                Value::Array(values) => Ok(values),
                other => Err(RedisError::from((
                    ErrorKind::UnexpectedReturnType,
                    "a pipeline's replies are an array",
                    format!("{other:?}"),
                ))),
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}

/// The commands that turn a connection into a subscriber (or a monitor),
/// which a shared connection cannot be: refused alone and in a pipeline.
const PUBSUB: [&[u8]; 7] = [
    b"SUBSCRIBE",
    b"PSUBSCRIBE",
    b"SSUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PUNSUBSCRIBE",
    b"SUNSUBSCRIBE",
    b"MONITOR",
];

/// The commands that change the connection's state for whatever is sent
/// after them: on a connection that every clone shares and that a redial
/// replaces, that state would reach other callers' commands, or be lost
/// unseen. Refused alone and in a pipeline.
const STATE: [&[u8]; 2] = [b"SELECT", b"RESET"];

/// The commands of a transaction (`MULTI` … `EXEC`, and `WATCH`): refused
/// alone, where the commands between them could go to another connection
/// after a redial and run outside the transaction; allowed in a pipeline,
/// which is sent whole on one connection.
const TRANSACTION: [&[u8]; 5] = [b"MULTI", b"EXEC", b"DISCARD", b"WATCH", b"UNWATCH"];

/// Refuses, before anything is sent, a command that a shared, redialed
/// connection cannot carry: see [Pub/sub](super#pubsub) and
/// [Connection state](super#connection-state).
fn refuse(cmd: &Cmd, in_pipeline: bool) -> RedisResult<()> {
    let Some(::redis::Arg::Simple(name)) = cmd.args_iter().next() else {
        return Ok(());
    };
    let is = |names: &[&[u8]]| names.iter().any(|n| name.eq_ignore_ascii_case(n));
    let why = if is(&PUBSUB) {
        "pub/sub needs a connection of its own: use redis-rs's PubSub \
         (redis::Client::get_async_pubsub)"
    } else if is(&STATE) {
        "the connection is shared by every clone and replaced at each redial: \
         give the database in the URL (redis://host/5), or use a connection of your own"
    } else if is(&TRANSACTION) && !in_pipeline {
        "a transaction sent command by command could be split by a redial: \
         send it whole, as redis::pipe().atomic()"
    } else {
        return Ok(());
    };
    Err(RedisError::from((
        ErrorKind::Client,
        why,
        String::from_utf8_lossy(name).into_owned(),
    )))
}

impl fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisManager")
            .field("client", &self.client)
            .field("db", &self.db)
            .finish()
    }
}
