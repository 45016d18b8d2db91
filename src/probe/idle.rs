//! The probing connection: its task, its response future, and its error.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::connect::CloseWatch;
use crate::error::{share, SharedError};
use crate::BoxError;

/// A connection that probes itself after being idle, and reports itself
/// dead from `poll_ready` once a probe fails.
///
/// A successful response through the wrapper is a sign of life; so is the
/// connection's creation. Once there has been none for `idle`, a background
/// task sends a clone of the probe request on a clone of the connection.
/// Any `Ok` reply counts as alive and starts the idle period over. An error
/// marks the connection dead for good, and so does silence: `timeout`
/// without any successful response (the probe's or another request's) after
/// the probe was sent, the wait for the connection's readiness included.
///
/// Requests sent count for nothing: a request sent into a dead connection
/// proves nothing, so a connection whose requests get no answers is probed
/// even under traffic. On a pipelined connection the probe waits behind the
/// requests before it; a single request slower than `idle + timeout`, with no
/// other response meanwhile (a blocking `BLPOP`, say), looks like silence.
/// Pick `idle + timeout` longer than your slowest request.
///
/// See the [module docs](crate::probe) for when a dead connection is
/// noticed, and why the connection must be `Clone`.
///
/// # Errors
///
/// Once dead, `poll_ready` fails with [`ProbeFailed`]. Otherwise errors are
/// the connection's own, unchanged.
///
/// # Clone
///
/// Clones share the probe, its idle clock and its verdict; the probe task
/// runs until the last clone is dropped.
pub struct IdleProbe<S> {
    inner: S,
    owner: Arc<Owner>,
    /// Closed when the probe fails; wakes the client's task.
    closed: CloseWatch,
}

/// What the wrapper and the probe task share.
struct Shared {
    base: Instant,
    /// Nanoseconds from `base` to the last successful response.
    last_response: AtomicU64,
    dead: OnceLock<ProbeFailed>,
    /// Closed when the probe fails.
    closed: CloseWatch,
}

impl Shared {
    /// Records a sign of life: a successful response.
    fn alive(&self) {
        let nanos = Instant::now().duration_since(self.base).as_nanos();
        self.last_response
            .fetch_max(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last_response(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_response.load(Ordering::Relaxed))
    }

    fn die(&self, error: ProbeFailed) {
        let _ = self.dead.set(error);
        self.closed.close(io::ErrorKind::TimedOut);
    }
}

/// Held by every clone of the wrapper; ends the probe task when the last
/// one goes.
struct Owner(Arc<Shared>, AbortHandle);

impl Drop for Owner {
    fn drop(&mut self) {
        self.1.abort();
    }
}

impl<S> IdleProbe<S> {
    /// Wraps `connection` and spawns the task that probes it with clones of
    /// `probe` after `idle` without a successful response, and marks it dead
    /// after `timeout` of silence once a probe is sent.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime, since it spawns a task.
    pub fn new<Req>(connection: S, probe: Req, idle: Duration, timeout: Duration) -> Self
    where
        S: Service<Req> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
        Req: Clone + Send + 'static,
    {
        let closed = CloseWatch::new();
        let shared = Arc::new(Shared {
            base: Instant::now(),
            last_response: AtomicU64::new(0),
            dead: OnceLock::new(),
            closed: closed.for_clone(),
        });
        let task = tokio::spawn(run(
            connection.clone(),
            probe,
            idle,
            timeout,
            shared.clone(),
        ));
        Self {
            inner: connection,
            owner: Arc::new(Owner(shared, task.abort_handle())),
            closed,
        }
    }

    /// Whether a probe has failed: the connection is dead and `poll_ready`
    /// fails.
    pub fn is_dead(&self) -> bool {
        self.owner.0.dead.get().is_some()
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// The probe task: sleeps until the connection has been idle long enough,
/// probes, and repeats until the probe fails. Aborted when the last wrapper
/// is dropped, which drops its clone of the connection.
async fn run<S, Req: Clone>(
    mut connection: S,
    probe: Req,
    idle: Duration,
    timeout: Duration,
    shared: Arc<Shared>,
) where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    loop {
        let due = shared.last_response() + idle;
        if Instant::now() < due {
            tokio::time::sleep_until(due).await;
            continue;
        }
        tracing::trace!("connection idle; sending probe");
        let request = probe.clone();
        let connection = &mut connection;
        let sent = async move {
            let ready = connection.ready().await.map_err(Into::into)?;
            ready.call(request).await.map_err(Into::into)
        };
        let mut sent = std::pin::pin!(sent);
        let sent_at = Instant::now();
        let outcome = loop {
            // Any response meanwhile, such as one the probe waits behind on a
            // pipelined connection, proves the connection and moves the
            // deadline on.
            let deadline = shared.last_response().max(sent_at) + timeout;
            match tokio::time::timeout_at(deadline, sent.as_mut()).await {
                Ok(outcome) => break Some(outcome),
                Err(_) if shared.last_response() + timeout > Instant::now() => continue,
                Err(_) => break None,
            }
        };
        let error = match outcome {
            Some(Ok(_)) => {
                shared.alive();
                continue;
            }
            Some(Err(error)) => ProbeFailed::errored(error),
            None => ProbeFailed::timed_out(timeout),
        };
        tracing::debug!(error = %error, "idle probe failed; connection marked dead");
        shared.die(error);
        return;
    }
}

impl<S: Clone> Clone for IdleProbe<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            owner: self.owner.clone(),
            closed: self.closed.for_clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for IdleProbe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleProbe")
            .field("inner", &self.inner)
            .field("dead", &self.is_dead())
            .finish()
    }
}

impl<S, Req> Service<Req> for IdleProbe<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ProbedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Watched even while ready: the client's task learns of a failed
        // probe at once, with no request.
        if self.closed.poll_closed(cx).is_ready() {
            if let Some(error) = self.owner.0.dead.get() {
                return Poll::Ready(Err(Box::new(error.clone())));
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ProbedFuture {
            future: self.inner.call(request),
            shared: self.owner.0.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`IdleProbe`]: the connection's own, which
    /// counts a successful response as a sign of life.
    pub struct ProbedFuture<F> {
        #[pin]
        future: F,
        shared: Arc<Shared>,
    }
}

impl<F, T, E> Future for ProbedFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.future.poll(cx)).map_err(Into::into)?;
        this.shared.alive();
        Poll::Ready(Ok(response))
    }
}

impl<F> fmt::Debug for ProbedFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbedFuture").finish_non_exhaustive()
    }
}

/// An idle probe failed or timed out: the connection is dead.
///
/// [`IdleProbe`]'s `poll_ready` returns it once the probe has failed, which
/// makes [`Reconnect`](crate::reconnect::Reconnect) drop the connection and redial.
/// [`source()`](Error::source) is the probe's error; a timeout has none.
#[derive(Clone)]
pub struct ProbeFailed {
    timeout: Option<Duration>,
    source: Option<SharedError>,
}

impl ProbeFailed {
    fn errored(error: BoxError) -> Self {
        Self {
            timeout: None,
            source: Some(share(error)),
        }
    }

    fn timed_out(after: Duration) -> Self {
        Self {
            timeout: Some(after),
            source: None,
        }
    }

    /// Whether the probe got no reply within its timeout (rather than an
    /// error).
    pub fn is_timeout(&self) -> bool {
        self.timeout.is_some()
    }
}

impl fmt::Debug for ProbeFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeFailed")
            .field("timeout", &self.timeout)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ProbeFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.timeout {
            Some(after) => write!(f, "idle probe got no reply within {after:?}"),
            None => f.write_str("idle probe failed"),
        }
    }
}

impl Error for ProbeFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}
