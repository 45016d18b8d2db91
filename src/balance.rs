//! Many endpoints: one client balanced over several reconnecting endpoints.
//!
//! [`MakeReconnect::balance`] and [`MakeReconnect::balance_discover`] make a
//! [`Client`] that spreads requests over several targets with tower's
//! power-of-two-choices balancer ([`p2c::Balance`]), least pending requests
//! first. The stack, one per client, is
//!
//! ```text
//! Client: Retry (at most once) → Buffer (bounded queue) → wait limit
//!     → p2c::Balance → per endpoint: PendingRequests<Reconnect>
//! ```
//!
//! # Readiness under the balancer
//!
//! Each endpoint is a [`Reconnect`] that stays `Pending` for as long as it
//! redials, and never fails fast on its own. The balancer only picks ready
//! endpoints, so a request never goes to an endpoint that is down: it goes
//! to one that is up. Reconnect layers that report ready after a failed dial
//! and fail the next call (tower's and tonic's `Reconnect`) lose requests
//! here.
//!
//! The wait limit applies to the client as a whole. While no endpoint is
//! ready, requests wait in the queue. Once none has been ready for the wait
//! limit, requests fail fast with [`Unavailable`](crate::error::Unavailable) (its
//! `attempts()` is 0 and it has no `source()`: no single dial is to blame)
//! until any endpoint is ready again.
//!
//! Endpoints redial in the background: once the client has been used, its
//! task polls the balancer whenever a timer or a dial wakes it, so a down
//! endpoint keeps to its backoff schedule and is back in the ready set as
//! soon as a dial succeeds, with no request needed. The balancer picks an
//! endpoint when it is polled; as the client's task polls it too, the pick
//! it made before an endpoint returned may serve one more request.
//!
//! An endpoint whose own attempt or time limit runs out is removed from the
//! balancer. The client's [`stats`](Client::stats) add up every endpoint's
//! counters; its [`state`](Client::state) is `Ready` while any endpoint is
//! ready, `Connecting` while none is, then `FailFast`.
//!
//! # Example
//!
//! ```
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let make_connection = service_fn(|replica: &'static str| async move {
//!     Ok::<_, BoxError>(service_fn(move |_: String| async move { Ok::<_, BoxError>(replica) }))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(make_connection)
//!     .balance(["replica-a", "replica-b", "replica-c"]);
//!
//! let replica = client.oneshot("GET k".to_string()).await?;
//! assert!(replica.starts_with("replica-"));
//! # Ok(())
//! # }
//! ```
//!
//! [`p2c::Balance`]: tower::balance::p2c::Balance

use std::fmt;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tower::balance::p2c::Balance;
use tower::discover::{Change, Discover, ServiceList};
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::Service;

use crate::client::Client;
use crate::connect::Factory;
use crate::failfast::FailFast;
use crate::lane::LaneCell;
use crate::layer::MakeReconnect;
use crate::reconnect::Reconnect;
use crate::retry::ResendPolicy;
use crate::state::Observer;
use crate::{BoxError, ReconnectPolicy};

/// How errors name a balanced client's target.
const BALANCED: &str = "the balanced endpoints";

/// One endpoint of a balanced client: a [`Reconnect`] that never fails fast
/// on its own, with its pending requests counted as its load.
pub type Endpoint<M, T> = PendingRequests<Reconnect<M, T>>;

impl<M: Clone, R: Clone> MakeReconnect<M, R> {
    /// A client balanced over a fixed list of targets. See [`balance`](crate::balance).
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime, as the worker task is spawned here.
    pub fn balance<T, Req, I>(&self, targets: I) -> Client<Req, Res<M, T, Req>>
    where
        I: IntoIterator<Item = T>,
        M: Factory<T, Req>,
        T: Clone + fmt::Debug + Send + 'static,
        Req: Send + 'static,
        R: ResendPolicy<Req>,
    {
        let observer = Arc::new(Observer::new(BALANCED.into()));
        let endpoints: Vec<_> = targets
            .into_iter()
            .map(|target| endpoint(&self.make, &self.policy, &observer, target))
            .collect();
        self.spawn_balanced(ServiceList::new(endpoints), observer)
    }

    /// A client balanced over targets that come and go: `targets` is a
    /// stream of [`Change`]s, such as the output of a service-discovery
    /// watch. Inserting a key that is already present replaces its endpoint
    /// once the new one is ready. See [`balance`](crate::balance).
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime, as the worker task is spawned here.
    pub fn balance_discover<D, K, T, E, Req>(&self, targets: D) -> Client<Req, Res<M, T, Req>>
    where
        D: Stream<Item = Result<Change<K, T>, E>> + Unpin + Send + 'static,
        K: Hash + Eq + Clone + Send + 'static,
        E: Into<BoxError>,
        M: Factory<T, Req>,
        T: Clone + fmt::Debug + Send + 'static,
        Req: Send + 'static,
        R: ResendPolicy<Req>,
    {
        let observer = Arc::new(Observer::new(BALANCED.into()));
        let endpoints = Endpoints {
            targets,
            make: self.make.clone(),
            policy: self.policy.clone(),
            observer: observer.clone(),
        };
        self.spawn_balanced(endpoints, observer)
    }

    fn spawn_balanced<D, Req>(
        &self,
        discover: D,
        observer: Arc<Observer>,
    ) -> Client<Req, <D::Service as Service<Req>>::Response>
    where
        D: Discover + Unpin + Send + 'static,
        D::Key: Hash + Clone + Send,
        D::Error: Into<BoxError>,
        D::Service: Service<Req> + tower::load::Load + Send,
        <D::Service as tower::load::Load>::Metric: fmt::Debug,
        <D::Service as Service<Req>>::Error: Into<BoxError>,
        <D::Service as Service<Req>>::Future: Send + 'static,
        <D::Service as Service<Req>>::Response: Send + 'static,
        Req: Send + 'static,
        R: ResendPolicy<Req>,
    {
        let balance = Balance::new(discover);
        let gated = FailFast::new(balance, self.policy.wait_limit, observer.clone());
        Client::spawn(
            gated,
            observer,
            &self.policy,
            self.resend.clone(),
            Arc::new(LaneCell::new()),
        )
    }
}

/// The response type of the connections `M` makes for `T`.
type Res<M, T, Req> = <<M as Service<T>>::Response as Service<Req>>::Response;

fn endpoint<M, T>(
    make: &M,
    policy: &ReconnectPolicy,
    observer: &Arc<Observer>,
    target: T,
) -> Endpoint<M, T>
where
    M: Service<T> + Clone,
    T: fmt::Debug,
{
    let reconnect =
        Reconnect::endpoint(make.clone(), target, policy.clone(), Some(observer.clone()));
    PendingRequests::new(reconnect, CompleteOnResponse::default())
}

pin_project! {
    /// Turns a stream of target changes into a stream of endpoint changes.
    struct Endpoints<D, M> {
        #[pin]
        targets: D,
        make: M,
        policy: ReconnectPolicy,
        observer: Arc<Observer>,
    }
}

impl<D, K, T, E, M> Stream for Endpoints<D, M>
where
    D: Stream<Item = Result<Change<K, T>, E>>,
    M: Service<T> + Clone,
    T: fmt::Debug,
{
    type Item = Result<Change<K, Endpoint<M, T>>, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        let change = match ready!(this.targets.poll_next(cx)) {
            None => return Poll::Ready(None),
            Some(Err(error)) => return Poll::Ready(Some(Err(error))),
            Some(Ok(change)) => change,
        };
        Poll::Ready(Some(Ok(match change {
            Change::Insert(key, target) => {
                Change::Insert(key, endpoint(this.make, this.policy, this.observer, target))
            }
            Change::Remove(key) => Change::Remove(key),
        })))
    }
}
