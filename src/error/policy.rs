//! A policy the builder refused.

use std::error::Error;
use std::fmt;

/// A [`ReconnectPolicy`](crate::ReconnectPolicy) was refused at construction.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_redial::{Backoff, ReconnectPolicy};
///
/// let err = ReconnectPolicy::builder()
///     .backoff(Backoff::exponential(Duration::ZERO, 2.0, Duration::from_secs(1)))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.setting(), "backoff base");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidPolicy {
    setting: &'static str,
    problem: String,
}

impl InvalidPolicy {
    pub(crate) fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }

    /// The setting that was refused, such as `"queue capacity"`.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid reconnect policy: {} {}",
            self.setting, self.problem
        )
    }
}

impl Error for InvalidPolicy {}
