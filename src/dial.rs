//! Dial backoff for raw connectors, for clients that keep their own pool.
//!
//! [`ReconnectLayer`](crate::ReconnectLayer) owns the connection: it wraps a
//! factory of connection *services* and keeps one alive. Some clients keep
//! their own pool and only want IO from a connector: hyper-util's legacy
//! `Client` takes any `Service<Uri>` that yields IO. [`DialLayer`] wraps such
//! a raw connector (hyper-util's `HttpConnector`, this crate's
//! [`TcpConnector`](crate::connect::TcpConnector), any `Service<Target>`)
//! in a [`Dial`], which adds what the connector lacks:
//!
//! - a timeout on each attempt (the policy's
//!   [`connect_timeout`](crate::ReconnectPolicy::connect_timeout));
//! - on failure, a wait on the policy's [backoff](crate::Backoff) schedule,
//!   then another attempt;
//! - a limit, after which the dial gives up with a [`DialError`].
//!
//! A request that needs a new connection while the server restarts then waits
//! for it to come back, where the bare connector fails it at once.
//!
//! # Example
//!
//! hyper-util's legacy `Client` with dial backoff:
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::client::legacy::{connect::HttpConnector, Client};
//! use hyper_util::rt::TokioExecutor;
//! use tower::Layer;
//! use tower_redial::dial::DialLayer;
//! use tower_redial::{Backoff, BoxError, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?;
//! # tokio::spawn(async move {
//! #     loop {
//! #         let (io, _) = listener.accept().await.unwrap();
//! #         tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
//! #             hyper_util::rt::TokioIo::new(io),
//! #             hyper::service::service_fn(|_req| async {
//! #                 Ok::<_, std::convert::Infallible>(hyper::Response::new(
//! #                     http_body_util::Full::new(Bytes::from("hello")),
//! #                 ))
//! #             }),
//! #         ));
//! #     }
//! # });
//! let policy = ReconnectPolicy::builder()
//!     .backoff(Backoff::exponential(
//!         Duration::from_millis(50),
//!         2.0,
//!         Duration::from_secs(1),
//!     ))
//!     .connect_timeout(Duration::from_secs(2))
//!     // No attempt or time limit on the backoff: each dial gives up 5 s after
//!     // it started.
//!     .wait_limit(Duration::from_secs(5))
//!     .build()?;
//!
//! let connector = DialLayer::new(policy).layer(HttpConnector::new());
//! let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
//!
//! let response = client.get(format!("http://{addr}/").parse()?).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "hello");
//! # Ok(())
//! # }
//! ```
//!
//! # Limits
//!
//! Each call to [`Dial`] starts its own walk along the backoff schedule; calls
//! never share or reset each other's delays. The first attempt is made at
//! once; each failed attempt (an error, or the connect timeout) is followed by
//! the next delay, then another attempt, until one of these limits:
//!
//! | the policy's backoff has | the dial gives up |
//! |---|---|
//! | an attempt limit `n` ([`Backoff::max_attempts`](crate::Backoff::max_attempts)) | when the `n`-th attempt fails |
//! | a time limit `d` ([`Backoff::max_elapsed`](crate::Backoff::max_elapsed)) | when an attempt fails `d` or more after the call |
//! | both | at whichever comes first |
//! | neither | by the policy's [wait limit](crate::ReconnectPolicy::wait_limit), see below |
//!
//! With neither limit set, the [wait limit](crate::ReconnectPolicy::wait_limit)
//! bounds how long a dial may take in all, so that a request never waits for
//! a connection without bound: an attempt still running at the wait limit is
//! cut short, and when the next backoff delay would end at or past the wait
//! limit the dial gives up at once instead of sleeping in vain. The error
//! therefore comes back no later than the wait limit after the call.
//!
//! The attempt and time limits follow the same rules as in
//! [`Reconnect`](crate::reconnect::Reconnect); unlike the wait limit they are checked
//! after a failed attempt, so a dial may overrun the time limit by one delay
//! and one connect timeout.
//!
//! # Errors
//!
//! A dial that gives up fails with a [`DialError`], whose
//! [`source()`](std::error::Error::source) is the last attempt's error: the
//! connector's own error, or a [`ConnectTimeout`].
//! hyper-util's legacy `Client` wraps it in its own error (`is_connect()` is
//! `true`); walk the `source()` chain to find it.
//!
//! If the connector's `poll_ready` fails, the connector cannot be used again
//! (tower's contract), so the dial ends at once with that error as it is.
//!
//! # Readiness and `Clone`
//!
//! [`Dial::poll_ready`](tower::Service::poll_ready) is the connector's.
//! `call` moves the connector that was polled ready into the returned future
//! and keeps a clone in its place, so the connector must be `Clone`. The
//! future polls its connector ready again before every later attempt.
//!
//! # Logging
//!
//! Each attempt, failure and backoff is a `tracing` event at `debug` level.
//! The target is printed by its `Debug` form, with URL and connection-string
//! passwords masked.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::backoff::Schedule;
use crate::error::{share, ConnectTimeout, DialError};
use crate::policy::ReconnectPolicy;
use crate::redact::{redact, redacted};
use crate::timer::{self, Timer};
use crate::BoxError;

/// Wraps a raw connector in a [`Dial`]: connect timeout, backoff and limits.
///
/// See the [module docs](self) for an example and the rules.
#[derive(Clone, Debug)]
pub struct DialLayer {
    policy: ReconnectPolicy,
}

impl DialLayer {
    /// A layer that dials by `policy`: its backoff (and the backoff's limits),
    /// connect timeout and wait limit. The policy's queue, retry and
    /// health settings are not used.
    pub fn new(policy: ReconnectPolicy) -> Self {
        Self { policy }
    }
}

impl<C> Layer<C> for DialLayer {
    type Service = Dial<C>;

    fn layer(&self, connector: C) -> Dial<C> {
        Dial::new(connector, self.policy.clone())
    }
}

/// A connector that retries failed dials with backoff, within limits.
///
/// As a `Service<Target>`, each call tries the wrapped connector, with the
/// policy's connect timeout on each attempt, and on failure tries again after
/// the next backoff delay until a limit is reached. See the
/// [module docs](self) for an example, the limits and the errors.
///
/// The target must be `Clone`, since each attempt is given a fresh clone
/// (and so is resolved afresh), and `Debug`, for the logs.
///
/// A `Dial` is for clients that take a raw connector. Under
/// [`ReconnectLayer`](crate::ReconnectLayer), which redials with the same
/// policy on its own, use the bare connector: stacking both would back off
/// twice.
#[derive(Clone, Debug)]
pub struct Dial<C> {
    inner: C,
    policy: ReconnectPolicy,
}

impl<C> Dial<C> {
    /// Wraps `connector`, dialing by `policy`.
    pub fn new(connector: C, policy: ReconnectPolicy) -> Self {
        Self {
            inner: connector,
            policy,
        }
    }

    /// The wrapped connector.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The wrapped connector, mutably.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwraps the connector.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<C, T> Service<T> for Dial<C>
where
    C: Service<T> + Clone,
    C::Error: Into<BoxError>,
    T: Clone + fmt::Debug,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = DialFuture<C, T>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: T) -> DialFuture<C, T> {
        // The connector that was polled ready goes into the future; a fresh
        // clone, not yet ready, stays behind for the next `poll_ready`.
        let clone = self.inner.clone();
        let connector = std::mem::replace(&mut self.inner, clone);
        DialFuture::new(connector, target, &self.policy)
    }
}

/// When a dial gives up, taken from the policy at the call, beside the
/// backoff's own limits (checked by `Backoff::gives_up`).
#[derive(Clone, Copy, Debug)]
struct Limits {
    connect_timeout: Duration,
    /// The wait limit as an instant, when the backoff has no limit of its own.
    deadline: Option<Instant>,
}

pin_project! {
    /// The future of [`Dial`]: attempts, with backoff between them, until one
    /// connects or a limit is reached.
    ///
    /// It is `Unpin` when the connector's future is, as hyper-util's legacy
    /// `Client` requires.
    pub struct DialFuture<C, T>
    where
        C: Service<T>,
    {
        #[pin]
        state: State<C::Future>,
        connector: C,
        target: T,
        schedule: Schedule,
        limits: Limits,
        started: Instant,
        attempts: u32,
        attempt_timeout: Duration,
        // The timer is armed lazily, on the next poll, because creating a
        // `Sleep` needs a runtime and `call` may be made outside one.
        timer: Timer,
        wake_at: Instant,
        armed: bool,
        last_error: Option<BoxError>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // The connector was polled ready and called; the timer is the
        // attempt's timeout.
        Connecting { #[pin] future: F },
        // Waiting out a backoff delay; the timer is its end.
        Backoff,
        // Waiting for the connector to be ready for the next attempt; the
        // timer is the attempt's timeout.
        Polling,
        Done,
    }
}

impl<C, T> DialFuture<C, T>
where
    C: Service<T>,
    T: Clone + fmt::Debug,
{
    fn new(mut connector: C, target: T, policy: &ReconnectPolicy) -> Self {
        let started = Instant::now();
        let backoff = policy.backoff();
        let deadline = match (backoff.attempt_limit(), backoff.elapsed_limit()) {
            (None, None) => Some(timer::deadline(started, policy.wait_limit())),
            _ => None,
        };
        let limits = Limits {
            connect_timeout: policy.connect_timeout(),
            deadline,
        };
        tracing::debug!(target = %redacted(&target), attempt = 1, "dialing");
        let future = connector.call(target.clone());
        let attempt_timeout = attempt_timeout(&limits, started);
        Self {
            state: State::Connecting { future },
            connector,
            target,
            schedule: policy.schedule(),
            limits,
            started,
            attempts: 1,
            attempt_timeout,
            timer: Timer::default(),
            wake_at: timer::deadline(started, attempt_timeout),
            armed: false,
            last_error: None,
        }
    }
}

/// The timeout for an attempt starting `now`: the connect timeout, cut short
/// by the wait limit when that bounds the dial.
fn attempt_timeout(limits: &Limits, now: Instant) -> Duration {
    match limits.deadline {
        Some(deadline) => limits
            .connect_timeout
            .min(deadline.saturating_duration_since(now)),
        None => limits.connect_timeout,
    }
}

impl<C, T> Future for DialFuture<C, T>
where
    C: Service<T>,
    C::Error: Into<BoxError>,
    T: Clone + fmt::Debug,
{
    type Output = Result<C::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if !*this.armed {
                this.timer.arm(*this.wake_at);
                *this.armed = true;
            }
            let failure: BoxError = match this.state.as_mut().project() {
                StateProj::Connecting { future } => match future.poll(cx) {
                    Poll::Ready(Ok(io)) => {
                        tracing::debug!(
                            target = %redacted(&*this.target),
                            attempt = *this.attempts,
                            "connected"
                        );
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(io));
                    }
                    Poll::Ready(Err(error)) => error.into(),
                    Poll::Pending => {
                        if !this.timer.poll_expired(cx) {
                            return Poll::Pending;
                        }
                        ConnectTimeout::new(*this.attempt_timeout).into()
                    }
                },
                StateProj::Backoff => {
                    if !this.timer.poll_expired(cx) {
                        return Poll::Pending;
                    }
                    let now = Instant::now();
                    let timeout = attempt_timeout(this.limits, now);
                    if timeout.is_zero() {
                        // The wait limit passed while backing off.
                        this.state.set(State::Done);
                        let last_error = this
                            .last_error
                            .take()
                            .expect("a dial backs off only after a failed attempt");
                        return Poll::Ready(Err(give_up(
                            *this.attempts,
                            now.duration_since(*this.started),
                            last_error,
                            &*this.target,
                        )));
                    }
                    *this.attempts += 1;
                    *this.attempt_timeout = timeout;
                    *this.wake_at = timer::deadline(now, timeout);
                    *this.armed = false;
                    this.state.set(State::Polling);
                    continue;
                }
                StateProj::Polling => match this.connector.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        tracing::debug!(
                            target = %redacted(&*this.target),
                            attempt = *this.attempts,
                            "dialing"
                        );
                        let future = this.connector.call(this.target.clone());
                        this.state.set(State::Connecting { future });
                        continue;
                    }
                    Poll::Ready(Err(error)) => {
                        // tower's contract: a connector whose `poll_ready`
                        // failed cannot be used again.
                        let error = error.into();
                        tracing::debug!(
                            target = %redacted(&*this.target),
                            error = %redact(&error.to_string()),
                            "connector failed; giving up"
                        );
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error));
                    }
                    Poll::Pending => {
                        if !this.timer.poll_expired(cx) {
                            return Poll::Pending;
                        }
                        ConnectTimeout::new(*this.attempt_timeout).into()
                    }
                },
                StateProj::Done => panic!("DialFuture polled after completion"),
            };

            // The attempt failed: drop it, then back off or give up.
            this.state.set(State::Backoff);
            let now = Instant::now();
            let elapsed = now.duration_since(*this.started);
            tracing::debug!(
                target = %redacted(&*this.target),
                attempt = *this.attempts,
                error = %redact(&failure.to_string()),
                "dial failed"
            );

            let limits = *this.limits;
            let delay = if this.schedule.backoff().gives_up(*this.attempts, elapsed) {
                None
            } else {
                let delay = this.schedule.next().unwrap_or(Duration::ZERO);
                // Under the wait limit, give up as soon as the next attempt
                // could not start before it.
                match limits.deadline {
                    Some(deadline) if timer::deadline(now, delay) >= deadline => None,
                    _ => Some(delay),
                }
            };
            let Some(delay) = delay else {
                this.state.set(State::Done);
                return Poll::Ready(Err(give_up(
                    *this.attempts,
                    elapsed,
                    failure,
                    &*this.target,
                )));
            };
            tracing::debug!(target = %redacted(&*this.target), ?delay, "backing off");
            *this.last_error = Some(failure);
            *this.wake_at = timer::deadline(now, delay);
            *this.armed = false;
        }
    }
}

fn give_up<T: fmt::Debug>(
    attempts: u32,
    elapsed: Duration,
    last_error: BoxError,
    target: &T,
) -> BoxError {
    tracing::debug!(
        target = %redacted(target),
        attempts,
        ?elapsed,
        "dial gave up"
    );
    Box::new(DialError::new(attempts, elapsed, share(last_error)))
}

impl<C, T> fmt::Debug for DialFuture<C, T>
where
    C: Service<T>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use tower::{service_fn, ServiceExt};

    use super::*;
    use crate::Backoff;

    fn refused(_: &'static str) -> std::future::Ready<io::Result<()>> {
        std::future::ready(Err(io::ErrorKind::ConnectionRefused.into()))
    }

    /// Delays and limits of `Duration::MAX` saturate instead of overflowing
    /// the clock: the dial backs off "forever", then gives up by its limit.
    #[tokio::test(start_paused = true)]
    async fn the_longest_delays_do_not_overflow_the_clock() {
        let limited = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::MAX).max_attempts(2))
            .connect_timeout(Duration::MAX)
            .build()
            .unwrap();
        let unlimited = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::MAX))
            .connect_timeout(Duration::MAX)
            .wait_limit(Duration::MAX)
            .build()
            .unwrap();
        for policy in [limited, unlimited] {
            let dial = Dial::new(service_fn(refused), policy);
            // Paused time: a century passes as soon as nothing else runs.
            let century = Duration::from_secs(100 * 365 * 86_400);
            let error = tokio::time::timeout(century, dial.oneshot("db"))
                .await
                .expect("the dial gives up, not within a century")
                .unwrap_err();
            assert!(error.is::<DialError>(), "{error}");
        }
    }
}
