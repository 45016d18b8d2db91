//! When it is safe to send a request again.
//!
//! The [`Client`](crate::Client) re-sends through tower's
//! [`Retry`](tower::retry::Retry), with a policy that keeps requests at most
//! once by default:
//!
//! - A request whose connection handed it back as [`NotSent`] never reached
//!   the peer, so it is re-sent, on the next connection. The request itself
//!   comes back in the error, so requests need not be `Clone`.
//! - A request that may have been sent is re-sent only if you opted in with
//!   [`ReconnectLayer::resend_if`](crate::ReconnectLayer::resend_if), its
//!   predicate says it is idempotent, and the error is a transport error (per
//!   the [`Classifier`]).
//! - A request that failed fast ([`Unavailable`]) or on
//!   a [`Closed`] client is not re-sent: that is the answer.
//!
//! Every re-send needs an attempt left (three sends in all, by default) and a
//! token from a budget with the accounting of tower's
//! [`TpsBudget`](tower::retry::budget::TpsBudget), so a dead server is not hit
//! by a retry storm.

use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tower::retry::budget::Budget;
use tower::retry::Policy;
use tower::Service;

use crate::budget::RetryBudget;
use crate::classify::Classifier;
use crate::driver::{Drive, Drove};
use crate::error::{Closed, NotSent, Unavailable};
use crate::state::{Counter, Observer};
use crate::BoxError;

/// The boxed future that crosses the queue to the worker.
pub(crate) type BoxResponse<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Decides which requests may be sent again after they may have reached the
/// peer. Implemented by [`AtMostOnce`] (the default) and [`ResendIf`]
/// (made by [`ReconnectLayer::resend_if`](crate::ReconnectLayer::resend_if)),
/// and installed with
/// [`ReconnectLayer::resend_with`](crate::ReconnectLayer::resend_with).
///
/// The policy is asked once per request, before its first send. The copy
/// it returns is what is sent again, and only if the request then fails
/// with a transport error (see [`Classifier`]), within the policy's
/// attempts and retry budget. A request its connection hands back as
/// [`NotSent`] is sent again whatever the policy.
///
/// # Example
///
/// Uploads whose body may be a one-shot stream are not `Clone`; a buffered
/// one can be copied.
///
/// ```
/// use tower_redial::retry::ResendPolicy;
/// use tower_redial::{ReconnectLayer, ReconnectPolicy};
///
/// enum Body {
///     Buffered(Vec<u8>),
///     Stream(tokio::sync::mpsc::Receiver<Vec<u8>>),
/// }
///
/// struct Put {
///     path: String,
///     body: Body,
/// }
///
/// /// A `PUT` is idempotent: re-send it whenever its body can be copied.
/// #[derive(Clone)]
/// struct BufferedPuts;
///
/// impl ResendPolicy<Put> for BufferedPuts {
///     fn copy_if_idempotent(&self, put: &Put) -> Option<Put> {
///         match &put.body {
///             Body::Buffered(bytes) => Some(Put {
///                 path: put.path.clone(),
///                 body: Body::Buffered(bytes.clone()),
///             }),
///             Body::Stream(_) => None,
///         }
///     }
/// }
///
/// let layer = ReconnectLayer::new(ReconnectPolicy::default()).resend_with(BufferedPuts);
/// # let _ = layer;
/// let put = Put { path: "/a".into(), body: Body::Buffered(b"x".to_vec()) };
/// assert!(BufferedPuts.copy_if_idempotent(&put).is_some());
/// ```
pub trait ResendPolicy<Req>: Clone + Send + Sync + 'static {
    /// A copy of `request` to send again if its connection breaks, or `None`
    /// if re-sending it could run it twice with harm.
    fn copy_if_idempotent(&self, request: &Req) -> Option<Req>;

    /// Whether this policy ever returns a copy. `false` saves the per-request
    /// call.
    fn resends(&self) -> bool {
        true
    }
}

/// The default: a request that may have been sent is never sent again.
#[derive(Clone, Copy, Debug, Default)]
pub struct AtMostOnce;

impl<Req> ResendPolicy<Req> for AtMostOnce {
    fn copy_if_idempotent(&self, _: &Req) -> Option<Req> {
        None
    }

    fn resends(&self) -> bool {
        false
    }
}

/// Re-sends requests for which the predicate returns `true`, by cloning them
/// before each send. Made by
/// [`ReconnectLayer::resend_if`](crate::ReconnectLayer::resend_if).
#[derive(Clone, Copy)]
pub struct ResendIf<F>(pub(crate) F);

impl<F> fmt::Debug for ResendIf<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResendIf").finish_non_exhaustive()
    }
}

impl<Req, F> ResendPolicy<Req> for ResendIf<F>
where
    Req: Clone,
    F: Fn(&Req) -> bool + Clone + Send + Sync + 'static,
{
    fn copy_if_idempotent(&self, request: &Req) -> Option<Req> {
        (self.0)(request).then(|| request.clone())
    }
}

pub(crate) type Copier<Req> = Arc<dyn Fn(&Req) -> Option<Req> + Send + Sync>;

pub(crate) fn copier<Req, R: ResendPolicy<Req>>(resend: R) -> Option<Copier<Req>> {
    resend
        .resends()
        .then(|| Arc::new(move |r: &Req| resend.copy_if_idempotent(r)) as Copier<Req>)
}

/// A request on its way to the worker.
///
/// A first send carries the request itself: if the connection hands it back
/// unsent, it comes back inside the [`NotSent`] error, to the caller's
/// future, which decides whether to re-send it. A re-send goes through tower's
/// [`Retry`](tower::retry::Retry), whose future and the worker share the
/// request: the worker takes it out to send it, and a connection that hands
/// it back puts it back, ready for the next re-send.
pub(crate) enum Slot<Req> {
    First(Req),
    Shared(Arc<Mutex<Contents<Req>>>),
}

pub(crate) struct Contents<Req> {
    request: Option<Req>,
    /// A copy kept for an idempotent re-send.
    spare: Option<Req>,
}

impl<Req> Slot<Req> {
    /// A request to re-send: the request, if the connection handed it back,
    /// and the spare copy, if one was kept.
    pub(crate) fn shared(request: Option<Req>, spare: Option<Req>) -> Self {
        Self::Shared(Arc::new(Mutex::new(Contents { request, spare })))
    }

    /// Runs `f` on a shared slot's contents; `None` for a first send.
    fn with<R>(&self, f: impl FnOnce(&mut Contents<Req>) -> R) -> Option<R> {
        match self {
            Self::First(_) => None,
            Self::Shared(contents) => Some(f(&mut contents
                .lock()
                .unwrap_or_else(PoisonError::into_inner))),
        }
    }

    fn has_request(&self) -> bool {
        self.with(|c| c.request.is_some()).unwrap_or(true)
    }

    /// Moves the spare copy into place for a re-send, and makes a new spare.
    fn use_spare(&self, copier: &Copier<Req>) -> bool {
        self.with(|c| match c.spare.take() {
            Some(spare) => {
                c.spare = copier(&spare);
                c.request = Some(spare);
                true
            }
            None => false,
        })
        .unwrap_or(false)
    }
}

/// The retry policy: at most once by default, see the module docs.
pub(crate) struct RetryPolicy<Req> {
    sends_left: u32,
    budget: Arc<RetryBudget>,
    classifier: Classifier,
    copier: Option<Copier<Req>>,
    observer: Arc<Observer>,
}

impl<Req> RetryPolicy<Req> {
    pub(crate) fn new(
        attempts: u32,
        budget: RetryBudget,
        classifier: Classifier,
        copier: Option<Copier<Req>>,
        observer: Arc<Observer>,
    ) -> Self {
        Self {
            sends_left: attempts.saturating_sub(1),
            budget: Arc::new(budget),
            classifier,
            copier,
            observer,
        }
    }
}

impl<Req> RetryPolicy<Req> {
    /// A response came back: it earns re-sends in the budget.
    pub(crate) fn succeeded(&self) {
        self.budget.deposit();
    }

    /// Whether `error` means the connection is dead: a panic, or what the
    /// classifier calls dead. (A panicked request is still not re-sent: it
    /// may have reached the peer.)
    pub(crate) fn is_dead(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        self.classifier.finds_dead(error)
    }
}

impl<Req> Clone for RetryPolicy<Req> {
    fn clone(&self) -> Self {
        Self {
            sends_left: self.sends_left,
            budget: self.budget.clone(),
            classifier: self.classifier.clone(),
            copier: self.copier.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<Req, Res> Policy<Slot<Req>, Res, BoxError> for RetryPolicy<Req> {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        slot: &mut Slot<Req>,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        let error = match result {
            Ok(_) => {
                self.succeeded();
                return None;
            }
            Err(error) => &**error,
        };
        if self.sends_left == 0 || is_final(error) {
            return None;
        }
        let handed_back = slot.has_request() && NotSent::is_in(error);
        // A spare goes for a request that never left, or one opted in whose
        // connection broke.
        let resend = !handed_back
            && self.copier.as_ref().is_some_and(|copy| {
                (NotSent::is_in(error) || self.classifier.is_dead(error)) && slot.use_spare(copy)
            });
        if !handed_back && !resend {
            return None;
        }
        if !self.budget.withdraw() {
            tracing::debug!("retry budget spent; not re-sending");
            return None;
        }
        self.sends_left -= 1;
        self.observer.count(Counter::Retries);
        tracing::debug!(
            reason = if handed_back {
                "not sent"
            } else {
                "idempotent"
            },
            "re-sending request"
        );
        Some(ready(()))
    }

    fn clone_request(&mut self, slot: &Slot<Req>) -> Option<Slot<Req>> {
        match slot {
            Slot::First(_) => None,
            Slot::Shared(contents) => Some(Slot::Shared(contents.clone())),
        }
    }
}

/// Whether `error` is the client's own answer, never worth a re-send: the
/// connection has been down past the wait limit, or the client is closed.
fn is_final(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::error::chain(error).any(|e| e.is::<Unavailable>() || e.is::<Closed>())
}

impl<S, Req> Drive<Slot<Req>> for Unslot<S>
where
    S: Drive<Req, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Drove {
        self.0.poll_drive(cx)
    }

    fn poll_ready_settled(&mut self, cx: &mut Context<'_>) -> (Poll<Result<(), BoxError>>, bool) {
        self.0.poll_ready_settled(cx)
    }
}

/// Runs on the worker: sends each request, taking a shared one out of its
/// [`Slot`] and putting it back if the connection hands it back unsent.
pub(crate) struct Unslot<S>(pub(crate) S);

impl<S, Req> Service<Slot<Req>> for Unslot<S>
where
    S: Service<Req, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxResponse<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, slot: Slot<Req>) -> Self::Future {
        let contents = match slot {
            Slot::First(request) => return Box::pin(self.0.call(request)),
            Slot::Shared(contents) => contents,
        };
        let taken = contents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .request
            .take();
        let Some(request) = taken else {
            return Box::pin(ready(Err("request slot was empty".into())));
        };
        let future = self.0.call(request);
        Box::pin(async move {
            let mut result = future.await;
            if let Err(error) = &mut result {
                if let Some(not_sent) = error.downcast_mut::<NotSent>() {
                    if let Some(request) = not_sent.take_request::<Req>() {
                        let mut contents = contents.lock().unwrap_or_else(PoisonError::into_inner);
                        contents.request = Some(request);
                    }
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use super::*;

    /// A policy with no reserve: re-sends are paid for by successes only,
    /// one per success (100 %).
    fn policy(copier: Option<Copier<String>>) -> RetryPolicy<String> {
        RetryPolicy::new(
            3,
            RetryBudget::new(Duration::from_secs(10), 0, 1.0),
            Classifier::default(),
            copier,
            Arc::new(Observer::new("db".into())),
        )
    }

    fn not_sent(request: &str) -> Result<String, BoxError> {
        Err(NotSent::with_request(request.to_string(), "closed").into())
    }

    fn reset() -> Result<String, BoxError> {
        Err(io::Error::from(io::ErrorKind::ConnectionReset).into())
    }

    /// Successes earn re-sends: with no reserve, a handed-back request is
    /// re-sent only once a success has paid into the budget.
    #[test]
    fn successes_earn_resends() {
        let mut policy = policy(None);
        let mut slot = Slot::shared(Some("GET".to_string()), None);
        assert!(
            policy.retry(&mut slot, &mut not_sent("GET")).is_none(),
            "nothing earned yet"
        );
        policy.succeeded();
        assert!(policy.retry(&mut slot, &mut not_sent("GET")).is_some());
    }

    /// Only a request that is back in its slot and was handed back unsent is
    /// re-sent by default: a transport error alone, or a `NotSent` whose
    /// request did not come back, is not enough.
    #[test]
    fn handed_back_needs_the_request_and_not_sent() {
        let mut policy = policy(None);
        for _ in 0..10 {
            policy.succeeded();
        }
        let mut full = Slot::shared(Some("INCR".to_string()), None);
        assert!(
            policy.retry(&mut full, &mut reset()).is_none(),
            "may have been sent"
        );
        let mut empty = Slot::shared(None, None);
        assert!(!empty.has_request());
        assert!(
            policy.retry(&mut empty, &mut not_sent("INCR")).is_none(),
            "nothing to send"
        );
        assert!(full.has_request());
        assert!(policy.retry(&mut full, &mut not_sent("INCR")).is_some());
    }

    /// Opted-in re-sends use the spare copy, only for errors that mean the
    /// connection is dead, and keep a fresh spare for the next re-send.
    #[test]
    fn opted_in_resends_use_the_spare_copy() {
        let copier: Copier<String> = Arc::new(|r: &String| Some(r.clone()));
        let mut policy = policy(Some(copier));
        for _ in 0..10 {
            policy.succeeded();
        }
        let mut slot = Slot::shared(None, Some("GET".to_string()));
        let mut refused: Result<String, BoxError> = Err(io::Error::other("ERR no such key").into());
        assert!(
            policy.retry(&mut slot, &mut refused).is_none(),
            "the peer's answer"
        );
        assert!(policy.retry(&mut slot, &mut reset()).is_some());
        assert!(slot.has_request(), "the spare moved into place");
        assert!(slot.use_spare(&(Arc::new(|r: &String| Some(r.clone())) as Copier<String>)));
    }

    /// The client's own answers are final: a request that failed fast, or on
    /// a closed client, is never re-sent.
    #[test]
    fn fail_fast_and_closed_are_final() {
        let mut policy = policy(None);
        for _ in 0..10 {
            policy.succeeded();
        }
        let mut slot = Slot::shared(Some("GET".to_string()), None);
        let unavailable = NotSent::with_request(
            "GET".to_string(),
            Unavailable::new("db".into(), Duration::from_secs(1), 1, None),
        );
        let mut result: Result<String, BoxError> = Err(unavailable.into());
        assert!(policy.retry(&mut slot, &mut result).is_none());
        let closed = NotSent::with_request("GET".to_string(), Closed::new("db".into(), 1, None));
        let mut result: Result<String, BoxError> = Err(closed.into());
        assert!(policy.retry(&mut slot, &mut result).is_none());
    }

    /// Re-sends stop when the attempts are spent: three sends in all.
    #[test]
    fn attempts_bound_resends() {
        let mut policy = policy(None);
        for _ in 0..10 {
            policy.succeeded();
        }
        let mut slot = Slot::shared(Some("GET".to_string()), None);
        assert!(policy.retry(&mut slot, &mut not_sent("GET")).is_some());
        assert!(policy.retry(&mut slot, &mut not_sent("GET")).is_some());
        assert!(policy.retry(&mut slot, &mut not_sent("GET")).is_none());
    }
}
