//! How a request ended, whatever the protocol, read from the types in its
//! error's `source()` chain, and the books of many requests. Every suite
//! counts with these, and the client with a per-request timeout that the
//! fault tests use lives here too.
//!
//! [`Outcome::of`] knows tower-redial's own errors, tower's timeout and
//! transport IO errors, and no protocol: the crate's integrations stay out
//! of this crate. A suite that knows its protocol checks its specifics,
//! falls back on [`Outcome::of`], and still returns an [`Outcome`]: redis
//! counts an error reply as [`Refused`](Outcome::Refused), PostgreSQL calls
//! a broken connection ambiguous only when the session's own error says it
//! ended. What a suite keeps of a success (a row id, a reply) sits beside
//! the outcome, in the suite's own record.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use tower::timeout::error::Elapsed;
use tower::ServiceBuilder;
use tower_redial::classify::is_transport_error;
use tower_redial::classify::Classifier;
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::error::{Closed, ConnectionLost, NotSent, ResponseTimeout, Unavailable};
use tower_redial::{BoxError, Client, ReconnectLayer, ReconnectPolicyBuilder};

use crate::line::{find_error, LineConnection};

/// How one request ended, as seen by its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The connection broke once the request may have reached the server
    /// (a [`ConnectionLost`], or a transport [`io::Error`](std::io::Error)
    /// such as a reset): it may or may not have run.
    Ambiguous,
    /// A per-request timeout (tower's [`Elapsed`], or the policy's
    /// [`ResponseTimeout`]): the request may have run.
    TimedOut,
    /// Came back [`NotSent`]: it never reached the server, and was not sent
    /// again (its re-sends, or the re-send budget, were spent).
    NotSent,
    /// Failed fast with [`Unavailable`]: no connection within the wait
    /// limit.
    Unavailable,
    /// The client had given up: [`Closed`].
    Closed,
    /// The server answered with an error of its own, so the request did not
    /// run. Only a suite that knows its protocol's replies says so.
    Refused,
    /// Anything else: never expected.
    Unexpected,
}

impl Outcome {
    /// How `result` ended.
    pub fn of<T>(result: &Result<T, BoxError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(error) => Self::of_error(&**error),
        }
    }

    /// How a request that failed with `error` ended.
    pub fn of_error(error: &(dyn Error + 'static)) -> Self {
        if find_error::<Unavailable>(error).is_some() {
            Self::Unavailable
        } else if find_error::<Closed>(error).is_some() {
            Self::Closed
        } else if NotSent::is_in(error) {
            Self::NotSent
        } else if is_elapsed(error) || find_error::<ResponseTimeout>(error).is_some() {
            Self::TimedOut
        } else if ConnectionLost::is_in(error) || is_transport_error(error) {
            Self::Ambiguous
        } else {
            Self::Unexpected
        }
    }

    /// As [`of`](Self::of), where `broke_off` finds the protocol's own sign
    /// that the exchange broke off midway (hyper's error, say, for a
    /// response body cut short, which no connection sees): a failure that
    /// would be [`Unexpected`](Self::Unexpected) and that `broke_off` finds
    /// is [`Ambiguous`](Self::Ambiguous).
    pub fn of_with<T>(
        result: &Result<T, BoxError>,
        broke_off: impl Fn(&(dyn Error + 'static)) -> bool,
    ) -> Self {
        match (Self::of(result), result) {
            (Self::Unexpected, Err(error)) if broke_off(&**error) => Self::Ambiguous,
            (outcome, _) => outcome,
        }
    }
}

/// Whether tower's per-request timeout is anywhere in `error`'s chain.
pub fn is_elapsed(error: &(dyn Error + 'static)) -> bool {
    find_error::<Elapsed>(error).is_some()
}

/// Sample errors kept of each outcome, for failure messages.
const SAMPLES: usize = 3;

/// Counts of outcomes; every recorded request is counted exactly once.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub issued: u64,
    pub ok: u64,
    pub ambiguous: u64,
    pub timed_out: u64,
    pub not_sent: u64,
    pub unavailable: u64,
    pub closed: u64,
    pub refused: u64,
    pub unexpected: u64,
    /// Answered, but with a reply of the wrong shape: cut short by a fault,
    /// so the request may have run.
    pub truncated: u64,
    /// The first few errors of each outcome, for failure messages.
    pub samples: Vec<(Outcome, String)>,
}

impl Tally {
    /// Counts `result` under [`Outcome::of`], and returns that.
    pub fn record<T>(&mut self, result: &Result<T, BoxError>) -> Outcome {
        self.record_as(Outcome::of(result), result)
    }

    /// Counts `result` under `outcome`, the suite's own reading of it (see
    /// the [module docs](self)), and returns that.
    pub fn record_as<T>(&mut self, outcome: Outcome, result: &Result<T, BoxError>) -> Outcome {
        self.issued += 1;
        *match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::Ambiguous => &mut self.ambiguous,
            Outcome::TimedOut => &mut self.timed_out,
            Outcome::NotSent => &mut self.not_sent,
            Outcome::Unavailable => &mut self.unavailable,
            Outcome::Closed => &mut self.closed,
            Outcome::Refused => &mut self.refused,
            Outcome::Unexpected => &mut self.unexpected,
        } += 1;
        if let Err(error) = result {
            if self.samples.iter().filter(|(o, _)| *o == outcome).count() < SAMPLES {
                self.samples.push((outcome, format!("{error:?}")));
            }
        }
        outcome
    }

    /// Counts a reply of the wrong shape: the request may have run.
    pub fn record_truncated(&mut self) -> Outcome {
        self.issued += 1;
        self.truncated += 1;
        Outcome::Ambiguous
    }

    pub fn add(&mut self, other: &Tally) {
        self.issued += other.issued;
        self.ok += other.ok;
        self.ambiguous += other.ambiguous;
        self.timed_out += other.timed_out;
        self.not_sent += other.not_sent;
        self.unavailable += other.unavailable;
        self.closed += other.closed;
        self.refused += other.refused;
        self.unexpected += other.unexpected;
        self.truncated += other.truncated;
        self.samples.extend(other.samples.iter().cloned());
    }

    pub fn outcomes(&self) -> u64 {
        self.ok
            + self.ambiguous
            + self.timed_out
            + self.not_sent
            + self.unavailable
            + self.closed
            + self.refused
            + self.unexpected
            + self.truncated
    }

    /// Requests that may have run without an acknowledgement.
    pub fn maybe_ran(&self) -> u64 {
        self.ambiguous + self.timed_out + self.truncated
    }

    /// Every request ended exactly once, none on a closed client or with an
    /// error of an unexpected kind.
    pub fn assert_sane(&self) {
        assert_eq!(self.outcomes(), self.issued, "{self:?}");
        assert_eq!(self.closed, 0, "the client must not close: {self:?}");
        assert_eq!(self.unexpected, 0, "unexpected errors: {self:?}");
    }

    /// As [`assert_sane`](Tally::assert_sane), and nothing failed fast or
    /// timed out either: for clients with no per-request timeout that ride
    /// through every outage.
    pub fn assert_rode_through(&self) {
        self.assert_sane();
        assert_eq!(self.unavailable, 0, "no request may fail fast: {self:?}");
        assert_eq!(self.timed_out, 0, "no request may time out: {self:?}");
    }

    /// Every request succeeded, or broke once it may have reached the
    /// server: none failed fast, timed out, came back unsent, was refused,
    /// or failed in any other way.
    pub fn assert_ok_or_ambiguous(&self) {
        assert_eq!(
            self.ok + self.ambiguous,
            self.issued,
            "only successes and ambiguous failures: {self:?}"
        );
    }
}

/// A client of the line server at `addr` whose connections time each request
/// out after `timeout`, and whose classifier treats a timeout as a dead
/// connection: the only way to find a silent (blackholed) connection dead.
pub fn timeout_client(
    addr: SocketAddr,
    policy: ReconnectPolicyBuilder,
    timeout: Duration,
) -> Client<String, String> {
    let make = Handshake::new(TcpConnector::new(), move |io| async move {
        let connection = LineConnection::handshake(io).await?;
        Ok::<_, BoxError>(ServiceBuilder::new().timeout(timeout).service(connection))
    });
    let policy = policy
        .classifier(Classifier::new(|e| is_transport_error(e) || is_elapsed(e)))
        .build()
        .expect("valid policy");
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(make)
        .client(addr)
}
