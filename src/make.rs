//! [`MakeReconnect`] as a tower [`MakeService`](tower::MakeService): a
//! `Service<Target>` whose response is a [`Client`](crate::Client).
//!
//! Code written against tower's `MakeService`, or any `Service` of targets,
//! can then make reconnecting clients the way it makes anything else:
//!
//! ```
//! use tower::{service_fn, MakeService, ServiceBuilder, ServiceExt};
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! /// Knows nothing of tower-redial: any `MakeService` of `u32` services will do.
//! async fn ask<M>(mut make: M, target: &'static str) -> Result<u32, BoxError>
//! where
//!     M: MakeService<&'static str, u32, Response = u32>,
//!     M::MakeError: Into<BoxError>,
//!     M::Error: Into<BoxError>,
//! {
//!     let client = make.make_service(target).await.map_err(Into::into)?;
//!     client.oneshot(41).await.map_err(Into::into)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let make_connection = service_fn(|_: &'static str| async {
//!     Ok::<_, BoxError>(service_fn(|n: u32| async move { Ok::<_, BoxError>(n + 1) }))
//! });
//! let make_client = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(make_connection)
//!     .into_make_service::<u32>();
//! assert_eq!(ask(make_client, "db-1").await?, 42);
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::marker::PhantomData;
use std::task::{Context, Poll};

use tower::Service;

use crate::bind::{Binding, Multiplexed, OneAtATime};
use crate::layer::MakeReconnect;

/// [`MakeReconnect`] as a `Service<T>`: each call makes a [`Client`](crate::Client) bound
/// to its target, with [`MakeReconnect::client`] (`K` =
/// [`OneAtATime`]) or [`MakeReconnect::multiplexed`] (`K` =
/// [`Multiplexed`]). Made by [`MakeReconnect::into_make_service`] and
/// [`MakeReconnect::into_make_multiplexed`].
///
/// # Readiness and errors
///
/// Always ready, and never fails: a client is made at once and dials
/// lazily, on its first request (see [`Client::connected`](crate::Client::connected) to wait for a
/// connection). So the error type is [`Infallible`].
///
/// # Panics
///
/// `call` spawns the client's task: it panics outside a tokio runtime.
pub struct MakeClient<M, R, Req, K = OneAtATime> {
    make: MakeReconnect<M, R>,
    _request: PhantomData<fn(Req) -> K>,
}

impl<M, R> MakeReconnect<M, R> {
    /// This factory as a tower [`MakeService`](tower::MakeService) for
    /// requests of type `Req`: a `Service<T>` whose response is
    /// [`client(target)`](MakeReconnect::client). See [`MakeClient`] and
    /// the [module docs](crate::make).
    pub fn into_make_service<Req>(self) -> MakeClient<M, R, Req> {
        MakeClient {
            make: self,
            _request: PhantomData,
        }
    }

    /// As [`into_make_service`](MakeReconnect::into_make_service), with
    /// clients made by [`multiplexed(target)`](MakeReconnect::multiplexed).
    pub fn into_make_multiplexed<Req>(self) -> MakeClient<M, R, Req, Multiplexed> {
        MakeClient {
            make: self,
            _request: PhantomData,
        }
    }
}

impl<M, R, Req, K> MakeClient<M, R, Req, K> {
    /// The wrapped [`MakeReconnect`].
    pub fn get_ref(&self) -> &MakeReconnect<M, R> {
        &self.make
    }
}

impl<M, R, T, Req, K> Service<T> for MakeClient<M, R, Req, K>
where
    K: Binding<M, R, T, Req>,
{
    type Response = K::Client;
    type Error = Infallible;
    type Future = Ready<Result<K::Client, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: T) -> Self::Future {
        ready(Ok(K::bind(&self.make, target)))
    }
}

impl<M: Clone, R: Clone, Req, K> Clone for MakeClient<M, R, Req, K> {
    fn clone(&self) -> Self {
        Self {
            make: self.make.clone(),
            _request: PhantomData,
        }
    }
}

impl<M, R, Req, K> fmt::Debug for MakeClient<M, R, Req, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeClient")
            .field("make", &self.make)
            .finish_non_exhaustive()
    }
}
