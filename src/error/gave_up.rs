//! The client gave up on a request: it failed fast, or the client is closed.

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{millis, Dials, SharedError};

/// The connection has been unavailable for longer than the wait limit, so the
/// request failed at once instead of waiting in the queue.
///
/// Redialing carries on in the background; requests flow again as soon as a
/// connection is made. [`source()`](Error::source) is the last dial error.
#[derive(Clone)]
pub struct Unavailable {
    target: Arc<str>,
    down_for: Duration,
    attempts: u32,
    source: Option<SharedError>,
}

impl Unavailable {
    pub(crate) fn new(
        target: Arc<str>,
        down_for: Duration,
        attempts: u32,
        source: Option<SharedError>,
    ) -> Self {
        Self {
            target,
            down_for,
            attempts,
            source,
        }
    }

    /// The target, by its `Debug` form, with passwords masked.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How long the connection had been unavailable when the request failed.
    pub fn down_for(&self) -> Duration {
        self.down_for
    }

    /// How many dials this outage had made when the request failed: those
    /// that failed, and those whose connection was lost before it proved
    /// healthy (a server that accepts and at once closes).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Debug for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unavailable")
            .field("target", &self.target)
            .field("down_for", &self.down_for)
            .field("attempts", &self.attempts)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection to {} unavailable for {:?} after {}",
            self.target,
            millis(self.down_for),
            Dials(self.attempts)
        )
    }
}

impl Error for Unavailable {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// The client gave up for good: its attempt or time limit was reached, or its
/// connection factory failed.
///
/// This is the only error that `poll_ready` ever returns. Every later request
/// fails with it too. [`source()`](Error::source) is the error that ended it.
#[derive(Clone)]
pub struct Closed {
    target: Arc<str>,
    attempts: u32,
    why: Why,
    source: Option<SharedError>,
}

/// Why a client is closed.
#[derive(Clone, Copy, Debug)]
enum Why {
    /// The backoff's attempt or time limit was reached.
    GaveUp,
    /// The factory's `poll_ready` failed: by tower's contract it cannot be
    /// used again.
    FactoryFailed,
    /// The client's task is gone: the runtime shut down.
    TaskEnded,
}

impl Closed {
    /// The client gave up at a limit, after `attempts` dials.
    pub(crate) fn new(target: Arc<str>, attempts: u32, source: Option<SharedError>) -> Self {
        Self {
            target,
            attempts,
            why: Why::GaveUp,
            source,
        }
    }

    /// The connection factory failed for good.
    pub(crate) fn factory_failed(target: Arc<str>, attempts: u32, source: SharedError) -> Self {
        Self {
            target,
            attempts,
            why: Why::FactoryFailed,
            source: Some(source),
        }
    }

    /// The client's task ended, so no request can be served.
    pub(crate) fn task_ended(target: Arc<str>, source: Option<SharedError>) -> Self {
        Self {
            target,
            attempts: 0,
            why: Why::TaskEnded,
            source,
        }
    }

    /// How many dials were made before giving up.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The target, by its `Debug` form, with passwords masked.
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl fmt::Debug for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Closed")
            .field("target", &self.target)
            .field("attempts", &self.attempts)
            .field("why", &self.why)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.why {
            Why::GaveUp => write!(
                f,
                "reconnect to {} gave up after {}",
                self.target,
                Dials(self.attempts)
            ),
            Why::FactoryFailed => {
                write!(
                    f,
                    "the connection factory for {} failed for good",
                    self.target
                )
            }
            Why::TaskEnded => write!(f, "the client's task for {} has ended", self.target),
        }
    }
}

impl Error for Closed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}
