//! The connection factory: dials a PostgreSQL server and hands back a
//! [`PgConnection`].

use std::task::{Context, Poll};

use ::tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use ::tokio_postgres::{Config, NoTls, Socket};
use tower::Service;

use crate::boxed::boxed_future;

use super::PgConnection;

/// The connection factory: a `Service<`[`Config`]`>`
/// that connects and returns a [`PgConnection`].
///
/// Wrap it in a [`ReconnectLayer`](crate::ReconnectLayer); see the
/// [module docs](super). Every dial connects with a fresh clone of the config,
/// so host names are resolved afresh. The config names the connection in
/// logs; its `Debug` form never shows the password.
///
/// The dial error is the `tokio_postgres::Error` of the connect: a refused
/// or reset connection, an authentication failure, or the server's
/// `57P03 cannot_connect_now` while it starts up or shuts down.
///
/// # TLS
///
/// [`MakePostgres::new`] connects without TLS (`NoTls`).
/// [`MakePostgres::with_tls`] takes any `tokio-postgres` TLS connector: the
/// crate's own `PgTls` (with the `tls` feature: the same `TlsConfig` as the
/// hyper and tonic clients, and rustls's error under the dial's), or
/// `tokio-postgres-rustls`', `postgres-native-tls`' or `postgres-openssl`'s;
/// see [TLS](super#tls).
#[derive(Clone, Debug)]
pub struct MakePostgres<T = NoTls> {
    tls: T,
}

impl MakePostgres {
    /// A factory that connects without TLS.
    pub fn new() -> Self {
        Self { tls: NoTls }
    }
}

impl Default for MakePostgres {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> MakePostgres<T> {
    /// A factory that connects through the TLS connector `tls`: any
    /// `tokio_postgres::tls::MakeTlsConnect`. See [TLS](super#tls).
    ///
    /// # Example
    ///
    /// With rustls, through the `tokio-postgres-rustls` crate, the
    /// connector is `MakeRustlsConnect::new(client_config)`; here `NoTls`
    /// stands in for it:
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_redial::postgres::{MakePostgres, PgClient};
    /// use tower_redial::{ReconnectLayer, ReconnectPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_redial::BoxError> {
    /// let tls = tokio_postgres::NoTls; // or MakeRustlsConnect::new(client_config)
    /// let config: tokio_postgres::Config =
    ///     "host=db.example.com user=app sslmode=require".parse()?;
    /// let client: PgClient = ServiceBuilder::new()
    ///     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
    ///     .service(MakePostgres::with_tls(tls))
    ///     .client(config);
    /// # drop(client);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_tls(tls: T) -> Self {
        Self { tls }
    }
}

impl<T> Service<Config> for MakePostgres<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Response = PgConnection;
    type Error = ::tokio_postgres::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, config: Config) -> Connecting {
        let tls = self.tls.clone();
        Connecting::new(async move {
            let (client, connection) = config.connect(tls.clone()).await?;
            Ok(PgConnection::with_tls(client, connection, tls))
        })
    }
}

boxed_future! {
    /// The future of [`MakePostgres`]: a connect in progress.
    pub struct Connecting => Result<PgConnection, ::tokio_postgres::Error>;
}
