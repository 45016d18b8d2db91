//! What a connection factory must be for a client: the bounds, named once.

use tower::Service;

use crate::BoxError;

/// A connection factory for targets `T` whose connections serve requests
/// `Req`, as a [`Client`](crate::Client) needs it: a `Clone` tower
/// [`MakeService`](tower::MakeService) whose futures, errors and
/// connections can move to the client's task.
///
/// Nothing to implement: every `Service<T>` that fits is one. It names the
/// bounds that [`MakeReconnect::client`](crate::MakeReconnect::client) and
/// its kin (the `MakeService` forms, the balanced clients) ask for, in one
/// place:
///
/// - the factory is `Service<T> + Clone + Send + 'static`, its future is
///   `Send + 'static` and its error converts into a [`BoxError`];
/// - each connection it makes is `Service<Req> + Send + 'static`, with a
///   `Send + 'static` future and response, and an error that converts into
///   a [`BoxError`].
///
/// # Example
///
/// ```
/// use tower::service_fn;
/// use tower_redial::connect::Factory;
/// use tower_redial::BoxError;
///
/// fn takes<M: Factory<&'static str, String>>(_: M) {}
///
/// takes(service_fn(|_: &'static str| async {
///     Ok::<_, BoxError>(service_fn(|s: String| async move { Ok::<_, BoxError>(s.len()) }))
/// }));
/// ```
pub trait Factory<T, Req>:
    Service<
        T,
        Future: Send + 'static,
        Error: Into<BoxError>,
        Response: Service<
            Req,
            Future: Send + 'static,
            Error: Into<BoxError>,
            Response: Send + 'static,
        > + Send
                      + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<M, T, Req> Factory<T, Req> for M
where
    M: Service<T> + Clone + Send + 'static,
    M::Future: Send + 'static,
    M::Error: Into<BoxError>,
    M::Response: Service<Req> + Send + 'static,
    <M::Response as Service<Req>>::Future: Send + 'static,
    <M::Response as Service<Req>>::Error: Into<BoxError>,
    <M::Response as Service<Req>>::Response: Send + 'static,
{
}
