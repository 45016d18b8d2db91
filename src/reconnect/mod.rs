//! The reconnecting service and its state machine.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;

use crate::backoff::Schedule;
use crate::driver::{Drive, Drove};
use crate::error::{share, Closed, ConnectTimeout, SharedError, Unavailable};
use crate::health::Health;
use crate::lane::Publish;
use crate::panic::{catch, poll_caught, CALL};
use crate::policy::ReconnectPolicy;
use crate::redact::{redact, redacted};
use crate::state::{Counter, Observer, Phase, Snapshot, Stats};
use crate::timer::{deadline, Timer};
use crate::BoxError;

mod future;
mod states;

use future::Deadline;
pub use future::ResponseFuture;
use states::{Connection, Outage, State, Step};

/// A service that owns at most one connection and re-makes it when it breaks.
///
/// `Reconnect` calls its factory `M` with a clone of its target to make a
/// connection `M::Response`, forwards requests to it, and redials with the
/// [`ReconnectPolicy`]'s backoff when the connection dies. Most users get one
/// inside a [`Client`](crate::Client), which adds the queue, safe retry and
/// a task that keeps the connection up with no traffic; use it directly
/// where you need the bare readiness, for example one per endpoint under
/// `tower::balance`.
///
/// # States
///
/// | phase | `poll_ready` | `call` |
/// |---|---|---|
/// | [`Idle`](Phase::Idle) | starts the first dial | — |
/// | [`Connecting`](Phase::Connecting) | `Pending` until the dial ends, even past the wait limit | — |
/// | [`Backoff`](Phase::Backoff) | `Pending` | — |
/// | [`Ready`](Phase::Ready) | the connection's own `poll_ready` | forwarded |
/// | [`FailFast`](Phase::FailFast) | `Ready(Ok)` | fails at once with [`Unavailable`] |
/// | [`Closed`](Phase::Closed) | `Err(`[`Closed`]`)` | — |
///
/// It dials lazily, on the first `poll_ready`. Redialing never shows up as an
/// error or as a false readiness: `poll_ready` stays `Pending` until a new
/// connection is ready, so a balancer routes around it. Once the connection
/// has been unavailable for longer than the wait limit, it reports ready
/// between dials (gRPC's TRANSIENT_FAILURE), to fail requests fast with the
/// latest dial error; while a dial is in flight (CONNECTING), requests wait
/// for its outcome, bounded by the connect timeout. `Err` means [`Closed`],
/// for good.
///
/// A connection counts as dead when its `poll_ready` fails, or when a
/// response fails with an error that the [`Classifier`](crate::classify::Classifier)
/// calls dead. The first redial after a healthy connection dies is
/// immediate; later ones follow the backoff, each due a backoff delay after
/// the *start* of the attempt before it. The backoff starts over only once a
/// new connection proves healthy, by one successful response or by staying
/// up for [`healthy_after`](ReconnectPolicy::healthy_after), so a server that
/// accepts and at once closes cannot cause a hot loop.
///
/// # Driving
///
/// `Reconnect` moves only when polled. Every timer, dial and connection it
/// holds wakes the task that last polled `poll_ready`, so a task that keeps
/// polling it whenever woken keeps it connected with no requests at all.
/// [`Client`](crate::Client) does exactly that on its own task; a bare
/// `Reconnect` under `tower::balance` is polled by the balancer.
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
    /// The deadline of the current state: the connect timeout while
    /// connecting, the next dial while backing off, proof by time while a
    /// new connection is unproven.
    timer: Timer,
    /// Off for a balancer's endpoints: the balanced client fails fast as a whole.
    fail_fast: bool,
    /// Set when a driver (the client's task) moves it along: then, past the
    /// wait limit, only the driver starts a dial, once the requests that
    /// waited through the failed one have failed.
    driven: bool,
    observer: Arc<Observer>,
    /// Where a healthy connection is published for handles to call directly;
    /// see [`MakeReconnect::multiplexed`](crate::MakeReconnect::multiplexed).
    lane: Option<Box<dyn Publish<M::Response>>>,
}

/// Where a factory's or a dial's panic came from.
const FACTORY_POLL_READY: &str = "the connection factory's `poll_ready`";
const FACTORY_CALL: &str = "the connection factory's `call`";
const DIAL: &str = "the dial";

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
        let label: Arc<str> = redacted(&target).into();
        Self {
            make,
            observer: Arc::new(Observer::new(label.clone())),
            label,
            target,
            schedule: policy.schedule(),
            policy,
            state: State::Idle,
            timer: Timer::default(),
            fail_fast: true,
            driven: false,
            lane: None,
        }
    }

    /// From now on a driver moves this service: see [`Drive`].
    pub(crate) fn driven(mut self) -> Self {
        self.driven = true;
        self
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
        endpoint.observer = Arc::new(Observer::with_parent(endpoint.label.clone(), parent));
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

    /// The phase, from the state alone.
    fn phase(&self) -> Phase {
        match &self.state {
            State::Idle => Phase::Idle,
            State::Dial(outage) | State::Backoff(outage) if outage.wait.passed() => Phase::FailFast,
            State::Dial(_) | State::Connecting { .. } => Phase::Connecting,
            State::Backoff(_) => Phase::Backoff,
            State::Ready { .. } => Phase::Ready,
            State::Closed(..) => Phase::Closed,
        }
    }

    fn outage(&self) -> Option<&Outage> {
        match &self.state {
            State::Dial(outage) | State::Backoff(outage) | State::Connecting { outage, .. } => {
                Some(outage)
            }
            State::Ready { outage, .. } => outage.as_ref(),
            State::Closed(_, outage) => Some(outage),
            State::Idle => None,
        }
    }

    /// What the state watch shows: the phase, the dials in this outage and
    /// the latest error (by identity).
    fn signature(&self) -> (Phase, u32, Option<*const ()>) {
        let outage = self.outage();
        (
            self.phase(),
            outage.map_or(0, |outage| outage.attempts),
            outage
                .and_then(|outage| outage.last_error.as_ref())
                .map(|error| Arc::as_ptr(error).cast::<()>()),
        )
    }

    fn publish(&self) {
        self.observer
            .publish(self.phase(), self.outage().map(Outage::snapshot));
    }
}

impl<M, T> Reconnect<M, T>
where
    M: Service<T>,
    M::Error: Into<BoxError>,
    T: Clone,
{
    /// Starts a dial: the factory was polled ready. Returns whether the
    /// dial failed at once (the factory panicked).
    fn dial(&mut self, now: Instant, mut outage: Outage) -> bool {
        outage.attempts += 1;
        self.observer.count(Counter::Dials);
        tracing::debug!(target = %self.label, attempt = outage.attempts, "dialing");
        // A fresh clone of the target each time: the factory resolves it
        // afresh, so DNS changes are followed.
        let target = self.target.clone();
        match catch(FACTORY_CALL, || self.make.call(target)) {
            Ok(future) => {
                self.timer.arm(deadline(now, self.policy.connect_timeout));
                self.state = State::Connecting {
                    future: Box::pin(future),
                    started: now,
                    outage,
                };
                false
            }
            Err(panicked) => {
                self.dial_failed(now, now, outage, panicked.into());
                true
            }
        }
    }

    fn dial_failed(&mut self, now: Instant, started: Instant, mut outage: Outage, error: BoxError) {
        self.observer.count(Counter::DialFailures);
        tracing::debug!(
            target = %self.label,
            attempt = outage.attempts,
            error = %redact(&error.to_string()),
            "dial failed"
        );
        outage.failed(&self.label, share(error));
        self.back_off(now, started, outage);
    }

    /// Waits for the next dial, due a backoff delay after `started` (the
    /// start of the attempt that failed), or gives up at a limit.
    fn back_off(&mut self, now: Instant, started: Instant, outage: Outage) {
        let backoff = self.policy.backoff();
        if backoff.gives_up(
            outage.attempts,
            now.saturating_duration_since(outage.since()),
        ) {
            tracing::error!(
                target = %self.label,
                attempts = outage.attempts,
                "giving up on the connection"
            );
            let closed = Closed::new(
                self.label.clone(),
                outage.attempts,
                outage.last_error.clone(),
            );
            self.close(closed, outage);
            return;
        }
        let delay = self.schedule.next().unwrap_or_default();
        tracing::debug!(target = %self.label, ?delay, "backing off");
        self.timer.arm(deadline(started, delay));
        self.state = State::Backoff(outage);
    }

    fn close(&mut self, closed: Closed, outage: Outage) {
        if let Some(lane) = &self.lane {
            lane.withdraw();
        }
        self.state = State::Closed(closed, outage);
    }

    fn connected(&mut self, now: Instant, started: Instant, outage: Outage, service: M::Response) {
        tracing::debug!(target = %self.label, attempt = outage.attempts, "connected");
        self.timer.arm(deadline(now, self.policy.healthy_after));
        self.state = State::Ready {
            conn: Connection {
                service,
                dialed: started,
                connected: now,
                health: Arc::new(Health::new(self.policy.classifier.clone())),
            },
            outage: Some(outage),
        };
    }

    /// The new connection proved healthy: the outage is over, the backoff
    /// starts over, and a multiplexed connection is published.
    fn proved_healthy(&mut self, now: Instant) {
        let State::Ready { conn, outage } = &mut self.state else {
            return;
        };
        let Some(outage) = outage.take() else {
            return;
        };
        // Proof by time is no longer needed: keep the runtime's timer wheel
        // empty while the connection is up.
        self.timer.disarm();
        if let Some(lane) = &self.lane {
            lane.publish(&conn.service, &conn.health, self.policy.response_timeout);
        }
        self.recovered(now, &outage);
    }

    /// An outage ended: the backoff starts over.
    fn recovered(&mut self, now: Instant, outage: &Outage) {
        self.schedule.reset();
        if outage.reported {
            tracing::info!(
                target = %self.label,
                outage = ?now.saturating_duration_since(outage.since()),
                attempts = outage.attempts,
                "connection recovered"
            );
        }
    }

    /// The connection died: `error` is why, if its `poll_ready` said so.
    fn lost(&mut self, now: Instant, error: Option<BoxError>) {
        let State::Ready { conn, outage } = mem::replace(&mut self.state, State::Idle) else {
            unreachable!("only a connection can be lost");
        };
        if let Some(lane) = &self.lane {
            lane.withdraw();
        }
        self.observer.count(Counter::Drops);
        // It may have proved healthy unnoticed: by a response, or by time.
        let outage = match outage {
            Some(outage)
                if conn.health.is_proven()
                    || now >= deadline(conn.connected, self.policy.healthy_after) =>
            {
                self.recovered(now, &outage);
                None
            }
            outage => outage,
        };
        let error: SharedError = match (error, conn.health.cause()) {
            (Some(error), _) => share(error),
            (None, Some(cause)) => share(cause.into()),
            (None, None) => share("the connection was found dead".into()),
        };
        match outage {
            None => {
                // A healthy connection broke: a new outage, and redial at once.
                let mut outage = Outage::new(now, &self.policy);
                outage.failed(&self.label, error);
                self.state = State::Dial(outage);
            }
            Some(mut outage) => {
                // It never proved healthy: that attempt failed, and the
                // backoff goes on from its start.
                tracing::debug!(
                    target = %self.label,
                    error = %redact(&error.to_string()),
                    "connection lost before it proved healthy"
                );
                outage.failed(&self.label, error);
                self.back_off(now, conn.dialed, outage);
            }
        }
    }

    /// Whether a dial that is due may start now. Past the wait limit,
    /// requests that waited through a failed dial fail before the next one
    /// starts (gRPC fails them on TRANSIENT_FAILURE): so not in the step
    /// that saw the failure, and, when a driver moves this service, only in
    /// the driver's step, which comes after the queue has been served.
    fn may_dial(&self, failing: bool, just_failed: bool, driving: bool) -> bool {
        !failing || (!just_failed && (driving || !self.driven))
    }

    /// Moves the state machine as far as it goes now, registering the task
    /// for whatever moves it next. `driving` when called by the driver
    /// rather than for a request.
    fn step<Req>(&mut self, cx: &mut Context<'_>, driving: bool) -> Step
    where
        M::Response: Service<Req>,
        <M::Response as Service<Req>>::Error: Into<BoxError>,
    {
        let mut just_failed = false;
        loop {
            let now = match &mut self.state {
                State::Ready { conn, outage } => match conn.poll_alive(cx) {
                    Ok(ready) => {
                        // No clock read once proven.
                        if outage.is_some()
                            && (conn.health.is_proven() || self.timer.poll_expired(cx))
                        {
                            self.proved_healthy(Instant::now());
                        }
                        return if ready.is_ready() {
                            Step::Ready
                        } else {
                            Step::Pending
                        };
                    }
                    Err(error) => {
                        self.lost(Instant::now(), error);
                        just_failed = true;
                        continue;
                    }
                },
                State::Closed(closed, _) => return Step::Closed(closed.clone()),
                _ => Instant::now(),
            };
            match mem::replace(&mut self.state, State::Idle) {
                State::Idle => self.state = State::Dial(Outage::new(now, &self.policy)),
                State::Dial(mut outage) => {
                    let failing = self.fail_fast && outage.wait.poll_passed(cx);
                    if failing && outage.last_error.is_none() {
                        // Past the wait limit with no dial made: the factory
                        // has not been ready. Say so.
                        let cause = "the connection factory was not ready to dial";
                        outage.last_error = Some(share(cause.into()));
                    }
                    if !self.may_dial(failing, just_failed, driving) {
                        self.state = State::Dial(outage);
                        return Step::FailFast { due: true };
                    }
                    match catch(FACTORY_POLL_READY, || self.make.poll_ready(cx)) {
                        Err(panicked) => {
                            self.dial_failed(now, now, outage, panicked.into());
                            just_failed = true;
                        }
                        Ok(Poll::Ready(Ok(()))) => just_failed |= self.dial(now, outage),
                        Ok(Poll::Ready(Err(error))) => {
                            // The factory itself failed: by tower's contract it
                            // cannot be used again, so this is the end.
                            let error = share(error.into());
                            tracing::error!(
                                target = %self.label,
                                error = %redact(&error.to_string()),
                                "connection factory failed; giving up"
                            );
                            let label = self.label.clone();
                            outage.last_error = Some(error.clone());
                            let closed = Closed::factory_failed(label, outage.attempts, error);
                            self.close(closed, outage);
                        }
                        Ok(Poll::Pending) => {
                            self.state = State::Dial(outage);
                            return if failing {
                                Step::FailFast { due: false }
                            } else {
                                Step::Pending
                            };
                        }
                    }
                }
                State::Connecting {
                    mut future,
                    started,
                    outage,
                } => match poll_caught(DIAL, future.as_mut(), cx) {
                    Poll::Ready(Ok(service)) => self.connected(now, started, outage, service),
                    Poll::Ready(Err(error)) => {
                        self.dial_failed(now, started, outage, error);
                        just_failed = true;
                    }
                    Poll::Pending if self.timer.poll_expired(cx) => {
                        let timeout = ConnectTimeout::new(self.policy.connect_timeout);
                        self.dial_failed(now, started, outage, timeout.into());
                        just_failed = true;
                    }
                    Poll::Pending => {
                        self.state = State::Connecting {
                            future,
                            started,
                            outage,
                        };
                        return Step::Pending;
                    }
                },
                State::Backoff(mut outage) => {
                    let due = self.timer.poll_expired(cx);
                    let failing = self.fail_fast && outage.wait.poll_passed(cx);
                    if due && self.may_dial(failing, just_failed, driving) {
                        self.state = State::Dial(outage);
                        continue;
                    }
                    self.state = State::Backoff(outage);
                    return if failing {
                        Step::FailFast { due }
                    } else {
                        Step::Pending
                    };
                }
                State::Ready { .. } | State::Closed(..) => unreachable!("handled above"),
            }
        }
    }
}

impl<M, T> Reconnect<M, T>
where
    M: Service<T>,
    M::Error: Into<BoxError>,
    T: Clone,
{
    /// A step, published on the state watch if it changed what shows there.
    fn observed_step<Req>(&mut self, cx: &mut Context<'_>, driving: bool) -> Step
    where
        M::Response: Service<Req>,
        <M::Response as Service<Req>>::Error: Into<BoxError>,
    {
        // The hot path: a proven connection that is ready or busy changes
        // nothing the watch shows, so nothing is compared or published.
        if let State::Ready { conn, outage: None } = &mut self.state {
            match conn.poll_alive(cx) {
                Ok(Poll::Ready(())) => return Step::Ready,
                Ok(Poll::Pending) => return Step::Pending,
                // The full step takes it from here, and publishes the drop.
                Err(error) => self.lost(Instant::now(), error),
            }
        }
        let before = self.signature();
        let step = self.step(cx, driving);
        let after = self.signature();
        if after != before {
            self.log_phase_change(before.0, after.0);
            self.publish();
        }
        step
    }

    /// The debug line for the start of failing fast; log only.
    fn log_phase_change(&self, before: Phase, after: Phase) {
        if after == Phase::FailFast && before != Phase::FailFast {
            tracing::debug!(target = %self.label, "wait limit passed; failing requests fast");
        }
    }
}

impl<M, T, Req> Drive<Req> for Reconnect<M, T>
where
    M: Service<T>,
    M::Error: Into<BoxError>,
    M::Response: Service<Req>,
    <M::Response as Service<Req>>::Error: Into<BoxError>,
    T: Clone,
{
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Drove {
        match self.observed_step(cx, true) {
            Step::Ready | Step::FailFast { due: false } => Drove::Ready,
            Step::FailFast { due: true } => Drove::Flush,
            Step::Pending => Drove::Waiting,
            Step::Closed(_) => Drove::Closed,
        }
    }

    /// Settled when the connection is ready: the driver's step would find
    /// what this one found. Failing fast is not settled: the driver's step
    /// may dial where a request's may not.
    fn poll_ready_settled(&mut self, cx: &mut Context<'_>) -> (Poll<Result<(), BoxError>>, bool) {
        let step = self.observed_step(cx, false);
        let settled = matches!(step, Step::Ready);
        (ready(step), settled)
    }
}

/// What `poll_ready` answers for a step.
fn ready(step: Step) -> Poll<Result<(), BoxError>> {
    match step {
        Step::Ready | Step::FailFast { .. } => Poll::Ready(Ok(())),
        Step::Pending => Poll::Pending,
        Step::Closed(closed) => Poll::Ready(Err(closed.into())),
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
        ready(self.observed_step(cx, false))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match &mut self.state {
            State::Ready { conn, .. } => {
                match catch(CALL, || conn.service.call(request)) {
                    Ok(future) => {
                        // A connection without a direct lane serves one
                        // request at a time.
                        let one_at_a_time = self.lane.is_none();
                        let deadline = self
                            .policy
                            .response_timeout
                            .map(|after| Deadline::new(after, one_at_a_time));
                        let poisoned = one_at_a_time && !self.policy.cancel_safe;
                        ResponseFuture::new(future, conn.health.clone(), deadline, poisoned)
                    }
                    Err(panicked) => {
                        conn.health.mark_dead();
                        ResponseFuture::failed(panicked.into())
                    }
                }
            }
            State::Closed(closed, _) => ResponseFuture::failed(closed.clone().into()),
            State::Dial(outage) | State::Backoff(outage) if outage.wait.passed() => {
                self.observer.count(Counter::FailFast);
                let down_for = Instant::now().saturating_duration_since(outage.since());
                let error = Unavailable::new(
                    self.label.clone(),
                    down_for,
                    outage.attempts,
                    outage.last_error.clone(),
                );
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
            .publish(Phase::Closed, self.outage().map(Outage::snapshot));
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
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::task::Context;
    use std::time::Duration;

    use futures_util::task::noop_waker;
    use tower::service_fn;

    use super::*;
    use crate::Backoff;

    type Make = tower::util::ServiceFn<
        fn(
            (),
        ) -> std::future::Ready<
            Result<
                tower::util::ServiceFn<fn(u8) -> std::future::Ready<Result<u8, BoxError>>>,
                BoxError,
            >,
        >,
    >;

    fn refusing() -> Make {
        service_fn(|()| {
            std::future::ready(Err(io::Error::from(io::ErrorKind::ConnectionRefused).into()))
        })
    }

    type Echo = tower::util::ServiceFn<fn(u8) -> std::future::Ready<Result<u8, BoxError>>>;

    fn echo(n: u8) -> std::future::Ready<Result<u8, BoxError>> {
        std::future::ready(Ok(n))
    }

    fn connect(_: ()) -> std::future::Ready<Result<Echo, BoxError>> {
        std::future::ready(Ok(service_fn(echo as fn(u8) -> _)))
    }

    fn echoing() -> Make {
        service_fn(connect as fn(()) -> _)
    }

    /// `call` before `poll_ready` returned ready is a bug in the caller, and
    /// panics with a clear message, as tower's contract says.
    #[tokio::test]
    #[should_panic(expected = "called before poll_ready")]
    async fn call_before_ready_panics() {
        let mut reconnect = Reconnect::new(refusing(), (), ReconnectPolicy::default());
        drop(Service::<u8>::call(&mut reconnect, 1));
    }

    /// Once closed, `poll_ready` fails with `Closed`, and a `call` made
    /// anyway fails with it too instead of panicking.
    #[tokio::test(start_paused = true)]
    async fn a_closed_service_fails_calls_with_closed() {
        let policy = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::from_millis(1)).max_attempts(1))
            .build()
            .unwrap();
        let mut reconnect = Reconnect::new(refusing(), (), policy);
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let ready = Service::<u8>::poll_ready(&mut reconnect, &mut cx);
        let Poll::Ready(Err(error)) = ready else {
            panic!("closed after one refused dial: {ready:?}");
        };
        assert!(error.is::<Closed>());
        let error = Service::<u8>::call(&mut reconnect, 1).await.unwrap_err();
        let closed = error.downcast_ref::<Closed>().expect("Closed");
        assert_eq!(closed.attempts(), 1);
    }

    /// Only a ready connection settles the service for the driver: not a
    /// service waiting for its backoff, nor one failing fast (the driver's
    /// own step may dial where a request's may not).
    #[tokio::test(start_paused = true)]
    async fn only_a_ready_connection_settles() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut up = Reconnect::new(echoing(), (), ReconnectPolicy::default());
        let (ready, settled) = Drive::<u8>::poll_ready_settled(&mut up, &mut cx);
        assert!(matches!(ready, Poll::Ready(Ok(()))) && settled);

        let waiting = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::from_secs(1)))
            .wait_limit(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut down = Reconnect::new(refusing(), (), waiting);
        let (ready, settled) = Drive::<u8>::poll_ready_settled(&mut down, &mut cx);
        assert!(ready.is_pending() && !settled);

        let failing = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::from_secs(1)))
            .wait_limit(Duration::from_millis(1))
            .build()
            .unwrap();
        let mut fast = Reconnect::new(refusing(), (), failing);
        let _ = Drive::<u8>::poll_ready_settled(&mut fast, &mut cx);
        tokio::time::advance(Duration::from_millis(2)).await;
        let (ready, settled) = Drive::<u8>::poll_ready_settled(&mut fast, &mut cx);
        assert_eq!(fast.phase(), Phase::FailFast);
        assert!(matches!(ready, Poll::Ready(Ok(()))) && !settled);
    }

    /// `call` while the service is backing off, before the wait limit
    /// (`poll_ready` was `Pending`), is a bug in the caller too: it panics,
    /// rather than failing the request as if the wait limit had passed.
    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "called before poll_ready")]
    async fn call_while_backing_off_panics() {
        let policy = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::from_secs(1)))
            .wait_limit(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut reconnect = Reconnect::new(refusing(), (), policy);
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Service::<u8>::poll_ready(&mut reconnect, &mut cx).is_pending());
        assert_eq!(reconnect.phase(), Phase::Backoff);
        drop(Service::<u8>::call(&mut reconnect, 1));
    }
}
