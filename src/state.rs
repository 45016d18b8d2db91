//! The watchable state of a connection, and its counters.
//!
//! [`Client::state`](crate::Client::state) returns a
//! [`watch::Receiver`] of [`Snapshot`]s: the
//! current [`Phase`], the dial attempt, the last dial error and when the phase
//! was entered. [`Client::stats`](crate::Client::stats) returns [`Stats`], a
//! copy of the counters.
//!
//! # Example
//!
//! ```
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_redial::state::Phase;
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let make = service_fn(|_: ()| async {
//!     Ok::<_, BoxError>(service_fn(|n: u32| async move { Ok::<_, BoxError>(n + 1) }))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(make)
//!     .client(());
//!
//! let mut state = client.state();
//! assert_eq!(state.borrow().phase(), Phase::Idle);
//!
//! assert_eq!(client.clone().oneshot(41).await?, 42);
//! state.wait_for(|s| s.phase() == Phase::Ready).await?;
//! assert_eq!(client.stats().dials, 1);
//! # Ok(())
//! # }
//! ```

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::SharedError;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Not dialed yet: the first request dials, or
    /// [`Client::connected`](crate::Client::connected).
    Idle,
    /// A dial is in progress (gRPC's CONNECTING); requests wait in the queue
    /// for its outcome, even past the wait limit.
    Connecting,
    /// Waiting out a backoff delay before the next dial, within the wait
    /// limit; requests wait.
    Backoff,
    /// Connected: requests go to the connection.
    Ready,
    /// Unavailable for longer than the wait limit, and between dials (gRPC's
    /// TRANSIENT_FAILURE): requests fail at once with
    /// [`Unavailable`](crate::error::Unavailable), whose `source()` is the latest
    /// dial error. Redialing carries on by the backoff, driven by the
    /// client's own task, with no request needed.
    FailFast,
    /// Gave up for good, or shut down: requests fail with
    /// [`Closed`](crate::error::Closed).
    Closed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Idle => "idle",
            Phase::Connecting => "connecting",
            Phase::Backoff => "backoff",
            Phase::Ready => "ready",
            Phase::FailFast => "fail-fast",
            Phase::Closed => "closed",
        })
    }
}

/// An outage as the state watch shows it.
#[derive(Clone, Copy)]
pub(crate) struct Down<'a> {
    pub(crate) since: Instant,
    pub(crate) attempts: u32,
    pub(crate) last_error: Option<&'a SharedError>,
}

/// A snapshot of a connection's state, as published on the state watch.
#[derive(Clone)]
pub struct Snapshot {
    phase: Phase,
    attempt: u32,
    last_error: Option<SharedError>,
    since: Instant,
    /// When the connection became unavailable, during an outage.
    down_since: Option<Instant>,
}

impl Snapshot {
    pub(crate) fn new(phase: Phase, outage: Option<Down<'_>>) -> Self {
        let (down_since, attempt, last_error) = match outage {
            Some(down) => (Some(down.since), down.attempts, down.last_error.cloned()),
            None => (None, 0, None),
        };
        Self {
            phase,
            attempt,
            last_error,
            since: Instant::now(),
            down_since,
        }
    }

    /// The last error, shared, for an error built from this snapshot.
    pub(crate) fn last_error_shared(&self) -> Option<SharedError> {
        self.last_error.clone()
    }

    /// When the connection became unavailable, during an outage.
    pub(crate) fn down_since(&self) -> Option<Instant> {
        self.down_since
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The dial attempt in the current outage (1 for the first dial), or 0
    /// when no dial has been needed since the connection proved healthy.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Why the connection is not ready: the last dial error, or the error
    /// that killed the last connection. `None` while healthy.
    pub fn last_error(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.last_error.as_deref()
    }

    /// When this phase was entered (tokio's clock, so paused time applies).
    pub fn since(&self) -> Instant {
        self.since
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("phase", &self.phase)
            .field("attempt", &self.attempt)
            .field(
                "last_error",
                &self.last_error.as_ref().map(|e| e.to_string()),
            )
            .field("since", &self.since)
            .finish()
    }
}

/// A copy of a client's counters, taken by
/// [`Client::stats`](crate::Client::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Dials started.
    pub dials: u64,
    /// Dials that failed or timed out.
    pub dial_failures: u64,
    /// Established connections that were found dead and dropped.
    pub drops: u64,
    /// Requests that failed fast with [`Unavailable`](crate::error::Unavailable).
    pub fail_fast: u64,
    /// Requests re-sent by the retry policy.
    pub retries: u64,
}

/// The shared, lock-free counters and the state watch of one connection.
#[derive(Debug)]
pub(crate) struct Observer {
    dials: AtomicU64,
    dial_failures: AtomicU64,
    drops: AtomicU64,
    fail_fast: AtomicU64,
    retries: AtomicU64,
    state: watch::Sender<Snapshot>,
    /// Also counts here: a balanced client's endpoints count in the client.
    parent: Option<Arc<Observer>>,
    /// The target, by its `Debug` form with passwords masked, for errors.
    label: Arc<str>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Dials,
    DialFailures,
    Drops,
    FailFast,
    Retries,
}

impl Observer {
    pub(crate) fn new(label: Arc<str>) -> Self {
        Self::with_parent(label, None)
    }

    pub(crate) fn with_parent(label: Arc<str>, parent: Option<Arc<Observer>>) -> Self {
        let (state, _) = watch::channel(Snapshot::new(Phase::Idle, None));
        Self {
            dials: AtomicU64::new(0),
            dial_failures: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            fail_fast: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            state,
            parent,
            label,
        }
    }

    /// The target, by its `Debug` form with passwords masked.
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.label
    }

    pub(crate) fn count(&self, counter: Counter) {
        let c = match counter {
            Counter::Dials => &self.dials,
            Counter::DialFailures => &self.dial_failures,
            Counter::Drops => &self.drops,
            Counter::FailFast => &self.fail_fast,
            Counter::Retries => &self.retries,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if let Some(parent) = &self.parent {
            parent.count(counter);
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            dials: self.dials.load(Ordering::Relaxed),
            dial_failures: self.dial_failures.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            fail_fast: self.fail_fast.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// Publishes `phase`, with the outage's start, dials and latest error
    /// if there is one, unless the watch shows that already.
    pub(crate) fn publish(&self, phase: Phase, outage: Option<Down<'_>>) {
        self.state.send_if_modified(|s| {
            let (down_since, attempt, last_error) = match outage {
                Some(down) => (Some(down.since), down.attempts, down.last_error),
                None => (None, 0, None),
            };
            let same_error = match (&s.last_error, last_error) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if s.phase == phase && s.attempt == attempt && s.down_since == down_since && same_error
            {
                return false;
            }
            *s = Snapshot::new(phase, outage);
            true
        });
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watch changes only when what it shows changes: the same phase,
    /// attempt and error twice is one change.
    #[tokio::test(start_paused = true)]
    async fn publishing_the_same_state_twice_is_one_change() {
        let observer = Observer::new("db".into());
        let mut watch = observer.subscribe();
        observer.publish(Phase::Connecting, None);
        assert!(watch.has_changed().unwrap());
        watch.borrow_and_update();
        observer.publish(Phase::Connecting, None);
        assert!(!watch.has_changed().unwrap(), "nothing new");

        let error: SharedError = Arc::new(std::io::Error::other("refused"));
        let since = Instant::now();
        let down = |attempts, last_error| Down {
            since,
            attempts,
            last_error,
        };
        observer.publish(Phase::Backoff, Some(down(1, Some(&error))));
        assert!(watch.has_changed().unwrap());
        watch.borrow_and_update();
        observer.publish(Phase::Backoff, Some(down(1, Some(&error))));
        assert!(!watch.has_changed().unwrap(), "the same error");
        let other: SharedError = Arc::new(std::io::Error::other("reset"));
        observer.publish(Phase::Backoff, Some(down(1, Some(&other))));
        assert!(watch.has_changed().unwrap(), "a new latest error");
        let snapshot = watch.borrow_and_update();
        assert_eq!(snapshot.attempt(), 1);
        assert_eq!(snapshot.last_error().unwrap().to_string(), "reset");
    }

    /// Counters count, in the observer and in its parent.
    #[test]
    fn counters_count_in_the_parent_too() {
        let parent = Arc::new(Observer::new("all".into()));
        let child = Observer::with_parent("one".into(), Some(parent.clone()));
        child.count(Counter::Dials);
        child.count(Counter::Drops);
        parent.count(Counter::Retries);
        assert_eq!(child.stats().dials, 1);
        assert_eq!(parent.stats().dials, 1);
        assert_eq!(parent.stats().drops, 1);
        assert_eq!(parent.stats().retries, 1);
        assert_eq!(child.stats().retries, 0);
    }
}
