//! Which errors mean "the connection is dead".
//!
//! Two kinds of error reach a [`Reconnect`](crate::reconnect::Reconnect):
//!
//! - **An error from the connection's `poll_ready`** always means the
//!   connection is dead: by tower's contract, a service whose `poll_ready`
//!   failed cannot be used again. The connection is dropped and redialed.
//! - **An error from a response** may be the server's answer ("no such key")
//!   or a sign that the transport broke. A [`Classifier`] decides. When it
//!   says "dead", the connection is dropped before the next request and
//!   redialed; the error itself is still returned to the caller.
//!
//! The default classifier, [`is_transport_error`], walks the error's
//! [`source()`](std::error::Error::source) chain and looks at types only,
//! never at message text. Rust ignores `SIGPIPE`, so a write to a closed
//! socket shows up here as [`BrokenPipe`](std::io::ErrorKind::BrokenPipe)
//! instead of killing the process.
//!
//! A connection can also give its own verdict, whatever the classifier:
//! a response error that is, or wraps, a
//! [`ConnectionLost`] kills the connection
//! under the default, and a [`NotSent`] does unless it
//! [keeps the connection](NotSent::keep_connection). This is how the
//! integrations report their protocols' transport failures, so the
//! default classifier is the same whichever cargo features are on.
//!
//! # Example
//!
//! ```
//! use std::io;
//! use tower_redial::classify::Classifier;
//! use tower_redial::ReconnectPolicy;
//!
//! // Also treat a protocol desync, reported as `InvalidData`, as fatal.
//! let classifier = Classifier::new(|error| {
//!     tower_redial::classify::is_transport_error(error)
//!         || tower_redial::classify::io_error_kind(error) == Some(io::ErrorKind::InvalidData)
//! });
//! let policy = ReconnectPolicy::builder().classifier(classifier).build()?;
//! # Ok::<_, tower_redial::error::InvalidPolicy>(())
//! ```

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::Arc;

use crate::error::{chain, ConnectTimeout, ConnectionLost, NotSent};

/// Decides whether a response error means the connection is dead.
///
/// # Default
///
/// [`is_transport_error`].
#[derive(Clone)]
pub struct Classifier {
    is_dead: Arc<IsDead>,
}

type IsDead = dyn Fn(&(dyn Error + 'static)) -> bool + Send + Sync;

impl Classifier {
    /// A classifier from a function that returns `true` for errors that mean
    /// the connection is dead.
    pub fn new<F>(is_dead: F) -> Self
    where
        F: Fn(&(dyn Error + 'static)) -> bool + Send + Sync + 'static,
    {
        Self {
            is_dead: Arc::new(is_dead),
        }
    }

    /// Whether `error` means the connection is dead.
    pub fn is_dead(&self, error: &(dyn Error + 'static)) -> bool {
        (self.is_dead)(error)
    }

    /// The one "is the connection dead" decision: a caught panic always
    /// kills the connection it came from; anything else is the classifier's
    /// call.
    pub(crate) fn finds_dead(&self, error: &(dyn Error + 'static)) -> bool {
        crate::error::Panicked::is_in(error) || self.is_dead(error)
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new(is_transport_error)
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier").finish_non_exhaustive()
    }
}

/// The default classifier: `true` when any error in the `source()` chain is
///
/// - an [`io::Error`] of kind `ConnectionReset`, `ConnectionAborted`,
///   `ConnectionRefused`, `BrokenPipe`, `NotConnected`, `UnexpectedEof`,
///   `TimedOut`, `HostUnreachable` or `NetworkUnreachable`;
/// - a [`NotSent`] (the connection could not take the request), unless it
///   [keeps the connection](NotSent::keep_connection);
/// - a [`ConnectionLost`] (the connection said it broke);
/// - a [`ConnectTimeout`].
///
/// It is the same whichever cargo features are on. The connections of
/// this crate's integrations (hyper, redis, PostgreSQL) report their
/// protocol's transport failures as a [`ConnectionLost`] or an
/// [`io::Error`] of the matching kind, so they need no classifier of
/// their own.
///
/// # Example
///
/// ```
/// use std::io;
/// use tower_redial::classify::is_transport_error;
///
/// let reset = io::Error::from(io::ErrorKind::ConnectionReset);
/// assert!(is_transport_error(&reset));
///
/// let answer = io::Error::other("connection reset (but only in the text)");
/// assert!(!is_transport_error(&answer));
/// ```
pub fn is_transport_error(error: &(dyn Error + 'static)) -> bool {
    chain(error).any(|e| {
        e.downcast_ref::<NotSent>()
            .is_some_and(|not_sent| !not_sent.keeps_connection())
            || e.is::<ConnectionLost>()
            || e.is::<ConnectTimeout>()
            || e.downcast_ref::<io::Error>()
                .is_some_and(|io| is_transport_kind(io.kind()))
    })
}

/// The kind of the first [`io::Error`] in the `source()` chain, if any.
pub fn io_error_kind(error: &(dyn Error + 'static)) -> Option<io::ErrorKind> {
    chain(error).find_map(|e| e.downcast_ref::<io::Error>().map(io::Error::kind))
}

fn is_transport_kind(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | BrokenPipe
            | NotConnected
            | UnexpectedEof
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper<E>(E);

    impl<E> fmt::Display for Wrapper<E> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("request failed")
        }
    }

    impl<E: Error + 'static> Error for Wrapper<E> {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    /// The default finds a transport error anywhere in the source chain.
    #[test]
    fn default_walks_the_source_chain() {
        let c = Classifier::default();
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::NotConnected,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
        ] {
            assert!(c.is_dead(&Wrapper(io::Error::from(kind))), "{kind:?}");
        }
        assert!(c.is_dead(&NotSent::new("closed")));
        assert!(c.is_dead(&ConnectionLost::new("protocol error")));
        assert!(c.is_dead(&Wrapper(ConnectionLost::new("eof"))));
        assert!(c.is_dead(&ConnectTimeout::new(std::time::Duration::from_secs(1))));
    }

    /// Application errors, and message text that merely mentions a reset,
    /// do not kill the connection.
    #[test]
    fn default_ignores_application_errors_and_message_text() {
        let c = Classifier::default();
        assert!(!c.is_dead(&Wrapper(io::Error::other(
            "broken pipe: connection reset by peer"
        ))));
        assert!(!c.is_dead(&io::Error::from(io::ErrorKind::InvalidData)));
        let boxed: crate::BoxError = "ERR no such key".into();
        assert!(!c.is_dead(&*boxed));
    }

    /// A user classifier replaces the default.
    #[test]
    fn user_classifier_overrides_default() {
        let c = Classifier::new(|e| io_error_kind(e) == Some(io::ErrorKind::InvalidData));
        assert!(c.is_dead(&Wrapper(io::Error::from(io::ErrorKind::InvalidData))));
        assert!(!c.is_dead(&io::Error::from(io::ErrorKind::ConnectionReset)));
    }
}
