use std::fmt;
use std::sync::Arc;

use tower::{Layer, Service};

use crate::client::Client;
use crate::connect::Factory;
use crate::lane::LaneCell;
use crate::reconnect::Reconnect;
use crate::retry::{AtMostOnce, ResendIf, ResendPolicy};
use crate::ReconnectPolicy;

/// Wraps a connection factory so that it makes reconnecting [`Client`]s.
///
/// The factory is a tower [`MakeService`](tower::MakeService): a
/// `Service<Target>` whose response is a connection, itself a
/// `Service<Request>`. A raw connector that yields IO becomes one through
/// [`Handshake`](crate::connect::Handshake).
///
/// The layer assembles, for each client, a [`Reconnect`] on a worker task
/// behind tower's [`Buffer`](tower::buffer::Buffer), and re-sends failed
/// requests through tower's [`Retry`](tower::retry::Retry) over that queue
/// when it is safe; see the [crate docs](crate) for the whole contract.
///
/// # Example
///
/// ```
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// # let make_connection = service_fn(|_: &'static str| async {
/// #     Ok::<_, BoxError>(service_fn(|req: String| async move { Ok::<_, BoxError>(req) }))
/// # });
/// let client = ServiceBuilder::new()
///     .layer(
///         ReconnectLayer::new(ReconnectPolicy::default())
///             // Opt in: GETs may be re-sent even if they may have been sent.
///             .resend_if(|req: &String| req.starts_with("GET ")),
///     )
///     .service(make_connection)
///     .client("cache-1:6379");
/// assert_eq!(client.oneshot("GET k".to_string()).await?, "GET k");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ReconnectLayer<R = AtMostOnce> {
    policy: ReconnectPolicy,
    resend: R,
}

impl ReconnectLayer {
    /// A layer with this policy. Requests that may have reached the peer are
    /// never sent again; see [`resend_if`](ReconnectLayer::resend_if).
    pub fn new(policy: ReconnectPolicy) -> Self {
        Self {
            policy,
            resend: AtMostOnce,
        }
    }
}

impl<R> ReconnectLayer<R> {
    /// Opts in to re-sending requests that may already have reached the peer,
    /// when `idempotent` returns `true` for them and their connection broke
    /// with a transport error.
    ///
    /// Each such request is cloned before it is sent, so that a copy is left
    /// to re-send. Re-sends are still bounded by the policy's attempts and
    /// retry budget.
    pub fn resend_if<F, Req>(self, idempotent: F) -> ReconnectLayer<ResendIf<F>>
    where
        F: Fn(&Req) -> bool + Clone + Send + Sync + 'static,
        Req: Clone,
    {
        ReconnectLayer {
            policy: self.policy,
            resend: ResendIf(idempotent),
        }
    }

    /// Installs a [`ResendPolicy`] of your own, which decides per request
    /// whether a copy is kept to send again if the connection breaks under
    /// it. Use it where [`resend_if`](ReconnectLayer::resend_if) does not
    /// fit: for requests that are not `Clone`, but can be copied when, say,
    /// their body is buffered. The rules of `resend_if` apply: a copy is
    /// sent only after a transport error, within the policy's attempts and
    /// retry budget. See [`ResendPolicy`] for an example.
    pub fn resend_with<P>(self, resend: P) -> ReconnectLayer<P> {
        ReconnectLayer {
            policy: self.policy,
            resend,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &ReconnectPolicy {
        &self.policy
    }
}

impl<M, R: Clone> Layer<M> for ReconnectLayer<R> {
    type Service = MakeReconnect<M, R>;

    fn layer(&self, make: M) -> Self::Service {
        MakeReconnect {
            make,
            policy: self.policy.clone(),
            resend: self.resend.clone(),
        }
    }
}

impl<R> fmt::Debug for ReconnectLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A connection factory wrapped by [`ReconnectLayer`]: binds clients to
/// their targets.
#[derive(Clone)]
pub struct MakeReconnect<M, R = AtMostOnce> {
    pub(crate) make: M,
    pub(crate) policy: ReconnectPolicy,
    pub(crate) resend: R,
}

impl<M, R> MakeReconnect<M, R> {
    /// A client bound to `target`, connected lazily on its first request.
    ///
    /// The client gets its own clone of the factory, its own connection and a
    /// worker task. Every dial calls the factory with a fresh clone of
    /// `target`, so the target is resolved afresh each time.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime, as the worker task is spawned here.
    pub fn client<T, Req>(&self, target: T) -> Client<Req, <M::Response as Service<Req>>::Response>
    where
        M: Factory<T, Req>,
        T: Clone + fmt::Debug + Send + 'static,
        Req: Send + 'static,
        R: ResendPolicy<Req>,
    {
        let reconnect = Reconnect::new(self.make.clone(), target, self.policy.clone());
        let lane = Arc::new(LaneCell::new());
        Client::new(reconnect, &self.policy, self.resend.clone(), lane)
    }

    /// A client bound to `target`, for a connection that carries many
    /// requests at once and whose clones share it: hyper's HTTP/2
    /// `SendRequest` (this crate's `hyper::http2` connection, also under
    /// tonic), redis's `MultiplexedConnection`. The connection must be
    /// `Clone + Send + Sync`.
    ///
    /// It behaves as [`client`](MakeReconnect::client) does, with one
    /// difference in the hot path: once a connection has proved healthy,
    /// each handle calls its own clone of the connection directly, on the
    /// caller's task, instead of sending the request through the queue to the
    /// worker. The queue and the worker carry requests only while the
    /// connection is being dialed or has just been made, so the
    /// per-request overhead is close to that of calling the connection
    /// itself; see `docs/BENCHMARKS.md`.
    ///
    /// Nothing else changes: a connection that fails `poll_ready`, or a
    /// response error the [`Classifier`](crate::classify::Classifier) calls dead, sends
    /// the next requests back through the queue while the worker redials;
    /// the failed request is re-sent on the next connection exactly when
    /// [`client`](MakeReconnect::client) would re-send it.
    ///
    /// Use [`client`](MakeReconnect::client) for a connection that serves
    /// one request at a time (HTTP/1, a PostgreSQL client): its clones, if it
    /// has any, would contend for it.
    ///
    /// # Readiness and clones
    ///
    /// While the connection is published, a handle's `poll_ready` is the
    /// connection's own, so backpressure is the connection's. Each handle
    /// keeps its own clone of the connection: cloning a handle clones it (for
    /// a boxed connection, one allocation), and a handle keeps its clone of a
    /// replaced connection until its next `poll_ready` or until it is
    /// dropped. Hold a handle per task rather than cloning one per request
    /// where that matters.
    ///
    /// # Example
    ///
    /// ```
    /// use tower::{service_fn, ServiceBuilder, ServiceExt};
    /// use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// // A `Clone` connection: every clone talks over the same connection.
    /// let make_connection = service_fn(|_: &'static str| async {
    ///     Ok::<_, BoxError>(service_fn(|n: u64| async move { Ok::<_, BoxError>(n + 1) }))
    /// });
    /// let client = ServiceBuilder::new()
    ///     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
    ///     .service(make_connection)
    ///     .multiplexed("cache-1:6379");
    /// // The first requests go through the worker, which dials, and publishes
    /// // the connection once it has answered; later ones call it directly.
    /// assert_eq!(client.clone().oneshot(1).await?, 2);
    /// assert_eq!(client.clone().oneshot(2).await?, 3);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime, as the worker task is spawned here.
    pub fn multiplexed<T, Req>(
        &self,
        target: T,
    ) -> Client<Req, <M::Response as Service<Req>>::Response>
    where
        M: Factory<T, Req>,
        M::Response: Clone + Sync,
        T: Clone + fmt::Debug + Send + 'static,
        Req: Send + 'static,
        R: ResendPolicy<Req>,
    {
        let lane = Arc::new(LaneCell::new());
        let reconnect = Reconnect::new(self.make.clone(), target, self.policy.clone())
            .with_lane(Box::new(lane.clone()));
        Client::new(reconnect, &self.policy, self.resend.clone(), lane)
    }

    /// The wrapped factory.
    pub fn get_ref(&self) -> &M {
        &self.make
    }
}

impl<M, R> fmt::Debug for MakeReconnect<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeReconnect")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}
