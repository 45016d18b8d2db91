//! Replies that mean "not run": a server that is not serving yet.

use std::error::Error;
use std::fmt;
use std::future::Future;

use ::redis::aio::MultiplexedConnection;
use ::redis::{Cmd, ErrorKind, Pipeline, RedisError, ServerError, ServerErrorKind, Value};

/// A request that a [`RedisConnection`] sends: [`Cmd`] and [`Pipeline`],
/// each with its own `query_async`.
pub(super) trait Query: Send + Sync + 'static {
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
pub(super) struct Refusal {
    pub(super) cause: NotServing,
    /// Whether it refused every command of the request, so that none ran.
    pub(super) whole: bool,
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
/// back as a [`NotSent`](crate::error::NotSent) holding the command, with this error as its source,
/// and the client re-sends it on its next connection. See
/// [Replies that mean "not run"](super#replies-that-mean-not-run).
///
/// [`source()`](Error::source) is the server's reply, a
/// [`::redis::RedisError`].
#[derive(Clone, Debug)]
pub struct NotServing {
    reply: RedisError,
}

impl NotServing {
    /// The refusal in `reply`, if it is one.
    pub(super) fn from_reply(reply: &RedisError) -> Option<Self> {
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
