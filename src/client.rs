use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tower::buffer::Buffer;
use tower::retry::Retry;
use tower::Service;

use crate::error::Overloaded;
use crate::future::{from_buffer, BoxResponse, ClientFuture};
use crate::reconnect::Reconnect;
use crate::retry::{copier, Copier, ResendPolicy, RetryPolicy, Slot, Unslot};
use crate::state::{Observer, Snapshot, Stats};
use crate::{BoxError, ReconnectPolicy};

/// A cheap, `Clone`able handle to one reconnecting connection.
///
/// Made by [`MakeReconnect::client`](crate::MakeReconnect::client). Each
/// client owns a worker task that holds a [`Reconnect`] service; clones share
/// it through a bounded queue (tower's [`Buffer`]), and re-send requests
/// through tower's [`Retry`] where that is safe (see
/// [`ReconnectLayer`](crate::ReconnectLayer)).
///
/// # Backpressure
///
/// `poll_ready` waits for room in the queue, whose size is the policy's
/// [`queue_capacity`](crate::ReconnectPolicyBuilder::queue_capacity). It
/// does not wait for the connection: requests wait in the queue while it is
/// redialed, for up to the wait limit.
///
/// With [`load_shed`](crate::ReconnectPolicyBuilder::load_shed), a full
/// queue makes `poll_ready` return ready at once and the request fail with
/// [`Overloaded`](crate::error::Overloaded) instead.
///
/// # Errors
///
/// Responses fail with [`Unavailable`](crate::Unavailable) when the
/// connection has been down longer than the wait limit, with
/// [`Closed`](crate::Closed) once the client gave up, or with the
/// connection's own error. `poll_ready` fails only with
/// [`Closed`](crate::Closed). See [`error`](crate::error).
///
/// # Clone
///
/// Clones share the connection, queue, counters and state watch. Readiness
/// does not survive `Clone`: call `poll_ready` on the clone you `call`.
///
/// # Panics
///
/// `call` panics if `poll_ready` did not return `Ready(Ok)` first.
pub struct Client<Req, Res> {
    inner: Retry<RetryPolicy<Req>, Buffer<Slot<Req>, BoxResponse<Res>>>,
    copier: Option<Copier<Req>>,
    observer: Arc<Observer>,
    load_shed: bool,
    /// Set when `poll_ready` found the queue full and sheds load.
    shedding: bool,
}

impl<Req, Res> Client<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    /// Puts `reconnect` on a spawned worker task behind a queue.
    pub(crate) fn new<M, T, R>(
        reconnect: Reconnect<M, T>,
        policy: &ReconnectPolicy,
        resend: R,
    ) -> Self
    where
        Reconnect<M, T>: Service<Req, Response = Res, Error = BoxError> + Send + 'static,
        <Reconnect<M, T> as Service<Req>>::Future: Send + 'static,
        M: Service<T>,
        R: ResendPolicy<Req>,
    {
        let observer = reconnect.observer();
        Self::spawn(reconnect, observer, policy, resend)
    }

    /// Puts any worker service on a spawned task behind a queue and retry.
    pub(crate) fn spawn<S, R>(
        worker: S,
        observer: Arc<Observer>,
        policy: &ReconnectPolicy,
        resend: R,
    ) -> Self
    where
        S: Service<Req, Response = Res, Error = BoxError> + Send + 'static,
        S::Future: Send + 'static,
        R: ResendPolicy<Req>,
    {
        let (buffer, worker) = Buffer::pair(Unslot(worker), policy.queue_capacity);
        tokio::spawn(worker);
        let copier = copier(resend);
        let retry = RetryPolicy::new(
            policy.retry_attempts,
            policy.new_budget(),
            policy.classifier.clone(),
            copier.clone(),
            observer.clone(),
        );
        Self {
            inner: Retry::new(retry, buffer),
            copier,
            observer,
            load_shed: policy.load_shed,
            shedding: false,
        }
    }
}

impl<Req, Res> Client<Req, Res> {
    /// A watch of the connection's state; see [`state`](crate::state).
    pub fn state(&self) -> watch::Receiver<Snapshot> {
        self.observer.subscribe()
    }

    /// A copy of the connection's counters.
    pub fn stats(&self) -> Stats {
        self.observer.stats()
    }
}

impl<Req, Res> Service<Req> for Client<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    type Response = Res;
    type Error = BoxError;
    type Future = ClientFuture<Req, Res>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Pending if self.load_shed => {
                self.shedding = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                self.shedding = false;
                ready.map_err(from_buffer)
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if std::mem::take(&mut self.shedding) {
            return ClientFuture::shed(Overloaded::new().into());
        }
        let spare = self.copier.as_ref().and_then(|copy| copy(&request));
        let slot = Slot::new(request, spare);
        ClientFuture::new(self.inner.call(slot))
    }
}

impl<Req, Res> Clone for Client<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            copier: self.copier.clone(),
            observer: self.observer.clone(),
            load_shed: self.load_shed,
            shedding: false,
        }
    }
}

impl<Req, Res> fmt::Debug for Client<Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.observer.subscribe().borrow())
            .field("stats", &self.observer.stats())
            .finish()
    }
}
