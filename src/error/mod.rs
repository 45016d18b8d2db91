//! Error types.
//!
//! Every error that [`Client`](crate::Client) and [`Reconnect`](crate::reconnect::Reconnect)
//! produce is a [`BoxError`]. Match on the kind with
//! [`downcast_ref`](std::error::Error#method.downcast_ref):
//!
//! | error | when | `source()` |
//! |---|---|---|
//! | [`Unavailable`] | the connection has been down longer than the wait limit; the request failed fast | the last dial error |
//! | [`Closed`] | the client gave up for good (attempt or time limit reached, or the factory failed), or its task ended | the last dial error |
//! | [`ConnectTimeout`] | one dial took longer than the connect timeout (seen as the `source()` of the two above) | — |
//! | [`NotSent`] | the connection refused the request before writing any of it | the connection's error |
//! | [`ConnectionLost`] | the connection broke under the request, which may have reached the peer | the connection's error |
//! | [`Overloaded`] | the queue was full and the policy sheds load instead of waiting | — |
//! | [`ResponseTimeout`] | the policy's response timeout passed before the response came (off by default) | — |
//! | [`Panicked`] | user code (the factory, a dial, the connection or its response) panicked while serving the request; the connection counts as dead | — |
//! | anything else | the connection's own error for a request that may have reached the peer | — |
//!
//! [`Dial`](crate::dial::Dial), the connector form, has one error of its own:
//! [`DialError`], once it gives up on a dial (`source()`: the last
//! attempt's error). [`InvalidPolicy`] is returned by the policy builder.
//!
//! Errors are classified by type, never by message text: see
//! [`classify`](crate::classify).

use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::BoxError;

/// The error itself, then each `source()` in turn.
pub(crate) fn chain<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn Error + 'static)| (*e).source())
}

/// "1 dial attempt", "2 dial attempts": a count of dials, for messages.
struct Dials(u32);

impl fmt::Display for Dials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("1 dial attempt"),
            n => write!(f, "{n} dial attempts"),
        }
    }
}

/// `d` to the millisecond, for messages: no nanosecond noise.
fn millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An error shared by many waiters, such as the last dial error.
pub(crate) type SharedError = Arc<dyn Error + Send + Sync + 'static>;

pub(crate) fn share(error: BoxError) -> SharedError {
    Arc::from(error)
}

mod dial;
mod gave_up;
mod policy;
mod request;

pub use dial::{ConnectTimeout, DialError};
pub use gave_up::{Closed, Unavailable};
pub use policy::InvalidPolicy;
pub use request::{ConnectionLost, NotSent, Overloaded, Panicked, ResponseTimeout};
