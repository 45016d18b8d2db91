//! How a request through a line-protocol client ended, classified by type.

use std::error::Error;
use std::io;

use tower::timeout::error::Elapsed;
use tower_redial::{BoxError, Closed, NotSent, Unavailable};

use super::line::{find_error, io_kind};

/// How one request ended, as seen by its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A transport error (reset, EOF, broken pipe) for a request that may
    /// have reached the server.
    Ambiguous,
    /// A per-request timeout inside the connection: the request may have run.
    TimedOut,
    /// Never reached the server (re-sends exhausted, or the budget spent).
    NotSent,
    Unavailable,
    Closed,
    /// Anything else: never expected.
    Unexpected,
}

/// Classifies `result` by the types in its error's `source()` chain.
pub fn outcome(result: &Result<String, BoxError>) -> Outcome {
    let error = match result {
        Ok(_) => return Outcome::Ok,
        Err(error) => &**error,
    };
    if find_error::<Unavailable>(error).is_some() {
        Outcome::Unavailable
    } else if find_error::<Closed>(error).is_some() {
        Outcome::Closed
    } else if find_error::<NotSent>(error).is_some() {
        Outcome::NotSent
    } else if is_elapsed(error) {
        Outcome::TimedOut
    } else if matches!(
        io_kind(error),
        Some(
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        )
    ) {
        Outcome::Ambiguous
    } else {
        Outcome::Unexpected
    }
}

/// Whether tower's per-request timeout is anywhere in `error`'s chain.
pub fn is_elapsed(error: &(dyn Error + 'static)) -> bool {
    find_error::<Elapsed>(error).is_some()
}
