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

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
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

/// Marks an error as "the request never reached the peer".
///
/// A connection service returns `NotSent` when it knows that none of the
/// request was written, for example because its connection closed before the
/// request left its queue. Such a request is safe to send again on a new
/// connection, so the [`Client`](crate::Client) re-sends it by default.
///
/// To be re-sent, the request must come back: build the error with
/// [`NotSent::with_request`] and return it as the connection's error (itself,
/// or boxed into a [`BoxError`]), not wrapped inside another error type. A
/// `NotSent` built with [`NotSent::new`] still marks the connection as dead
/// (unless it [keeps the connection](NotSent::keep_connection)),
/// but the request is then re-sent only if it is idempotent (see
/// [`ReconnectLayer::resend_if`](crate::ReconnectLayer::resend_if)).
///
/// # Example
///
/// ```
/// use std::io;
/// use tower_redial::error::NotSent;
///
/// let request = String::from("INCR hits");
/// let cause = io::Error::from(io::ErrorKind::BrokenPipe);
/// let mut error = NotSent::with_request(request, cause);
/// assert_eq!(error.take_request::<String>().as_deref(), Some("INCR hits"));
/// ```
pub struct NotSent {
    source: BoxError,
    keeps_connection: bool,
    // A `Mutex` only so that `NotSent` is `Sync`, as `BoxError` requires;
    // it is reached through `&mut self`, never locked.
    request: Mutex<Option<Box<dyn Any + Send>>>,
}

impl NotSent {
    /// Marks `source` as an error that happened before the request was sent.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
            keeps_connection: false,
            request: Mutex::new(None),
        }
    }

    /// Like [`NotSent::new`], and hands the unsent `request` back so that it
    /// can be sent again on the next connection.
    pub fn with_request<R: Send + 'static>(request: R, source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
            keeps_connection: false,
            request: Mutex::new(Some(Box::new(request))),
        }
    }

    /// Says that the connection is still fine: the peer declined this one
    /// request, as an HTTP/2 server does when it resets a stream with
    /// `REFUSED_STREAM`. The client then keeps the connection, and still
    /// sends the request again. Without this, a `NotSent` marks its
    /// connection as dead.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_redial::classify::is_transport_error;
    /// use tower_redial::error::NotSent;
    ///
    /// let declined = NotSent::with_request("GET /", "refused").keep_connection();
    /// assert!(declined.keeps_connection());
    /// assert!(!is_transport_error(&declined));
    /// assert!(is_transport_error(&NotSent::new("closed")));
    /// ```
    #[must_use]
    pub fn keep_connection(mut self) -> Self {
        self.keeps_connection = true;
        self
    }

    /// Whether the connection is still fine; see
    /// [`keep_connection`](Self::keep_connection).
    pub fn keeps_connection(&self) -> bool {
        self.keeps_connection
    }

    /// Takes the handed-back request out, if there is one of type `R`.
    pub fn take_request<R: 'static>(&mut self) -> Option<R> {
        let slot = self
            .request
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        match slot.take()?.downcast::<R>() {
            Ok(request) => Some(*request),
            Err(other) => {
                *slot = Some(other);
                None
            }
        }
    }

    /// Whether `error`, or any error in its `source()` chain, is a `NotSent`.
    pub fn is_in(error: &(dyn Error + 'static)) -> bool {
        chain(error).any(|e| e.is::<NotSent>())
    }
}

impl fmt::Debug for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotSent")
            .field("source", &self.source)
            .field("keeps_connection", &self.keeps_connection)
            .field(
                "has_request",
                &self.request.lock().is_ok_and(|request| request.is_some()),
            )
            .finish()
    }
}

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request was not sent")
    }
}

impl Error for NotSent {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Marks an error as "the connection is gone".
///
/// A connection service returns `ConnectionLost` when a request failed
/// because its connection broke: reset, closed before the response
/// completed, timed out, or closed by the peer (an HTTP/2 GOAWAY). The
/// request may have reached the peer, so it is sent again only if it is
/// idempotent (see
/// [`ReconnectLayer::resend_if`](crate::ReconnectLayer::resend_if)); the
/// connection is dropped and redialed.
///
/// This is how a connection tells the client its verdict, whatever the
/// [`Classifier`](crate::classify::Classifier): the default classifier calls every
/// `ConnectionLost` dead. The connections of this crate's integrations
/// wrap their protocol's transport failures in it (hyper's "connection
/// closed before message completed", a PostgreSQL session that ended), so
/// the default classifier is the same whichever cargo features are on.
/// The protocol's own error stays reachable as the
/// [`source()`](Error::source).
///
/// # Example
///
/// ```
/// use std::error::Error as _;
/// use tower_redial::classify::is_transport_error;
/// use tower_redial::error::ConnectionLost;
///
/// // A protocol error the default classifier cannot know...
/// let desync = "reply out of step".to_string();
/// assert!(!is_transport_error(&*tower_redial::BoxError::from(desync.clone())));
/// // ...marked by the connection that knows it ended.
/// let lost = ConnectionLost::new(desync);
/// assert!(is_transport_error(&lost));
/// assert_eq!(lost.source().unwrap().to_string(), "reply out of step");
/// ```
pub struct ConnectionLost {
    source: BoxError,
}

impl ConnectionLost {
    /// Marks `source` as the error that ended the connection.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }

    /// Whether `error`, or any error in its `source()` chain, is a
    /// `ConnectionLost`.
    pub fn is_in(error: &(dyn Error + 'static)) -> bool {
        chain(error).any(|e| e.is::<ConnectionLost>())
    }
}

impl fmt::Debug for ConnectionLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLost")
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for ConnectionLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection lost")
    }
}

impl Error for ConnectionLost {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

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

/// The queue was full, and the policy sheds load: the request was refused
/// at once instead of waiting for room. It never reached the connection.
///
/// Only returned with
/// [`ReconnectPolicyBuilder::load_shed`](crate::ReconnectPolicyBuilder::load_shed).
#[derive(Clone, Debug, Default)]
pub struct Overloaded {
    _priv: (),
}

impl Overloaded {
    pub(crate) fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request queue is full")
    }
}

impl Error for Overloaded {}

/// User code panicked while serving a request: the connection factory, a
/// dial (and so a handshake), or the connection's `poll_ready`, `call` or
/// response future.
///
/// The panic is caught where it happened. The requests it touched fail with
/// this error, the connection it came from counts as dead, and the client
/// redials by its backoff: one bug in a protocol parser does not take the
/// client down. A request that failed with it may have reached the peer, so
/// it is not re-sent.
#[derive(Clone, Debug)]
pub struct Panicked {
    site: &'static str,
    message: Option<String>,
}

impl Panicked {
    pub(crate) fn new(site: &'static str, payload: &(dyn Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned());
        Self { site, message }
    }

    /// Where the panic happened, such as "the connection's `call`".
    pub fn site(&self) -> &'static str {
        self.site
    }

    /// The panic's message, when it was a string.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// Whether `error`, or any error in its `source()` chain, is a `Panicked`.
    pub fn is_in(error: &(dyn Error + 'static)) -> bool {
        chain(error).any(|e| e.is::<Panicked>())
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(message) => write!(f, "{} panicked: {message}", self.site),
            None => write!(f, "{} panicked", self.site),
        }
    }
}

impl Error for Panicked {}

/// The response did not come within the policy's
/// [`response_timeout`](crate::ReconnectPolicyBuilder::response_timeout).
///
/// The request may have reached the peer, so it is not re-sent by default.
/// On a connection that serves one request at a time (bound with
/// [`client`](crate::MakeReconnect::client)), the connection counts as dead
/// and is redialed: a reply that comes later would answer the wrong request.
#[derive(Clone, Debug)]
pub struct ResponseTimeout {
    after: Duration,
}

impl ResponseTimeout {
    pub(crate) fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The timeout that passed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for ResponseTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no response within {:?}", self.after)
    }
}

impl Error for ResponseTimeout {}
