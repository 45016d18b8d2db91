//! redis errors as the crate reports them.

use std::error::Error;
use std::io;
use std::sync::Arc;

use ::redis::RedisError;

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
}
