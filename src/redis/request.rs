//! The request of the drop-in client: what redis-rs's `ConnectionLike`
//! sends, a command or a pipeline, as one request.

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::{Cmd, Pipeline, RedisError, Value};

use super::refusal::{NotServing, Query, Refusal};

/// One request of a [`RedisManager`](super::RedisManager): what redis-rs's
/// [`ConnectionLike`] asks a connection to send, as one request of the
/// client.
///
/// A pipeline, a transaction (`MULTI` … `EXEC`) included, is one request:
/// it is sent whole on one connection, and is re-sent whole or not at all
/// (see [Replies that mean "not run"](super#replies-that-mean-not-run)).
/// The reply is the connection's raw reply, as redis-rs's
/// [`MultiplexedConnection`] gives it: an error reply is a
/// [`Value::ServerError`], for redis-rs's callers to read; a pipeline's is a
/// [`Value::Array`] of the `count` replies it keeps.
///
/// Made by the [`RedisManager`](super::RedisManager); a client of them is
/// a `Client<RedisRequest, Value>`.
///
/// # Example
///
/// ```
/// use tower_redial::redis::RedisRequest;
///
/// let incr = RedisRequest::Cmd(redis::Cmd::incr("visits", 1));
/// let mut pipe = redis::pipe();
/// pipe.atomic().incr("visits", 1).get("visits");
/// // A transaction keeps one reply, `EXEC`'s, past `MULTI` and the `QUEUED`s.
/// let transaction = RedisRequest::Pipeline { offset: pipe.len() + 1, count: 1, pipeline: pipe };
/// # let _ = (incr, transaction);
/// ```
#[derive(Clone, Debug)]
pub enum RedisRequest {
    /// One command, answered with one reply.
    Cmd(Cmd),
    /// A pipeline's commands, sent together; of their replies, `offset`
    /// are skipped and the next `count` kept, as redis-rs's
    /// [`ConnectionLike::req_packed_commands`] asks.
    Pipeline {
        /// The commands, with a transaction's `MULTI` and `EXEC` if
        /// [`atomic`](Pipeline::atomic).
        pipeline: Pipeline,
        /// Replies skipped.
        offset: usize,
        /// Replies kept.
        count: usize,
    },
}

impl Query for RedisRequest {
    async fn query_on(&self, connection: &mut MultiplexedConnection) -> Result<Value, RedisError> {
        match self {
            Self::Cmd(cmd) => connection.req_packed_command(cmd).await,
            Self::Pipeline {
                pipeline,
                offset,
                count,
            } => connection
                .req_packed_commands(pipeline, *offset, *count)
                .await
                .map(Value::Array),
        }
    }

    fn refusal(&self, reply: &Result<Value, RedisError>) -> Option<Refusal> {
        match self {
            // The raw reply: an error reply is a value.
            Self::Cmd(cmd) => match reply {
                Ok(Value::ServerError(error)) => {
                    let cause = NotServing::from_reply(&RedisError::from(error.clone()))?;
                    Some(Refusal { cause, whole: true })
                }
                _ => cmd.refusal(reply),
            },
            Self::Pipeline { pipeline, .. } => pipeline.refusal(reply),
        }
    }
}
