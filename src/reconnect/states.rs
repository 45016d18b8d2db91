//! The state machine's states: what each holds, the outage that spans
//! them, and the connection with its health.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::Service;

use crate::error::{Closed, SharedError};
use crate::health::Health;
use crate::panic::{catch, POLL_READY};
use crate::policy::ReconnectPolicy;
use crate::redact::redact;
use crate::state::Down;
use crate::timer::WaitLimit;
use crate::BoxError;

/// The state machine. Each state holds what it needs, and the outage (when
/// the connection became unavailable, the dials since, the latest error)
/// lives in the states that have one.
pub(super) enum State<F, S> {
    /// Never used.
    Idle,
    /// About to dial, as soon as the factory is ready.
    Dial(Outage),
    /// A dial in flight, started at `started`.
    Connecting {
        future: Pin<Box<F>>,
        started: Instant,
        outage: Outage,
    },
    /// Waiting for the next dial.
    Backoff(Outage),
    /// Connected. The outage goes on until the connection proves healthy.
    Ready {
        conn: Connection<S>,
        outage: Option<Outage>,
    },
    /// Gave up for good; the outage that ended it, for the state watch.
    Closed(Closed, Outage),
}

/// A spell of unavailability: from the first dial, or from a healthy
/// connection's death, until a connection proves healthy.
pub(super) struct Outage {
    pub(super) attempts: u32,
    pub(super) last_error: Option<SharedError>,
    /// Whether the outage was logged: once, at its first failure.
    pub(super) reported: bool,
    pub(super) wait: WaitLimit,
}

impl Outage {
    pub(super) fn new(now: Instant, policy: &ReconnectPolicy) -> Self {
        Self {
            attempts: 0,
            last_error: None,
            reported: false,
            wait: WaitLimit::start(now, policy.wait_limit),
        }
    }

    pub(super) fn since(&self) -> Instant {
        self.wait.since()
    }

    /// What the state watch shows of it.
    pub(super) fn snapshot(&self) -> Down<'_> {
        Down {
            since: self.since(),
            attempts: self.attempts,
            last_error: self.last_error.as_ref(),
        }
    }

    /// Records a failure as the latest error; warns once per outage.
    pub(super) fn failed(&mut self, label: &str, error: SharedError) {
        if !self.reported {
            self.reported = true;
            tracing::warn!(
                target = %label,
                error = %redact(&error.to_string()),
                "connection unavailable; redialing"
            );
        }
        self.last_error = Some(error);
    }
}

pub(super) struct Connection<S> {
    pub(super) service: S,
    /// When the dial that made it started: a connection that dies before it
    /// proves healthy counts as that attempt failing.
    pub(super) dialed: Instant,
    /// When it was made: it proves healthy by time `healthy_after` later.
    pub(super) connected: Instant,
    pub(super) health: Arc<Health>,
}

impl<S> Connection<S> {
    /// The connection's readiness, or `Err` once it is dead: found so by a
    /// response (`None`: the cause is in its health), or by its own
    /// `poll_ready`, a panic there included.
    pub(super) fn poll_alive<Req>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Result<Poll<()>, Option<BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        if self.health.poll_dead(cx) {
            return Err(None);
        }
        match catch(POLL_READY, || self.service.poll_ready(cx)) {
            Ok(Poll::Ready(Ok(()))) => Ok(Poll::Ready(())),
            Ok(Poll::Pending) => Ok(Poll::Pending),
            Ok(Poll::Ready(Err(error))) => Err(Some(error.into())),
            Err(panicked) => Err(Some(panicked.into())),
        }
    }
}

/// What the state machine tells `poll_ready`.
pub(super) enum Step {
    /// The connection is ready.
    Ready,
    /// Between dials, past the wait limit: fail requests fast. `due` when
    /// the next dial is due, and waits only for the driver.
    FailFast {
        due: bool,
    },
    Pending,
    Closed(Closed),
}
