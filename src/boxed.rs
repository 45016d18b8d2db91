//! One shape for the crate's named futures that wrap a boxed one.

/// Declares a named, `Send` future around a boxed future with the given
/// output: the struct, `new` (which boxes), `Future` and a `Debug` that
/// prints the name. Generic parameters, if any, are phantom: they name the
/// future's type after the request it answers.
///
/// ```text
/// boxed_future! {
///     /// The response future of a [`RedisConnection`].
///     pub struct ResponseFuture => Result<Value, BoxError>;
/// }
/// ```
macro_rules! boxed_future {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident $(<$($param:ident),+>)? => $output:ty;
    ) => {
        $(#[$attr])*
        $vis struct $name $(<$($param),+>)? {
            inner: ::std::pin::Pin<
                ::std::boxed::Box<dyn ::std::future::Future<Output = $output> + ::std::marker::Send>,
            >,
            _names: ::std::marker::PhantomData<fn($($($param),+)?)>,
        }

        impl $(<$($param),+>)? $name $(<$($param),+>)? {
            pub(crate) fn new<F>(future: F) -> Self
            where
                F: ::std::future::Future<Output = $output> + ::std::marker::Send + 'static,
            {
                Self {
                    inner: ::std::boxed::Box::pin(future),
                    _names: ::std::marker::PhantomData,
                }
            }
        }

        impl $(<$($param),+>)? ::std::future::Future for $name $(<$($param),+>)? {
            type Output = $output;

            fn poll(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Self::Output> {
                self.inner.as_mut().poll(cx)
            }
        }

        impl $(<$($param),+>)? ::std::fmt::Debug for $name $(<$($param),+>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }
    };
}

pub(crate) use boxed_future;
