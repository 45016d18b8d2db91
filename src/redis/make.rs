//! The connection factory: dials a redis server, watched where it can be.

use std::fmt;
use std::io;
use std::task::{Context, Poll};

use ::redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio::net::TcpStream;
use tower::Service;

use super::errors::into_box;
use super::RedisConnection;
use crate::boxed::boxed_future;
use crate::BoxError;

/// A connection factory: dials a redis server and makes a
/// [`RedisConnection`].
///
/// As a `Service<T>`, where `T` is a URL or a [`ConnectionInfo`] (anything
/// [`IntoConnectionInfo`]), it connects, runs redis-rs's handshake (`AUTH`,
/// `SELECT`, `HELLO` as the target asks), spawns the connection's task, and
/// sends a `PING`: a server that is up but not serving yet (loading its
/// dataset, say) fails the dial with [`NotServing`](super::NotServing). See the
/// [module docs](super) for how to use it and what it does.
///
/// # Default
///
/// redis-rs's default [`AsyncConnectionConfig`]: a 500 ms response timeout,
/// no concurrency limit.
#[derive(Clone, Default)]
pub struct MakeRedis {
    config: AsyncConnectionConfig,
}

impl MakeRedis {
    /// A factory with redis-rs's default connection config.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory whose connections use `config`: its response timeout,
    /// pipeline buffer size, concurrency limit and push sender. Its
    /// connection timeout and DNS resolver are not used (see the
    /// [module docs](super#timeouts)).
    pub fn with_config(config: AsyncConnectionConfig) -> Self {
        Self { config }
    }
}

impl fmt::Debug for MakeRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeRedis")
            .field("config", &self.config)
            .finish()
    }
}

impl<T> Service<T> for MakeRedis
where
    T: IntoConnectionInfo,
{
    type Response = RedisConnection;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: T) -> Self::Future {
        let info = target.into_connection_info();
        let config = self.config.clone();
        ConnectFuture::new(async move {
            let info = info.map_err(into_box)?;
            connect(info, config).await
        })
    }
}

boxed_future! {
    /// The future of a [`MakeRedis`] dial.
    pub struct ConnectFuture => Result<RedisConnection, BoxError>;
}

/// Dials `info`, and checks that the server serves commands.
async fn connect(
    info: ConnectionInfo,
    config: AsyncConnectionConfig,
) -> Result<RedisConnection, BoxError> {
    let connection = dial(info, config).await?;
    connection.check_serving().await?;
    Ok(connection)
}

/// Dials `info`: TCP and Unix sockets here, watched; anything else through
/// redis-rs.
async fn dial(
    info: ConnectionInfo,
    config: AsyncConnectionConfig,
) -> Result<RedisConnection, BoxError> {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            apply_tcp_settings(&stream, info.tcp_settings())?;
            RedisConnection::handshake(stream, &info, config).await
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await?;
            RedisConnection::handshake(stream, &info, config).await
        }
        _ => {
            // Our connect timeout bounds the dial.
            let config = config.set_connection_timeout(None);
            let connection = ::redis::Client::open(info)
                .map_err(into_box)?
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(into_box)?;
            Ok(RedisConnection::unwatched(connection))
        }
    }
}

/// Applies the address's TCP settings, as redis-rs does.
fn apply_tcp_settings(
    stream: &TcpStream,
    settings: &::redis::io::tcp::TcpSettings,
) -> io::Result<()> {
    use ::redis::io::tcp::socket2::SockRef;

    stream.set_nodelay(settings.nodelay())?;
    let socket = SockRef::from(stream);
    if let Some(keepalive) = settings.keepalive() {
        socket.set_tcp_keepalive(keepalive)?;
    }
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    socket.set_tcp_user_timeout(settings.user_timeout())?;
    Ok(())
}
