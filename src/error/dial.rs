//! One dial failed: it timed out, or `Dial` gave up on it.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use super::SharedError;

/// A dial did not finish within the connect timeout.
#[derive(Clone, Debug)]
pub struct ConnectTimeout {
    after: Duration,
}

impl ConnectTimeout {
    pub(crate) fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The connect timeout that expired.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connect timed out after {:?}", self.after)
    }
}

impl Error for ConnectTimeout {}

/// A [`Dial`](crate::dial::Dial) gave up: its attempt, time or wait limit was
/// reached without a connection.
///
/// [`source()`](Error::source) is the last attempt's error: the connector's
/// own error, or a [`ConnectTimeout`]. See the
/// [`dial` module docs](crate::dial#limits) for when each limit applies.
#[derive(Clone)]
pub struct DialError {
    attempts: u32,
    elapsed: Duration,
    source: SharedError,
}

impl DialError {
    pub(crate) fn new(attempts: u32, elapsed: Duration, source: SharedError) -> Self {
        Self {
            attempts,
            elapsed,
            source,
        }
    }

    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long the dial took, from the call to giving up.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

impl fmt::Debug for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialError")
            .field("attempts", &self.attempts)
            .field("elapsed", &self.elapsed)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole milliseconds: enough to read, and no noise from the clock.
        let elapsed = Duration::from_millis(self.elapsed.as_millis() as u64);
        let plural = if self.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "dial gave up after {} attempt{plural} in {elapsed:?}",
            self.attempts
        )
    }
}

impl Error for DialError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}
