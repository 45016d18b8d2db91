//! One multiplexed redis connection, watched, as a tower service.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Cmd, ConnectionInfo, Pipeline, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tower::Service;

use super::close::{reply_or_close, Closer, Watched};
use super::errors::into_box;
use super::refusal::Query;
use super::request::RedisRequest;
use crate::boxed::boxed_future;
use crate::connect::CloseWatch;
use crate::error::NotSent;
use crate::BoxError;

/// One multiplexed redis connection as a tower service.
///
/// Takes a [`Cmd`], a [`Pipeline`] or a [`RedisRequest`]; answers with the
/// reply [`Value`] (a pipeline's replies come as an array). Commands from all clones share the
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
/// [module docs](super#what-happens-to-a-command-when-the-server-goes-away).
///
/// `poll_ready` also fails, with [`NotServing`](super::NotServing), once the server has
/// refused a command because it is not serving (`-LOADING`,
/// `-MASTERDOWN`): the connection is retired, so that the client redials.
/// Commands already awaiting their replies on it still get them. See
/// [Replies that mean "not run"](super#replies-that-mean-not-run).
///
/// # Errors
///
/// A server error reply is a [`::redis::RedisError`]; a transport failure is
/// an [`io::Error`] with the `RedisError` inside. See
/// [Errors](super#errors).
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

impl RedisConnection {
    /// Runs redis-rs's handshake over `stream`, and spawns the connection's
    /// task, watching the socket.
    pub(super) async fn handshake<S>(
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
    pub(super) fn unwatched(connection: MultiplexedConnection) -> Self {
        let (closer, closed) = Closer::new();
        Self {
            connection,
            shared: Arc::new(Shared { closer, task: None }),
            closed,
        }
    }

    /// Whether the connection is known to be closed: its socket reported
    /// end-of-file or an error, or its task ended; or it was retired
    /// because the server is not serving (see [`NotServing`](super::NotServing)).
    ///
    /// For a connection that cannot be watched (see
    /// [Targets](super#targets)), only a retirement shows.
    pub fn is_closed(&self) -> bool {
        self.closed.closed().is_some()
    }

    /// Asks the server, with a `PING`, whether it serves commands: one that
    /// refuses it with `-LOADING` or `-MASTERDOWN` fails the dial with
    /// [`NotServing`](super::NotServing), as does a transport failure. Any other answer, an
    /// error reply included (a `PING` that the ACL denies, say), passes: the
    /// server is serving.
    pub(super) async fn check_serving(&self) -> Result<(), BoxError> {
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
        ResponseFuture::new(async move {
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
        })
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

/// The drop-in client's requests: a command or a pipeline, answered with
/// the raw reply (see [`RedisRequest`]).
impl Service<RedisRequest> for RedisConnection {
    type Response = Value;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        <Self as Service<Cmd>>::poll_ready(self, cx)
    }

    fn call(&mut self, request: RedisRequest) -> Self::Future {
        self.send(request)
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

boxed_future! {
    /// The response future of a [`RedisConnection`].
    pub struct ResponseFuture => Result<Value, BoxError>;
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use ::redis::{ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};

    use super::super::errors::redis_error;
    use super::super::refusal::NotServing;
    use super::*;
    use crate::classify::is_transport_error;

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
