//! A [`ReconnectLayer`] bound to its target, so that the layer's service is
//! the [`Client`] itself and request-level layers stack on it in the same
//! `ServiceBuilder`.

use std::fmt;
use std::marker::PhantomData;

use tower::{Layer, Service};

use crate::client::Client;
use crate::connect::Factory;
use crate::layer::{MakeReconnect, ReconnectLayer};
use crate::retry::ResendPolicy;

/// A [`ReconnectLayer`] bound to one target: its `Layer::Service` is a
/// [`Client`]. Made by [`ReconnectLayer::target`].
///
/// In a `ServiceBuilder`, layers *before* it wrap the client, and so each
/// request: a timeout, a concurrency or rate limit, load shedding, tower's
/// retry. Layers *after* it wrap the connection factory, and so each dial:
/// a timeout there bounds a dial, as the policy's connect timeout does.
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let make_connection = service_fn(|_: &'static str| async {
///     Ok::<_, BoxError>(service_fn(|n: u32| async move { Ok::<_, BoxError>(n + 1) }))
/// });
/// let client = ServiceBuilder::new()
///     // Per request: at most 10 in flight, each within 1 s.
///     .concurrency_limit(10)
///     .timeout(Duration::from_secs(1))
///     .layer(ReconnectLayer::new(ReconnectPolicy::default()).target("db-1"))
///     .service(make_connection);
/// assert_eq!(client.oneshot(41).await?, 42);
/// # Ok(())
/// # }
/// ```
///
/// # Panics
///
/// `layer` makes the client, which spawns its task: it panics outside a
/// tokio runtime.
pub struct TargetLayer<T, R, Req, K = OneAtATime> {
    layer: ReconnectLayer<R>,
    target: T,
    _request: PhantomData<fn(Req) -> K>,
}

impl<R> ReconnectLayer<R> {
    /// Binds the layer to `target`: its service is then the [`Client`], as
    /// made by [`MakeReconnect::client`](crate::MakeReconnect::client), so
    /// it composes with request-level layers in one `ServiceBuilder`. See
    /// [`TargetLayer`].
    pub fn target<T, Req>(self, target: T) -> TargetLayer<T, R, Req> {
        TargetLayer {
            layer: self,
            target,
            _request: PhantomData,
        }
    }

    /// Binds the layer to `target`, for a multiplexed connection, as
    /// [`MakeReconnect::multiplexed`](crate::MakeReconnect::multiplexed)
    /// does. See [`TargetLayer`].
    pub fn multiplexed<T, Req>(self, target: T) -> MultiplexedTargetLayer<T, R, Req> {
        TargetLayer {
            layer: self,
            target,
            _request: PhantomData,
        }
    }
}

/// A [`ReconnectLayer`] bound to one target, for a multiplexed connection:
/// its `Layer::Service` is a [`Client`] made by
/// [`MakeReconnect::multiplexed`](crate::MakeReconnect::multiplexed). Made
/// by [`ReconnectLayer::multiplexed`]; see [`TargetLayer`].
pub type MultiplexedTargetLayer<T, R, Req> = TargetLayer<T, R, Req, Multiplexed>;

/// How a client is bound to its target: [`OneAtATime`], with
/// [`MakeReconnect::client`], or [`Multiplexed`], with
/// [`MakeReconnect::multiplexed`]. [`TargetLayer`] and
/// [`MakeClient`](crate::make::MakeClient) take one. Sealed.
pub trait Binding<M, R, T, Req>: sealed::Sealed {
    /// The client it makes.
    type Client;

    /// Binds a client made by `make` to `target`.
    #[doc(hidden)]
    fn bind(make: &MakeReconnect<M, R>, target: T) -> Self::Client;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::OneAtATime {}
    impl Sealed for super::Multiplexed {}
}

/// Binds clients with [`MakeReconnect::client`]: for connections that serve
/// one request at a time.
#[derive(Clone, Copy, Debug, Default)]
pub struct OneAtATime;

/// Binds clients with [`MakeReconnect::multiplexed`]: for connections that
/// carry many requests at once and whose clones share them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Multiplexed;

impl<M, R, T, Req> Binding<M, R, T, Req> for OneAtATime
where
    M: Factory<T, Req>,
    T: Clone + fmt::Debug + Send + 'static,
    Req: Send + 'static,
    R: ResendPolicy<Req>,
{
    type Client = Client<Req, <M::Response as Service<Req>>::Response>;

    fn bind(make: &MakeReconnect<M, R>, target: T) -> Self::Client {
        make.client(target)
    }
}

impl<M, R, T, Req> Binding<M, R, T, Req> for Multiplexed
where
    M: Factory<T, Req>,
    M::Response: Clone + Sync,
    T: Clone + fmt::Debug + Send + 'static,
    Req: Send + 'static,
    R: ResendPolicy<Req>,
{
    type Client = Client<Req, <M::Response as Service<Req>>::Response>;

    fn bind(make: &MakeReconnect<M, R>, target: T) -> Self::Client {
        make.multiplexed(target)
    }
}

impl<M, T, R, Req, K> Layer<M> for TargetLayer<T, R, Req, K>
where
    K: Binding<M, R, T, Req>,
    T: Clone,
    R: Clone,
{
    type Service = K::Client;

    fn layer(&self, make: M) -> Self::Service {
        K::bind(&self.layer.layer(make), self.target.clone())
    }
}

impl<T: Clone, R: Clone, Req, K> Clone for TargetLayer<T, R, Req, K> {
    fn clone(&self) -> Self {
        Self {
            layer: self.layer.clone(),
            target: self.target.clone(),
            _request: PhantomData,
        }
    }
}

impl<T: fmt::Debug, R, Req, K> fmt::Debug for TargetLayer<T, R, Req, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetLayer")
            .field("layer", &self.layer)
            .field("target", &crate::redact::redacted(&self.target))
            .finish()
    }
}
