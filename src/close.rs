//! How a connection tells its client that it has closed, with no request
//! in flight.

use std::fmt;
use std::io;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// A connection's "closed" signal: set once, by whatever sees the
/// connection end (its IO task, its socket), and watched by the client.
///
/// A [`Client`](crate::Client) keeps its connection up with no traffic:
/// while the connection is idle, the client's own task polls the
/// connection's `poll_ready`. For the client to notice an idle connection's
/// death, that `poll_ready` must
///
/// 1. return `Ready(Err(_))` once the connection is closed, and
/// 2. while it is open, arrange for the task to be woken when it closes,
///    even when it returns `Ready(Ok(()))`.
///
/// `CloseWatch` does both. Keep one in the connection, [`close`] it where
/// the connection ends, and start `poll_ready` with
/// [`poll_closed`](CloseWatch::poll_closed). This crate's hyper, redis and
/// PostgreSQL connections work this way. A connection that does not is
/// found dead only by the next request on it.
///
/// One task is woken: the last one that polled. The client polls the
/// connection its factory made; clones that a connection hands out (for the
/// direct lane of [`multiplexed`](crate::MakeReconnect::multiplexed), say)
/// should check [`closed`](CloseWatch::closed) without registering, so as
/// not to take the client's place. [`for_clone`](CloseWatch::for_clone)
/// makes such a copy.
///
/// [`close`]: CloseWatch::close
///
/// # Example
///
/// ```
/// use std::task::{Context, Poll};
/// use tower::Service;
/// use tower_redial::connect::CloseWatch;
/// use tower_redial::BoxError;
///
/// struct MyConnection {
///     closed: CloseWatch,
///     // ... the sending half of the connection
/// }
///
/// impl Service<String> for MyConnection {
///     type Response = String;
///     type Error = BoxError;
///     type Future = std::future::Ready<Result<String, BoxError>>;
///
///     fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
///         if let Poll::Ready(error) = self.closed.poll_closed(cx) {
///             return Poll::Ready(Err(error.into()));
///         }
///         Poll::Ready(Ok(()))
///     }
///
///     fn call(&mut self, request: String) -> Self::Future {
///         std::future::ready(Ok(request))
///     }
/// }
///
/// let closed = CloseWatch::new();
/// let mut connection = MyConnection { closed: closed.clone() };
/// // The connection's reader task, on end-of-file:
/// closed.close(std::io::ErrorKind::UnexpectedEof);
/// assert!(connection.closed.closed().is_some());
/// ```
#[derive(Clone, Default)]
pub struct CloseWatch {
    shared: Arc<Shared>,
    /// Whether this copy registers the polling task.
    registers: bool,
}

#[derive(Default)]
struct Shared {
    closed: OnceLock<io::ErrorKind>,
    waker: AtomicWaker,
}

impl CloseWatch {
    /// A signal for one connection, not yet closed.
    pub fn new() -> Self {
        Self {
            shared: Arc::default(),
            registers: true,
        }
    }

    /// A copy for a clone of the connection: it sees the close, but its
    /// [`poll_closed`](CloseWatch::poll_closed) wakes no one.
    pub fn for_clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            registers: false,
        }
    }

    /// Marks the connection closed, with the kind of error that closed it,
    /// and wakes the task watching it. Only the first call counts.
    pub fn close(&self, kind: io::ErrorKind) {
        if self.shared.closed.set(kind).is_ok() {
            self.shared.waker.wake();
        }
    }

    /// The error the connection closed with, if it has closed.
    pub fn closed(&self) -> Option<io::Error> {
        let kind = *self.shared.closed.get()?;
        Some(io::Error::new(kind, format!("connection closed: {kind}")))
    }

    /// `Ready` with the error the connection closed with, once it has
    /// closed; until then `Pending`, and the task in `cx` is woken when it
    /// closes.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.registers {
            if let Some(error) = self.closed() {
                return Poll::Ready(error);
            }
            self.shared.waker.register(cx.waker());
        }
        match self.closed() {
            Some(error) => Poll::Ready(error),
            None => Poll::Pending,
        }
    }
}

impl fmt::Debug for CloseWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloseWatch")
            .field("closed", &self.shared.closed.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Closing wakes the task that last polled the watch, once; a clone's
    /// copy sees the close but does not take the registration.
    #[test]
    fn closing_wakes_the_watching_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = count.clone().into();
        let mut cx = Context::from_waker(&waker);
        let watch = CloseWatch::new();
        let copy = watch.for_clone();
        assert!(watch.poll_closed(&mut cx).is_pending());
        let other = futures_util::task::noop_waker();
        assert!(copy
            .poll_closed(&mut Context::from_waker(&other))
            .is_pending());

        watch.close(io::ErrorKind::UnexpectedEof);
        watch.close(io::ErrorKind::ConnectionReset);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let Poll::Ready(error) = copy.poll_closed(&mut cx) else {
            panic!("the copy sees the close");
        };
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
