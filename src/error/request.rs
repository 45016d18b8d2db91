//! What became of one request on a connection: never sent, lost with the connection, shed, panicked, or timed out.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::chain;
use crate::BoxError;

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
