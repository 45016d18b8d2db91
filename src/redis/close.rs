//! How a redis connection learns that it closed, and tells its client and
//! the commands awaiting replies: the socket is watched for its first
//! end-of-file or error, and each command races its reply against the
//! close.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use ::redis::{RedisError, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::refusal::NotServing;
use crate::connect::CloseWatch;
use crate::BoxError;

/// Closes a connection, once: to the client, through the [`CloseWatch`]
/// that `poll_ready` polls, and to every command awaiting its reply.
///
/// A connection closes in one of two ways. Its socket fails (or its task
/// ends): the client and the commands awaiting replies learn it, with the
/// kind of error. Or the server refuses a command because it is not serving:
/// the connection is retired, and only the client learns it, since the
/// socket is fine and the commands on it get their replies.
#[derive(Clone)]
pub(super) struct Closer {
    /// A copy of the connection's `CloseWatch`, which only closes it.
    client: CloseWatch,
    replies: watch::Sender<Option<io::ErrorKind>>,
    /// Why the connection was retired, if it was.
    retired: Arc<OnceLock<NotServing>>,
}

impl Closer {
    /// A closer, and the `CloseWatch` that the connection as dialed polls.
    pub(super) fn new() -> (Self, CloseWatch) {
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
    pub(super) fn close(&self, kind: io::ErrorKind) {
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
    pub(super) fn retire(&self, cause: &NotServing) {
        // The cause first: whoever sees the client's watch closed then finds
        // it.
        let _ = self.retired.set(cause.clone());
        self.client.close(io::ErrorKind::ConnectionAborted);
    }

    /// Why no command may be sent on the connection, if none may: it has
    /// closed, or it was retired.
    pub(super) fn unusable(&self) -> Option<BoxError> {
        if let Some(kind) = *self.replies.borrow() {
            return Some(closed_error(kind).into());
        }
        let retired = self.retired.get()?;
        Some(retired.clone().into())
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Option<io::ErrorKind>> {
        self.replies.subscribe()
    }
}

/// The reply, or, if the connection closes before it comes, a transport
/// error of the close's kind: the command may have been written, so it may
/// have run.
pub(super) async fn reply_or_close<F>(
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
pub(super) fn closed_before_reply(kind: io::ErrorKind) -> RedisError {
    RedisError::from(io::Error::new(
        kind,
        "redis connection closed before the reply came",
    ))
}

/// A socket that records the first end-of-file or error it reports.
pub(super) struct Watched<S> {
    pub(super) io: S,
    pub(super) closer: Closer,
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
