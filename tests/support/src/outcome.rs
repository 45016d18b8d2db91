//! How a request through a line-protocol client ended, classified by type,
//! and the client with a per-request timeout that the fault tests use.

use std::error::Error;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tower::timeout::error::Elapsed;
use tower::ServiceBuilder;
use tower_redial::classify::is_transport_error;
use tower_redial::classify::Classifier;
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::error::{Closed, NotSent, Unavailable};
use tower_redial::{BoxError, Client, ReconnectLayer, ReconnectPolicyBuilder};

use crate::line::{find_error, io_kind, LineConnection};

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
    pub unexpected: u64,
    /// Answered, but with a reply of the wrong shape: cut short by a fault,
    /// so the request may have run.
    pub truncated: u64,
    /// The first few results worth a look, for failure messages.
    pub samples: Vec<String>,
}

impl Tally {
    /// Counts `result` under its [`outcome`], and returns that.
    pub fn record(&mut self, result: &Result<String, BoxError>) -> Outcome {
        self.issued += 1;
        let outcome = outcome(result);
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Ambiguous => self.ambiguous += 1,
            Outcome::TimedOut => self.timed_out += 1,
            Outcome::NotSent => self.not_sent += 1,
            Outcome::Unavailable => self.unavailable += 1,
            Outcome::Closed => self.closed += 1,
            Outcome::Unexpected => self.unexpected += 1,
        }
        if matches!(
            outcome,
            Outcome::Unavailable | Outcome::Closed | Outcome::Unexpected
        ) && self.samples.len() < 5
        {
            self.samples.push(format!("{outcome:?}: {result:?}"));
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
