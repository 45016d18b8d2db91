//! The client: a cheap, `Clone`able handle to one reconnecting connection,
//! and its response future. [`Client`] is also at the crate root.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tower::buffer::Buffer;
use tower::retry::Retry;
use tower::Service;

use crate::driver::{self, Drive, Kick, WakeOnDrop};
use crate::error::{Closed, Overloaded, Unavailable};
use crate::lane::{LaneCache, LaneCell};
use crate::reconnect::Reconnect;
use crate::retry::{copier, BoxResponse, Copier, ResendPolicy, RetryPolicy, Slot, Unslot};
use crate::state::{Observer, Phase, Snapshot, Stats};
use crate::{BoxError, ReconnectPolicy};

mod future;

use future::from_buffer;
pub use future::ClientFuture;

/// A cheap, `Clone`able handle to one reconnecting connection.
///
/// Made by [`MakeReconnect::client`](crate::MakeReconnect::client) or
/// [`MakeReconnect::multiplexed`](crate::MakeReconnect::multiplexed). Each
/// client owns a task that holds a [`Reconnect`] service; clones share it
/// through a bounded queue (tower's [`Buffer`]). Once the client has been
/// used (a first request, or [`connected`](Client::connected)), that task
/// also keeps the connection up with no traffic: see
/// [Without traffic](crate#the-contract). A request that fails
/// where a re-send is safe is re-sent through tower's [`Retry`] (see
/// [`ReconnectLayer`](crate::ReconnectLayer)). A client made by
/// `multiplexed` calls a connection that has proved healthy directly, and
/// uses the queue only while the connection is being made.
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
/// [`Overloaded`] instead.
///
/// As with tower's [`Buffer`], `poll_ready` takes the place in the queue,
/// not `call`:
///
/// - A handle whose `poll_ready` returned `Ready(Ok)` holds a queue slot
///   until it is called or dropped.
/// - A handle whose `poll_ready` returned `Pending` keeps its place in the
///   wait for a slot until it is polled again or dropped, even once its
///   caller has stopped waiting. A `ready()` abandoned by a timeout leaves
///   the handle in line: it is handed the next free slot and holds it from
///   every other caller until it is used or dropped. Neither the client
///   nor tower's `Buffer` can tell an abandoned wait from a slow one.
///
/// So bound a request with [`oneshot`](tower::ServiceExt::oneshot) on a
/// clone, as in `timeout(limit, client.clone().oneshot(request))`: it polls
/// and calls in one go, and a timeout drops the handle with its place. Or
/// drop the handle when a wait for its readiness times out. The client
/// gives its place back itself wherever the handle will not use the
/// queue: when load shedding refuses the request, and when a `multiplexed`
/// handle turns to the connection directly.
///
/// A [`multiplexed`](crate::MakeReconnect::multiplexed) client whose
/// connection is up and proven polls the connection's own `poll_ready`
/// instead, so backpressure is the connection's (hyper's HTTP/2 stream
/// limit, for example), and load shedding applies only to the queue.
///
/// # Errors
///
/// Responses fail with [`Unavailable`] when the
/// connection has been down longer than the wait limit, with
/// [`Closed`] once the client gave up, or with the
/// connection's own error. `poll_ready` fails only with
/// [`Closed`]. See [`error`](crate::error).
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
    /// The queue to the worker task.
    queue: Buffer<Slot<Req>, BoxResponse<Res>>,
    shared: Arc<Shared<Req, Res>>,
    /// This handle's copy of the direct lane, if the connection is published.
    lane: LaneCache<Req, Res>,
    /// Set while the queue has this handle waiting for room: a handle that
    /// goes direct meanwhile gives up its place, so as not to hold a slot.
    queue_waiting: bool,
    /// What the last `poll_ready` made ready.
    ready: Readiness,
    load_shed: bool,
}

/// What `call` will use, as set by `poll_ready`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Readiness {
    #[default]
    NotReady,
    /// The published connection, called on the caller's task.
    Direct,
    /// A reserved place in the queue.
    Queue,
    /// The queue is full and load shedding is on.
    Shed,
}

/// What every handle of one client shares.
pub(crate) struct Shared<Req, Res> {
    /// The retry policy that each request starts from.
    pub(crate) policy: RetryPolicy<Req>,
    copier: Option<Copier<Req>>,
    observer: Arc<Observer>,
    /// The queue, for re-sending a request that failed.
    queue: Buffer<Slot<Req>, BoxResponse<Res>>,
    pub(crate) lane: Arc<LaneCell<Req, Res>>,
    /// Starts the client's task keeping the connection up.
    kick: Arc<Kick>,
    /// How long [`Client::connected`] waits at most: the wait limit plus
    /// one connect timeout.
    connect_bound: Duration,
    /// Last, so that it wakes the client's task after the queue above is
    /// dropped: the task then sees that no handle is left, and ends.
    _wake: WakeOnDrop,
}

impl<Req, Res> Shared<Req, Res> {
    /// The client's counters, watch and target.
    pub(crate) fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }
}

impl<Req, Res> Shared<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    /// A retrying handle on the queue, to re-send through.
    pub(crate) fn resender(
        &self,
        policy: RetryPolicy<Req>,
    ) -> Retry<RetryPolicy<Req>, Buffer<Slot<Req>, BoxResponse<Res>>> {
        Retry::new(policy, self.queue.clone())
    }
}

impl<Req, Res> Client<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    /// Puts `reconnect` on a spawned worker task behind a queue. With a
    /// `lane`, its healthy connections are also called directly.
    pub(crate) fn new<M, T, R>(
        reconnect: Reconnect<M, T>,
        policy: &ReconnectPolicy,
        resend: R,
        lane: Arc<LaneCell<Req, Res>>,
    ) -> Self
    where
        Reconnect<M, T>: Drive<Req, Response = Res, Error = BoxError> + Send + 'static,
        <Reconnect<M, T> as Service<Req>>::Future: Send + 'static,
        M: Service<T>,
        R: ResendPolicy<Req>,
    {
        let observer = reconnect.observer();
        Self::spawn(reconnect.driven(), observer, policy, resend, lane)
    }

    /// Puts any worker service on a spawned task behind a queue and retry;
    /// handles call connections published to `lane` directly.
    pub(crate) fn spawn<S, R>(
        worker: S,
        observer: Arc<Observer>,
        policy: &ReconnectPolicy,
        resend: R,
        lane: Arc<LaneCell<Req, Res>>,
    ) -> Self
    where
        S: Drive<Req, Response = Res, Error = BoxError> + Send + 'static,
        S::Future: Send + 'static,
        R: ResendPolicy<Req>,
    {
        let kick = Arc::new(Kick::default());
        let buffer = driver::spawn(Unslot(worker), policy.queue_capacity, kick.clone());
        let copier = copier(resend);
        let retry = RetryPolicy::new(
            policy.retry_attempts,
            policy.new_budget(),
            policy.classifier.clone(),
            copier.clone(),
            observer.clone(),
        );
        let shared = Arc::new(Shared {
            policy: retry,
            copier,
            observer,
            queue: buffer.clone(),
            lane,
            kick: kick.clone(),
            connect_bound: policy.wait_limit.saturating_add(policy.connect_timeout),
            _wake: WakeOnDrop(kick),
        });
        Self {
            queue: buffer,
            shared,
            lane: LaneCache::default(),
            queue_waiting: false,
            ready: Readiness::NotReady,
            load_shed: policy.load_shed,
        }
    }
}

impl<Req, Res> Client<Req, Res> {
    /// A watch of the connection's state; see [`state`](crate::state).
    pub fn state(&self) -> watch::Receiver<Snapshot> {
        self.shared.observer.subscribe()
    }

    /// A copy of the connection's counters.
    pub fn stats(&self) -> Stats {
        self.shared.observer.stats()
    }

    /// The target, as errors name it.
    fn label(&self) -> &Arc<str> {
        self.shared.observer.label()
    }

    /// Dials now, if the client has not dialed yet, and waits until the
    /// connection is up: the eager counterpart of the lazy first request,
    /// like tonic's `Endpoint::connect` beside `connect_lazy`.
    ///
    /// From then on the client keeps its connection up by itself, as it
    /// does after its first request.
    ///
    /// # Errors
    ///
    /// - [`Unavailable`] once the connection has been unavailable for the
    ///   policy's [wait limit](crate::ReconnectPolicy::wait_limit) and the
    ///   dial in flight then has failed too: at most the wait limit plus one
    ///   [connect timeout](crate::ReconnectPolicy::connect_timeout) after
    ///   the first dial. Its `source()` is the latest dial error.
    /// - [`Closed`] if the client gave up for good.
    ///
    /// The client stays usable after an error: it goes on redialing by its
    /// backoff, and requests are served once a dial succeeds.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::{service_fn, ServiceBuilder};
    /// use tower_redial::state::Phase;
    /// use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let make = service_fn(|_: &'static str| async {
    ///     Ok::<_, BoxError>(service_fn(|n: u32| async move { Ok::<_, BoxError>(n + 1) }))
    /// });
    /// let client = ServiceBuilder::new()
    ///     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
    ///     .service(make)
    ///     .client::<_, u32>("db-1");
    /// client.connected().await?;
    /// assert_eq!(client.state().borrow().phase(), Phase::Ready);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connected(&self) -> Result<(), BoxError> {
        let mut state = self.shared.observer.subscribe();
        self.shared.kick.start();
        let settled =
            |s: &Snapshot| matches!(s.phase(), Phase::Ready | Phase::FailFast | Phase::Closed);
        // A dial due at once may follow a failure before this task looks,
        // so `FailFast` can pass unseen: the bound decides then.
        let waited = tokio::time::timeout(self.shared.connect_bound, async {
            state
                .wait_for(settled)
                .await
                .map(|snapshot| snapshot.clone())
        })
        .await;
        let snapshot = match waited {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(_)) => return Err(Closed::task_ended(self.label().clone(), None).into()),
            Err(_) => state.borrow().clone(),
        };
        let last_error = snapshot.last_error_shared();
        match snapshot.phase() {
            Phase::Ready => Ok(()),
            Phase::Closed => {
                Err(Closed::new(self.label().clone(), snapshot.attempt(), last_error).into())
            }
            _ => {
                let down_for = snapshot
                    .down_since()
                    .map_or(Duration::ZERO, |t| t.elapsed());
                let target = self.label().clone();
                Err(Unavailable::new(target, down_for, snapshot.attempt(), last_error).into())
            }
        }
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
        // A place already reserved in the queue is kept till `call` uses it.
        if self.ready != Readiness::Queue {
            let cell = &self.shared.lane;
            if let Some(lane) = cell.current(&mut self.lane) {
                match lane.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if std::mem::take(&mut self.queue_waiting) {
                            // Going direct: leave the wait for a queue slot,
                            // so as not to be handed one and hold it unused.
                            // A fresh clone is not waiting; dropping ours
                            // leaves the wait.
                            self.queue = self.queue.clone();
                        }
                        self.ready = Readiness::Direct;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending => {
                        if std::mem::take(&mut self.queue_waiting) {
                            // Waiting for the connection, not the queue.
                            self.queue = self.queue.clone();
                        }
                        // Woken by the connection, or by the lane changing:
                        // the lane's copy registered this task as waiting.
                        self.ready = Readiness::NotReady;
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(error)) => {
                        tracing::debug!(%error, "connection failed readiness; queueing for a redial");
                        cell.report_dead(self.lane.generation);
                        self.lane.clear();
                    }
                }
            }
        }
        match self.queue.poll_ready(cx) {
            Poll::Pending if self.load_shed => {
                // The request will fail with `Overloaded`, without the
                // queue: leave the wait for a slot, or this handle would be
                // handed one and hold it from the next caller until it is
                // used or dropped.
                self.queue = self.queue.clone();
                self.queue_waiting = false;
                self.ready = Readiness::Shed;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // Keeps its place in the wait, to be woken when a slot frees.
                self.queue_waiting = true;
                self.ready = Readiness::NotReady;
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                self.queue_waiting = false;
                self.ready = Readiness::Queue;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => {
                self.queue_waiting = false;
                self.ready = Readiness::NotReady;
                Poll::Ready(Err(from_buffer(self.shared.observer.label(), error)))
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let spare = |request: &Req| self.shared.copier.as_ref().and_then(|copy| copy(request));
        match std::mem::take(&mut self.ready) {
            Readiness::Direct => {
                let spare = spare(&request);
                let lane = self.lane.lane.as_mut().expect("a ready lane");
                let future = lane.call(request);
                let generation = self.lane.generation;
                ClientFuture::direct(future, spare, generation, self.shared.clone())
            }
            Readiness::Queue => {
                let spare = spare(&request);
                let future = self.queue.call(Slot::First(request));
                ClientFuture::queued(future, spare, self.shared.clone())
            }
            Readiness::Shed => ClientFuture::shed(Overloaded::new().into()),
            Readiness::NotReady => {
                panic!("Client::call called before poll_ready returned Ready(Ok)")
            }
        }
    }
}

impl<Req, Res> Clone for Client<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            shared: self.shared.clone(),
            lane: self.lane.clone(),
            queue_waiting: false,
            ready: Readiness::NotReady,
            load_shed: self.load_shed,
        }
    }
}

impl<Req, Res> fmt::Debug for Client<Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.shared.observer.subscribe().borrow())
            .field("stats", &self.shared.observer.stats())
            .finish()
    }
}
