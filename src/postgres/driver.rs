//! The connection's IO task: drives the tokio-postgres connection, reads
//! the server's notices, and says goodbye when the client is gone.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::tokio_postgres::error::SqlState;
use ::tokio_postgres::AsyncMessage;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::connect::CloseWatch;
use crate::error::chain;

use super::cancel::Canceller;
use super::connection::Ended;

/// How long a dropped connection may take to finish its in-flight replies
/// and say goodbye to the server before its IO task is ended anyway.
const GOODBYE: Duration = Duration::from_secs(5);

/// How often a dropped connection that was given up cancels what its
/// backend runs, while it says goodbye.
const CANCEL_AGAIN: Duration = Duration::from_millis(100);

/// Runs the connection until it closes, or until the client is dropped and
/// the connection has said goodbye (or [`GOODBYE`] has passed).
pub(super) async fn drive<S, T>(
    mut connection: ::tokio_postgres::Connection<S, T>,
    dropped: oneshot::Receiver<()>,
    ended: Arc<Ended>,
    closed: CloseWatch,
    cancel: Arc<Canceller>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut dropped = dropped;
    let finished = poll_fn(|cx| {
        if let Poll::Ready(result) = poll_connection(&mut connection, &closed, cx) {
            return Poll::Ready(Some(result));
        }
        Pin::new(&mut dropped).poll(cx).map(|_| None)
    })
    .await;
    let result = match finished {
        Some(result) => result,
        // The client is gone: the connection finishes the replies in flight,
        // sends `Terminate` and closes, unless the server hangs.
        None => {
            // No one waits for a statement any more. On a connection given
            // up (a statement was abandoned), one still queued behind
            // another (whose `CancelRequest` hit that other one) would run
            // to its end; so every statement left is cancelled, until the
            // goodbye is done.
            let mut again = tokio::time::interval(CANCEL_AGAIN);
            again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let goodbye = poll_fn(|cx| {
                let result = poll_connection(&mut connection, &closed, cx);
                if result.is_pending() && cancel.was_sent() {
                    while again.poll_tick(cx).is_ready() {
                        cancel.cancel();
                    }
                }
                result
            });
            match tokio::time::timeout(GOODBYE, goodbye).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!("postgres connection did not close in time; dropping it");
                    Ok(())
                }
            }
        }
    };
    match result {
        Ok(()) => {
            tracing::debug!("postgres connection closed");
            closed.close(io::ErrorKind::UnexpectedEof);
        }
        Err(error) => {
            tracing::debug!(%error, "postgres connection ended");
            let kind = close_kind(&error);
            let _ = ended.error.set(Arc::new(error));
            closed.close(kind);
        }
    }
}

/// Drives the connection until it ends, as its own `Future` does, and reads
/// the server's notices on the way: a notice that the server is ending the
/// session closes `closed` at once, before the stream ends.
fn poll_connection<S, T>(
    connection: &mut ::tokio_postgres::Connection<S, T>,
    closed: &CloseWatch,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ::tokio_postgres::Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match ready!(connection.poll_message(cx)) {
            None => return Poll::Ready(Ok(())),
            Some(Err(error)) => return Poll::Ready(Err(error)),
            Some(Ok(AsyncMessage::Notice(notice))) if ends_session_notice(&notice) => {
                tracing::debug!(
                    code = notice.code().code(),
                    message = notice.message(),
                    "postgres server is ending the session"
                );
                closed.close(io::ErrorKind::ConnectionAborted);
            }
            Some(Ok(AsyncMessage::Notice(notice))) => tracing::debug!(
                severity = notice.severity(),
                code = notice.code().code(),
                message = notice.message(),
                "postgres notice"
            ),
            // Notifications: nothing here listens for them.
            Some(Ok(_)) => {}
        }
    }
}

/// The IO error kind to close a connection's watch with, for the error that
/// ended it.
pub(super) fn close_kind(error: &::tokio_postgres::Error) -> io::ErrorKind {
    chain(error)
        .find_map(|e| e.downcast_ref::<io::Error>())
        .map_or(io::ErrorKind::ConnectionAborted, io::Error::kind)
}

/// Whether a notice says that the server is ending the session at once:
/// `57P01 admin_shutdown` (an immediate shutdown) or `57P02 crash_shutdown`
/// (another server process crashed). PostgreSQL sends these as `WARNING`s,
/// and the server process exits right after.
fn ends_session_notice(notice: &::tokio_postgres::error::DbError) -> bool {
    [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN].contains(notice.code())
}
