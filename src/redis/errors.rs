//! redis errors as the crate reports them.

use std::error::Error;
use std::io;
use std::sync::Arc;

use ::redis::RedisError;

use crate::error::{Closed, ConnectionLost, NotSent, ResponseTimeout, Unavailable};
use crate::BoxError;

/// A redis error as a [`BoxError`]: transport failures become an
/// [`io::Error`] of the matching kind, with the redis error inside.
pub(super) fn into_box(error: RedisError) -> BoxError {
    match transport_kind(&error) {
        Some(kind) => Box::new(io::Error::new(kind, error)),
        None => Box::new(error),
    }
}

/// The IO error kind of a transport failure, or `None` for anything else.
fn transport_kind(error: &RedisError) -> Option<io::ErrorKind> {
    if !error.is_io_error() {
        return None;
    }
    // redis-rs keeps the IO error behind an `Arc` in its `source()`.
    let kind = crate::error::chain(error).find_map(|e| {
        e.downcast_ref::<io::Error>()
            .or_else(|| {
                e.downcast_ref::<Arc<dyn Error + Send + Sync>>()
                    .and_then(|inner| inner.downcast_ref::<io::Error>())
            })
            .map(io::Error::kind)
    });
    Some(kind.unwrap_or(if error.is_timeout() {
        io::ErrorKind::TimedOut
    } else if error.is_connection_refusal() {
        io::ErrorKind::ConnectionRefused
    } else if error.is_connection_dropped() {
        io::ErrorKind::ConnectionAborted
    } else {
        io::ErrorKind::Other
    }))
}

/// The [`::redis::RedisError`] in `error`, whether it is the error itself,
/// sits in its `source()` chain, or is inside an [`io::Error`] (as
/// transport failures are; see [Errors](super#errors)).
///
/// # Example
///
/// ```
/// use std::io;
/// use tower_redial::redis::redis_error;
/// use tower_redial::BoxError;
///
/// let reset = redis::RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset));
/// let error: BoxError = Box::new(io::Error::new(io::ErrorKind::ConnectionReset, reset));
/// assert!(redis_error(&*error).is_some_and(|e| e.is_connection_dropped()));
///
/// let other: BoxError = "no redis here".into();
/// assert!(redis_error(&*other).is_none());
/// ```
pub fn redis_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a RedisError> {
    crate::error::chain(error).find_map(|e| {
        e.downcast_ref::<RedisError>().or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<RedisError>())
        })
    })
}

/// A client's error as the [`::redis::RedisError`] that redis-rs's
/// `ConnectionLike` returns, by the table in
/// [Errors of the drop-in](super#errors-of-the-drop-in): redis-rs's own
/// errors as they came, the crate's inside an IO `RedisError` of the kind
/// that says what happened.
pub(super) fn into_redis_error(error: BoxError) -> RedisError {
    let error = match error.downcast::<RedisError>() {
        Ok(redis) => return *redis,
        Err(error) => error,
    };
    let error = match error.downcast::<io::Error>() {
        Ok(io) if io.get_ref().is_some_and(|inner| inner.is::<RedisError>()) => {
            let inner = io.into_inner().expect("checked above");
            return *inner.downcast::<RedisError>().expect("checked above");
        }
        Ok(io) => io as BoxError,
        Err(error) => error,
    };
    let kind = if error.is::<Unavailable>() || error.is::<NotSent>() {
        io::ErrorKind::NotConnected
    } else if error.is::<Closed>() {
        io::ErrorKind::ConnectionAborted
    } else if error.is::<ResponseTimeout>() {
        io::ErrorKind::TimedOut
    } else if error.is::<ConnectionLost>() {
        crate::classify::io_error_kind(&*error).unwrap_or(io::ErrorKind::ConnectionReset)
    } else {
        io::ErrorKind::Other
    };
    RedisError::from(io::Error::new(kind, FromClient(error)))
}

/// The crate's error inside a `RedisError`: shown as itself, and found by
/// [`client_error`].
struct FromClient(BoxError);

impl std::fmt::Debug for FromClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for FromClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl Error for FromClient {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// The client's own error inside a [`::redis::RedisError`] that a
/// [`RedisManager`](super::RedisManager) returned: an
/// [`Unavailable`], [`Closed`], [`NotSent`], and so on (see
/// [Errors of the drop-in](super#errors-of-the-drop-in)). `None` for
/// redis-rs's own errors (an error reply, a transport failure), which come
/// as redis-rs made them.
///
/// # Example
///
/// ```
/// use tower_redial::error::Unavailable;
/// use tower_redial::redis::client_error;
///
/// fn failed_fast(error: &redis::RedisError) -> bool {
///     client_error(error).is_some_and(|e| e.is::<Unavailable>())
/// }
///
/// let reply = redis::RedisError::from((redis::ErrorKind::Client, "not ours"));
/// assert!(!failed_fast(&reply));
/// assert!(client_error(&reply).is_none());
/// ```
pub fn client_error(error: &RedisError) -> Option<&(dyn Error + Send + Sync + 'static)> {
    let shared = error
        .source()?
        .downcast_ref::<Arc<dyn Error + Send + Sync>>()?;
    let io = shared.downcast_ref::<io::Error>()?;
    let ours = io.get_ref()?.downcast_ref::<FromClient>()?;
    Some(&*ours.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::is_transport_error;

    /// Transport failures become IO errors of the precise kind, which the
    /// default classifier calls dead; the redis error stays reachable.
    #[test]
    fn transport_failures_become_io_errors() {
        for kind in [
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionRefused,
        ] {
            let error = into_box(RedisError::from(io::Error::from(kind)));
            let io = error.downcast_ref::<io::Error>().expect("an io::Error");
            assert_eq!(io.kind(), kind);
            assert!(is_transport_error(&*error), "{kind:?}");
            assert!(redis_error(&*error).is_some_and(RedisError::is_io_error));
        }
    }

    /// A server's error reply stays a `RedisError`, which the default
    /// classifier does not take for a dead connection.
    #[test]
    fn server_errors_stay_redis_errors() {
        let reply = ::redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n")
            .expect("a valid reply")
            .extract_error()
            .expect_err("an error reply");
        let error = into_box(reply);
        assert!(error.is::<RedisError>());
        assert!(!is_transport_error(&*error));
        assert_eq!(
            redis_error(&*error).and_then(RedisError::code),
            Some("WRONGTYPE")
        );
    }

    /// The drop-in's error mapping, row by row (the module docs' table):
    /// what redis-rs's checks say of each, and the client's own error
    /// reachable with `client_error`.
    mod drop_in {
        use std::time::Duration;

        use ::redis::ErrorKind;

        use super::*;
        use crate::error::{share, Overloaded};

        /// What redis-rs's checks say: `is_io_error`, `is_connection_dropped`,
        /// `is_timeout`, `is_connection_refusal`.
        fn checks(error: &RedisError) -> [bool; 4] {
            [
                error.is_io_error(),
                error.is_connection_dropped(),
                error.is_timeout(),
                error.is_connection_refusal(),
            ]
        }

        fn last_dial() -> crate::error::SharedError {
            share(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)))
        }

        /// The client's error as a `RedisError`: an IO error of `kind`,
        /// shown as the client's error, which `client_error` finds, of type
        /// `E`.
        fn assert_ours<E: Error + 'static>(error: BoxError, kind: io::ErrorKind) -> RedisError {
            let shown = error.to_string();
            let redis = into_redis_error(error);
            assert_eq!(redis.kind(), ErrorKind::Io);
            assert_eq!(redis.to_string(), shown);
            assert_eq!(
                redis
                    .source()
                    .and_then(|s| s.downcast_ref::<Arc<dyn Error + Send + Sync>>())
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .map(io::Error::kind),
                Some(kind)
            );
            assert!(
                client_error(&redis).is_some_and(|e| e.is::<E>()),
                "{redis:?}"
            );
            redis
        }

        #[test]
        fn an_error_reply_comes_as_it_came() {
            let reply = ::redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n")
                .unwrap()
                .extract_error()
                .unwrap_err();
            let redis = into_redis_error(into_box(reply.clone()));
            assert_eq!(redis, reply);
            assert_eq!(redis.code(), Some("WRONGTYPE"));
            assert_eq!(checks(&redis), [false; 4]);
            assert!(client_error(&redis).is_none());
        }

        #[test]
        fn a_transport_failure_comes_as_redis_rs_made_it() {
            for (kind, expected) in [
                (io::ErrorKind::BrokenPipe, [true, true, false, false]),
                (io::ErrorKind::ConnectionReset, [true, true, false, false]),
                (io::ErrorKind::TimedOut, [true, false, true, false]),
                (io::ErrorKind::ConnectionRefused, [true, true, false, true]),
            ] {
                let failure = RedisError::from(io::Error::from(kind));
                let redis = into_redis_error(into_box(failure.clone()));
                assert_eq!(checks(&redis), expected, "{kind:?}");
                assert_eq!(redis.to_string(), failure.to_string());
                assert!(client_error(&redis).is_none());
            }
        }

        #[test]
        fn unavailable_is_not_connected_and_keeps_the_last_dial_error() {
            let error = Unavailable::new("t".into(), Duration::from_secs(1), 3, Some(last_dial()));
            let redis = assert_ours::<Unavailable>(Box::new(error), io::ErrorKind::NotConnected);
            assert_eq!(checks(&redis), [true, true, false, false]);
            // The chain goes on to the last dial error.
            let last = crate::error::chain(&redis).find_map(|e| e.downcast_ref::<io::Error>());
            assert_eq!(
                last.map(io::Error::kind),
                Some(io::ErrorKind::ConnectionRefused)
            );
        }

        #[test]
        fn not_sent_is_not_connected() {
            let error = NotSent::new(io::Error::from(io::ErrorKind::BrokenPipe));
            let redis = assert_ours::<NotSent>(Box::new(error), io::ErrorKind::NotConnected);
            assert_eq!(checks(&redis), [true, true, false, false]);
        }

        #[test]
        fn closed_is_connection_aborted() {
            let error = Closed::new("t".into(), 3, Some(last_dial()));
            let redis = assert_ours::<Closed>(Box::new(error), io::ErrorKind::ConnectionAborted);
            assert_eq!(checks(&redis), [true, true, false, false]);
        }

        #[test]
        fn a_response_timeout_is_a_timeout() {
            let error = ResponseTimeout::new(Duration::from_secs(1));
            let redis = assert_ours::<ResponseTimeout>(Box::new(error), io::ErrorKind::TimedOut);
            assert_eq!(checks(&redis), [true, false, true, false]);
        }

        #[test]
        fn a_lost_connection_keeps_its_kind() {
            let error = ConnectionLost::new(io::Error::from(io::ErrorKind::UnexpectedEof));
            let redis =
                assert_ours::<ConnectionLost>(Box::new(error), io::ErrorKind::UnexpectedEof);
            assert_eq!(checks(&redis), [true, true, false, false]);
            let error = ConnectionLost::new(io::Error::from(io::ErrorKind::TimedOut));
            let redis = assert_ours::<ConnectionLost>(Box::new(error), io::ErrorKind::TimedOut);
            assert_eq!(checks(&redis), [true, false, true, false]);
            let error = ConnectionLost::new("no io error here");
            let redis =
                assert_ours::<ConnectionLost>(Box::new(error), io::ErrorKind::ConnectionReset);
            assert_eq!(checks(&redis), [true, true, false, false]);
        }

        #[test]
        fn anything_else_is_an_other_io_error() {
            let redis =
                assert_ours::<Overloaded>(Box::new(Overloaded::new()), io::ErrorKind::Other);
            assert_eq!(checks(&redis), [true, false, false, false]);
            let payload: Box<dyn std::any::Any + Send> = Box::new("boom");
            let panicked = crate::error::Panicked::new("the connection", &*payload);
            let redis =
                assert_ours::<crate::error::Panicked>(Box::new(panicked), io::ErrorKind::Other);
            assert_eq!(checks(&redis), [true, false, false, false]);
        }
    }
}
