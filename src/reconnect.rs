//! The reconnecting service and its state machine.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;

use crate::backoff::Schedule;
use crate::classify::Classifier;
use crate::error::{share, Closed, ConnectTimeout, SharedError, Unavailable};
use crate::future::ResponseFuture;
use crate::lane::Publish;
use crate::policy::ReconnectPolicy;
use crate::redact::{redact, redacted};
use crate::state::{Counter, Observer, Phase, Snapshot, Stats};
use crate::timer::Timer;
use crate::BoxError;

/// A service that owns at most one connection and re-makes it when it breaks.
///
/// `Reconnect` calls its factory `M` with a clone of its target to make a
/// connection `M::Response`, forwards requests to it, and redials with the
/// [`ReconnectPolicy`]'s backoff when the connection dies. Most users get one
/// inside a [`Client`](crate::Client), which adds the queue and safe retry;
/// use it directly where you need the bare readiness, for example one per
/// endpoint under `tower::balance`.
///
/// # States
///
/// | phase | `poll_ready` | `call` |
/// |---|---|---|
/// | [`Idle`](Phase::Idle) | starts the first dial | — |
/// | [`Connecting`](Phase::Connecting), [`Backoff`](Phase::Backoff) | `Pending` | — |
/// | [`Ready`](Phase::Ready) | the connection's own `poll_ready` | forwarded |
/// | [`FailFast`](Phase::FailFast) | `Ready(Ok)` | fails at once with [`Unavailable`] |
/// | [`Closed`](Phase::Closed) | `Err(`[`Closed`]`)` | — |
///
/// It dials lazily, on the first `poll_ready`. Redialing never shows up as an
/// error or as a false readiness: `poll_ready` stays `Pending` until a new
/// connection is ready, so a balancer routes around it. Only once the
/// connection has been unavailable for longer than the wait limit does it
/// report ready, to fail requests fast. `Err` means [`Closed`], for good.
///
/// A connection counts as dead when its `poll_ready` fails, or when a
/// response fails with an error that the [`Classifier`] calls dead. The
/// first redial after a healthy connection dies is immediate; later ones
/// follow the backoff. The backoff starts over only once a new connection
/// proves healthy, by one successful response or by staying up for
/// [`healthy_after`](ReconnectPolicy::healthy_after), so a server that
/// accepts and at once closes cannot cause a hot loop.
///
/// Progress is driven by `poll_ready`: while failing fast, each call to it
/// moves the redial along.
///
/// # Panics
///
/// `call` panics if `poll_ready` did not return `Ready(Ok)` first.
pub struct Reconnect<M, T>
where
    M: Service<T>,
{
    make: M,
    target: T,
    label: Arc<str>,
    policy: ReconnectPolicy,
    state: State<M::Future, M::Response>,
    schedule: Schedule,
    /// The connect deadline while connecting, the next dial while backing off.
    timer: Timer,
    /// When requests stop waiting and fail fast.
    wait_timer: Timer,
    /// Dials since the connection was last healthy.
    attempt: u32,
    /// Set from the first dial or drop until a connection proves healthy;
    /// requests fail fast once it is older than the wait limit and no
    /// connection is up. A server that accepts and at once closes does not
    /// restart this clock.
    down_since: Option<Instant>,
    failing_fast: bool,
    /// Off for a balancer's endpoints: the balanced client fails fast as a whole.
    fail_fast: bool,
    /// Set from the first failure until a new connection proves healthy.
    outage: Option<Instant>,
    last_error: Option<SharedError>,
    observer: Arc<Observer>,
    /// Where a healthy connection is published for handles to call directly;
    /// see [`MakeReconnect::multiplexed`](crate::MakeReconnect::multiplexed).
    lane: Option<Box<dyn Publish<M::Response>>>,
}

enum State<F, S> {
    Idle,
    /// Dial as soon as the factory is ready.
    Dial,
    Connecting(Pin<Box<F>>),
    Backoff,
    Ready(Connection<S>),
    Closed(Closed),
}

struct Connection<S> {
    service: S,
    since: Instant,
    health: Arc<Health>,
    healthy: bool,
}

impl<S> Connection<S> {
    /// Healthy once noted so, once a response proved it, or once it has
    /// stayed up for `healthy_after`.
    fn has_proved_healthy(&self, now: Instant, healthy_after: Duration) -> bool {
        self.healthy
            || self.health.proven.load(Ordering::Relaxed)
            || now.duration_since(self.since) >= healthy_after
    }
}

/// What responses report back about their connection.
pub(crate) struct Health {
    proven: AtomicBool,
    dead: AtomicBool,
    classifier: Classifier,
    /// Withdraws the connection from the direct lane, once published there.
    on_dead: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("proven", &self.proven)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl Health {
    fn new(classifier: Classifier) -> Self {
        Self {
            proven: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            classifier,
            on_dead: OnceLock::new(),
        }
    }

    /// Marks the connection dead, without telling the direct lane: for the
    /// lane itself, which is withdrawing it.
    pub(crate) fn mark_dead(&self) {
        self.dead.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Runs `withdraw` when a response finds the connection dead.
    pub(crate) fn on_dead(&self, withdraw: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_dead.set(Box::new(withdraw));
        if self.is_dead() {
            withdraw_now(self);
        }
    }

    pub(crate) fn succeeded(&self) {
        self.proven.store(true, Ordering::Relaxed);
    }

    /// An error the classifier does not call dead is the peer's answer: a
    /// full round trip, which proves the connection as well as a success.
    pub(crate) fn failed(&self, error: &BoxError) {
        if self.classifier.is_dead(&**error) {
            if !self.dead.swap(true, Ordering::Relaxed) {
                withdraw_now(self);
            }
        } else {
            self.proven.store(true, Ordering::Relaxed);
        }
    }
}

fn withdraw_now(health: &Health) {
    if let Some(withdraw) = health.on_dead.get() {
        withdraw();
    }
}

impl<M, T> Reconnect<M, T>
where
    M: Service<T>,
{
    /// A service that dials `target` with `make` when first polled, and
    /// redials it by `policy`.
    ///
    /// The target's `Debug` form names the connection in logs, with URL and
    /// connection-string passwords masked.
    pub fn new(make: M, target: T, policy: ReconnectPolicy) -> Self
    where
        T: fmt::Debug,
    {
        Self {
            make,
            label: redacted(&target).into(),
            target,
            schedule: policy.schedule(),
            policy,
            state: State::Idle,
            timer: Timer::default(),
            wait_timer: Timer::default(),
            attempt: 0,
            down_since: None,
            failing_fast: false,
            fail_fast: true,
            outage: None,
            last_error: None,
            observer: Arc::new(Observer::new()),
            lane: None,
        }
    }

    /// Publishes each connection that proves healthy to `lane`.
    pub(crate) fn with_lane(mut self, lane: Box<dyn Publish<M::Response>>) -> Self {
        self.lane = Some(lane);
        self
    }

    /// An endpoint for a balancer: it never fails fast on its own, so it
    /// stays `Pending` for as long as it redials, and the balancer routes
    /// around it. Its counters also count in `parent`.
    #[cfg(feature = "balance")]
    pub(crate) fn endpoint(
        make: M,
        target: T,
        policy: ReconnectPolicy,
        parent: Option<Arc<Observer>>,
    ) -> Self
    where
        T: fmt::Debug,
    {
        let mut endpoint = Self::new(make, target, policy);
        endpoint.fail_fast = false;
        endpoint.observer = Arc::new(Observer::with_parent(parent));
        endpoint
    }

    /// A watch of this connection's state.
    pub fn state(&self) -> watch::Receiver<Snapshot> {
        self.observer.subscribe()
    }

    /// A copy of this connection's counters.
    pub fn stats(&self) -> Stats {
        self.observer.stats()
    }

    pub(crate) fn observer(&self) -> Arc<Observer> {
        self.observer.clone()
    }

    fn phase(&self) -> Phase {
        match self.state {
            State::Idle => Phase::Idle,
            State::Ready(_) => Phase::Ready,
            State::Closed(_) => Phase::Closed,
            _ if self.failing_fast => Phase::FailFast,
            State::Dial | State::Connecting(_) => Phase::Connecting,
            State::Backoff => Phase::Backoff,
        }
    }

    fn publish(&self) {
        self.observer
            .publish(self.phase(), self.attempt, self.last_error.as_ref());
    }
}

impl<M, T> Reconnect<M, T>
where
    M: Service<T>,
    T: Clone,
{
    /// Starts the clock on unavailability, if it is not running.
    fn mark_down(&mut self, now: Instant) {
        if self.down_since.is_none() {
            self.down_since = Some(now);
            self.wait_timer.arm(now + self.policy.wait_limit);
        }
    }

    /// Starts an outage, if one is not in progress; warns once per outage.
    fn begin_outage(&mut self, now: Instant, cause: &dyn fmt::Display) {
        if self.outage.is_none() {
            self.outage = Some(now);
            tracing::warn!(
                target = %self.label,
                error = %redact(&cause.to_string()),
                "connection unavailable; redialing"
            );
        }
    }

    fn dial(&mut self, now: Instant) {
        self.attempt += 1;
        self.observer.count(Counter::Dials);
        tracing::debug!(target = %self.label, attempt = self.attempt, "dialing");
        self.mark_down(now);
        // A fresh clone of the target each time: the factory resolves it
        // afresh, so DNS changes are followed.
        let future = self.make.call(self.target.clone());
        self.state = State::Connecting(Box::pin(future));
        self.timer.arm(now + self.policy.connect_timeout);
        self.publish();
    }

    fn dial_failed(&mut self, now: Instant, error: BoxError) {
        self.observer.count(Counter::DialFailures);
        tracing::debug!(
            target = %self.label,
            attempt = self.attempt,
            error = %redact(&error.to_string()),
            "dial failed"
        );
        self.begin_outage(now, &error);
        self.last_error = Some(share(error));
        self.back_off(now);
    }

    /// Waits out the next backoff delay, or gives up if a limit is reached.
    fn back_off(&mut self, now: Instant) {
        let backoff = self.policy.backoff();
        let attempts_spent = backoff
            .attempt_limit()
            .is_some_and(|limit| self.attempt >= limit);
        let time_spent = match (backoff.elapsed_limit(), self.outage) {
            (Some(limit), Some(since)) => now.duration_since(since) >= limit,
            _ => false,
        };
        if attempts_spent || time_spent {
            tracing::error!(
                target = %self.label,
                attempts = self.attempt,
                "giving up on the connection"
            );
            self.state = State::Closed(Closed::new(self.attempt, self.last_error.clone()));
            self.publish();
            return;
        }
        let delay = self.schedule.next().unwrap_or(Duration::ZERO);
        tracing::debug!(target = %self.label, ?delay, "backing off");
        self.timer.arm(now + delay);
        self.state = State::Backoff;
        self.publish();
    }

    fn connected(&mut self, now: Instant, service: M::Response) {
        tracing::debug!(target = %self.label, attempt = self.attempt, "connected");
        self.state = State::Ready(Connection {
            service,
            since: now,
            health: Arc::new(Health::new(self.policy.classifier.clone())),
            healthy: false,
        });
        self.failing_fast = false;
        self.publish();
    }

    /// The connection proved healthy: the outage is over, the backoff resets.
    fn proved_healthy(&mut self, now: Instant) {
        self.schedule.reset();
        self.down_since = None;
        let attempts = std::mem::take(&mut self.attempt);
        self.last_error = None;
        if let Some(since) = self.outage.take() {
            tracing::info!(
                target = %self.label,
                outage = ?now.duration_since(since),
                attempts,
                "connection recovered"
            );
        }
        self.publish();
    }

    /// The established connection died.
    fn lost(&mut self, now: Instant, healthy: bool, error: Option<BoxError>) {
        if let Some(lane) = &self.lane {
            lane.withdraw();
        }
        self.observer.count(Counter::Drops);
        self.mark_down(now);
        let cause: &dyn fmt::Display = match &error {
            Some(error) => error,
            None => &"a response failed with a transport error",
        };
        if healthy {
            // A healthy connection broke: a new outage, and redial at once.
            // (It may have proved healthy by time alone, unnoticed till now.)
            self.proved_healthy(now);
            self.begin_outage(now, cause);
            self.last_error = error.map(share);
            self.state = State::Dial;
            self.publish();
        } else {
            // It never proved healthy: carry on with the backoff schedule.
            tracing::debug!(
                target = %self.label,
                error = %redact(&cause.to_string()),
                "connection lost before it proved healthy"
            );
            self.begin_outage(now, cause);
            if let Some(error) = error {
                self.last_error = Some(share(error));
            }
            self.back_off(now);
        }
    }

    /// Once not ready: `Ready(Ok)` to fail fast past the wait limit, else `Pending`.
    fn poll_wait_limit(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.fail_fast {
            return Poll::Pending;
        }
        if !self.failing_fast {
            if !self.wait_timer.poll_expired(cx) {
                return Poll::Pending;
            }
            self.failing_fast = true;
            tracing::debug!(target = %self.label, "wait limit passed; failing requests fast");
            self.publish();
        }
        Poll::Ready(Ok(()))
    }
}

impl<M, T, Req> Service<Req> for Reconnect<M, T>
where
    M: Service<T>,
    M::Error: Into<BoxError>,
    M::Response: Service<Req>,
    <M::Response as Service<Req>>::Error: Into<BoxError>,
    T: Clone,
{
    type Response = <M::Response as Service<Req>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<<M::Response as Service<Req>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if let State::Ready(conn) = &mut self.state {
                // The hot path: no clock read once the connection is healthy.
                let error = if conn.health.is_dead() {
                    None
                } else {
                    match conn.service.poll_ready(cx) {
                        Poll::Ready(Ok(())) if conn.healthy => return Poll::Ready(Ok(())),
                        Poll::Ready(Ok(())) => {
                            let now = Instant::now();
                            if conn.has_proved_healthy(now, self.policy.healthy_after) {
                                conn.healthy = true;
                                if let Some(lane) = &self.lane {
                                    lane.publish(&conn.service, &conn.health);
                                }
                                self.proved_healthy(now);
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(error)) => Some(error.into()),
                        Poll::Pending => return Poll::Pending,
                    }
                };
                // It died: a transport error on a response, or its readiness.
                let now = Instant::now();
                let healthy = conn.has_proved_healthy(now, self.policy.healthy_after);
                self.lost(now, healthy, error);
                continue;
            }
            let now = Instant::now();
            match &mut self.state {
                State::Ready(_) => unreachable!("handled above"),
                State::Idle | State::Dial => match self.make.poll_ready(cx) {
                    Poll::Ready(Ok(())) => self.dial(now),
                    Poll::Ready(Err(error)) => {
                        // The factory itself failed: by tower's contract it
                        // cannot be used again, so this is the end.
                        let error = share(error.into());
                        tracing::error!(
                            target = %self.label,
                            error = %redact(&error.to_string()),
                            "connection factory failed; giving up"
                        );
                        self.last_error = Some(error);
                        self.state =
                            State::Closed(Closed::new(self.attempt, self.last_error.clone()));
                        self.publish();
                    }
                    Poll::Pending => break,
                },
                State::Backoff => {
                    if !self.timer.poll_expired(cx) {
                        break;
                    }
                    self.state = State::Dial;
                }
                State::Connecting(future) => match future.as_mut().poll(cx) {
                    Poll::Ready(Ok(service)) => self.connected(now, service),
                    Poll::Ready(Err(error)) => self.dial_failed(now, error.into()),
                    Poll::Pending => {
                        if !self.timer.poll_expired(cx) {
                            break;
                        }
                        let timeout = ConnectTimeout::new(self.policy.connect_timeout);
                        self.dial_failed(now, timeout.into());
                    }
                },
                State::Closed(closed) => return Poll::Ready(Err(closed.clone().into())),
            }
        }
        // Connecting or backing off: wait, or fail fast past the wait limit.
        self.poll_wait_limit(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match &mut self.state {
            State::Ready(conn) => {
                ResponseFuture::new(conn.service.call(request), conn.health.clone())
            }
            State::Closed(closed) => ResponseFuture::failed(closed.clone().into()),
            _ if self.failing_fast => {
                self.observer.count(Counter::FailFast);
                let down_for = self
                    .down_since
                    .map_or(Duration::ZERO, |since| since.elapsed());
                let error = Unavailable::new(down_for, self.attempt, self.last_error.clone());
                ResponseFuture::failed(error.into())
            }
            _ => panic!("Reconnect::call called before poll_ready returned Ready(Ok)"),
        }
    }
}

impl<M, T> Drop for Reconnect<M, T>
where
    M: Service<T>,
{
    fn drop(&mut self) {
        if let Some(lane) = &self.lane {
            lane.withdraw();
        }
        self.observer
            .publish(Phase::Closed, self.attempt, self.last_error.as_ref());
    }
}

impl<M, T> fmt::Debug for Reconnect<M, T>
where
    M: Service<T>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnect")
            .field("target", &self.label)
            .field("phase", &self.phase())
            .field("attempt", &self.attempt)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}
