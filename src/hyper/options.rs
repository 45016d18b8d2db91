//! hyper's HTTP/2 client settings, for a handshake made with them.

use std::fmt;
use std::time::Duration;

use ::hyper::body::Body;
use ::hyper::client::conn::http2 as h2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{watch, Http2Connection, Resendable};
use crate::boxed::boxed_future;
use crate::connect::CloseWatch;
use crate::BoxError;

/// HTTP/2 settings for the connections a [`Handshake`](crate::connect::Handshake)
/// makes: hyper's [`http2::Builder`](::hyper::client::conn::http2::Builder)
/// options, with tokio's executor and timer already in place.
///
/// [`handshake`](Http2::handshake) turns the settings into a handshake
/// function, used where [`http2`](super::http2) is:
/// `Handshake::new(connector, Http2::new().keep_alive_interval(..).handshake())`.
/// `Http2::new()` with no option set makes the same connections as
/// [`http2`](super::http2).
///
/// # Keep-alive and dead peers
///
/// A peer that vanishes (a host crash, a pulled cable, a firewall that
/// forgot the flow) sends neither FIN nor RST, and an idle connection to it
/// looks healthy until a request fails, which over TCP can take ≈ 15 min.
/// With [`keep_alive_interval`](Http2::keep_alive_interval), hyper sends an
/// HTTP/2 `PING` every interval; one not acknowledged within
/// [`keep_alive_timeout`](Http2::keep_alive_timeout) closes the connection.
/// The client then notices at once, with no request needed, and redials: a
/// dead peer is found within about interval + timeout. Pings go out only
/// while requests are open, unless
/// [`keep_alive_while_idle`](Http2::keep_alive_while_idle) is set; set it to
/// find a dead peer before the next request does.
///
/// A request in flight when the ping times out fails with a
/// [`ConnectionLost`](crate::error::ConnectionLost) (hyper's error
/// `is_timeout()`), as it may have reached the server. A blackholed peer
/// does not accept the redial either: each dial then ends at the policy's
/// connect timeout, and requests wait in the queue, up to the wait limit.
///
/// [`TcpConnector::detect_dead_peers`](crate::connect::TcpConnector::detect_dead_peers)
/// finds the same peers with the kernel's timers instead, for any protocol;
/// HTTP/2 pings also go through proxies that answer TCP themselves.
///
/// # Streams
///
/// How many requests run at once over one connection is the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`: hyper holds the requests beyond it
/// until a stream frees, while the connection stays ready.
/// [`initial_max_send_streams`](Http2::initial_max_send_streams) is the
/// limit assumed until the server's settings arrive. For a lower limit of
/// your own, put tower's `ConcurrencyLimit` in front of the client.
///
/// # Example
///
/// ```
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_redial::connect::{Handshake, TcpConnector};
/// use tower_redial::hyper::Http2;
/// use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move {
/// #     loop {
/// #         let (io, _) = listener.accept().await.unwrap();
/// #         let hello = hyper::service::service_fn(|_| async {
/// #             Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("hello"))))
/// #         });
/// #         tokio::spawn(
/// #             hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
/// #                 .serve_connection(hyper_util::rt::TokioIo::new(io), hello),
/// #         );
/// #     }
/// # });
/// // Ping every 10 s, idle or not; a ping unanswered for 5 s closes the
/// // connection, and the client redials.
/// let http2 = Http2::new()
///     .keep_alive_interval(Duration::from_secs(10))
///     .keep_alive_timeout(Duration::from_secs(5))
///     .keep_alive_while_idle(true)
///     .initial_stream_window_size(1 << 20);
/// let client = ServiceBuilder::new()
///     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
///     .service(Handshake::new(TcpConnector::new(), http2.handshake()))
///     .multiplexed(addr);
///
/// let request = http::Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new()))?;
/// let response = client.oneshot(request).await?;
/// assert_eq!(response.status(), 200);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Http2 {
    builder: h2::Builder<TokioExecutor>,
}

impl Http2 {
    /// hyper's defaults: no keep-alive pings, a 2 MiB stream window and a
    /// 5 MiB connection window, 16 KiB frames.
    pub fn new() -> Self {
        let mut builder = h2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        Self { builder }
    }

    /// Sends an HTTP/2 `PING` every `interval`, to find a dead peer (see
    /// [Keep-alive and dead peers](Http2#keep-alive-and-dead-peers)).
    /// `None`, the default, sends none.
    ///
    /// # Panics
    ///
    /// If `interval` is zero: pings would go out back to back.
    pub fn keep_alive_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        let interval = interval.into();
        assert!(
            interval != Some(Duration::ZERO),
            "Http2::keep_alive_interval: zero; pass `None` for no pings"
        );
        self.builder.keep_alive_interval(interval);
        self
    }

    /// How long a keep-alive `PING` may go unacknowledged before the
    /// connection is closed. Default 20 s; does nothing without
    /// [`keep_alive_interval`](Http2::keep_alive_interval).
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: every ping would time out.
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "Http2::keep_alive_timeout: zero; every ping would time out"
        );
        self.builder.keep_alive_timeout(timeout);
        self
    }

    /// Whether keep-alive pings are also sent while no request is open.
    /// Default `false`: an idle connection is not pinged, and a dead peer
    /// is found by the next request. Does nothing without
    /// [`keep_alive_interval`](Http2::keep_alive_interval).
    pub fn keep_alive_while_idle(mut self, enabled: bool) -> Self {
        self.builder.keep_alive_while_idle(enabled);
        self
    }

    /// The flow-control window of each stream, in bytes: how much of a
    /// response body the server may send before the client has read it
    /// (`SETTINGS_INITIAL_WINDOW_SIZE`). Turns off the
    /// [adaptive window](Http2::adaptive_window).
    ///
    /// # Panics
    ///
    /// If `size` is above HTTP/2's largest window, 2³¹ - 1.
    pub fn initial_stream_window_size(mut self, size: u32) -> Self {
        check_window(size, "initial_stream_window_size");
        self.builder.initial_stream_window_size(size);
        self
    }

    /// The flow-control window of the whole connection, in bytes, shared by
    /// its streams (sent as a `WINDOW_UPDATE` on stream 0). Turns off the
    /// [adaptive window](Http2::adaptive_window).
    ///
    /// # Panics
    ///
    /// If `size` is above HTTP/2's largest window, 2³¹ - 1.
    pub fn initial_connection_window_size(mut self, size: u32) -> Self {
        check_window(size, "initial_connection_window_size");
        self.builder.initial_connection_window_size(size);
        self
    }

    /// Whether the windows adapt to the measured bandwidth-delay product
    /// (hyper's BDP pings), starting from the spec's 64 KiB. Overrides the
    /// two window sizes when turned on. Default `false`.
    pub fn adaptive_window(mut self, enabled: bool) -> Self {
        self.builder.adaptive_window(enabled);
        self
    }

    /// How many streams the client may open at once until the server's
    /// settings say otherwise (its `SETTINGS_MAX_CONCURRENT_STREAMS`
    /// replaces it). hyper's default is 100.
    pub fn initial_max_send_streams(mut self, max: usize) -> Self {
        self.builder.initial_max_send_streams(max);
        self
    }

    /// The largest frame the client accepts, in bytes
    /// (`SETTINGS_MAX_FRAME_SIZE`). Default 16 KiB.
    ///
    /// # Panics
    ///
    /// If `size` is outside HTTP/2's range, 16 KiB (2¹⁴) to 16 MiB - 1
    /// (2²⁴ - 1).
    pub fn max_frame_size(mut self, size: u32) -> Self {
        assert!(
            (MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&size),
            "Http2::max_frame_size: {size} is outside HTTP/2's range, {MIN_FRAME_SIZE} to {MAX_FRAME_SIZE}"
        );
        self.builder.max_frame_size(size);
        self
    }

    /// The largest header list the client accepts in a response, in bytes
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`). Default 16 KiB.
    pub fn max_header_list_size(mut self, size: u32) -> Self {
        self.builder.max_header_list_size(size);
        self
    }

    /// The size of the client's header compression table, in bytes
    /// (`SETTINGS_HEADER_TABLE_SIZE`). Default 4 KiB.
    pub fn header_table_size(mut self, size: u32) -> Self {
        self.builder.header_table_size(size);
        self
    }

    /// How many streams the client may have reset and still remember, to
    /// ignore their late frames (h2's default, 50 at the time of writing).
    pub fn max_concurrent_reset_streams(mut self, max: usize) -> Self {
        self.builder.max_concurrent_reset_streams(max);
        self
    }

    /// A handshake function with these settings, for
    /// [`Handshake`](crate::connect::Handshake): it runs hyper's HTTP/2
    /// handshake over a freshly connected IO (prior knowledge, or TLS with
    /// ALPN `h2` from the connector), spawns the connection's driver on the
    /// tokio runtime, and returns an [`Http2Connection`]. `B` is the request
    /// body type; name it if the compiler asks, as in
    /// `http2.handshake::<Full<Bytes>, _>()`.
    ///
    /// The handshake fails with hyper's error; it panics if called outside a
    /// tokio runtime.
    pub fn handshake<B, IO>(
        &self,
    ) -> impl FnMut(IO) -> Http2Handshaking<B> + Clone + Send + Sync + 'static
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let settings = self.clone();
        move |io| settings.connect(io)
    }

    /// The handshake over `io`.
    pub(super) fn connect<B, IO>(&self, io: IO) -> Http2Handshaking<B>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let handshake = self.builder.handshake::<_, Resendable<B>>(TokioIo::new(io));
        Http2Handshaking::new(async move {
            let (sender, connection) = handshake.await?;
            let closed = CloseWatch::new();
            tokio::spawn(watch(connection, closed.clone(), "HTTP/2"));
            Ok(Http2Connection::new(sender).with_close_watch(closed))
        })
    }
}

/// HTTP/2's frame sizes (RFC 9113 §6.5.2) and largest window (§6.9.1).
const MIN_FRAME_SIZE: u32 = 1 << 14;
const MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
const MAX_WINDOW: u32 = (1 << 31) - 1;

fn check_window(size: u32, option: &str) {
    assert!(
        size <= MAX_WINDOW,
        "Http2::{option}: {size} is above HTTP/2's largest window, {MAX_WINDOW}"
    );
}

impl Default for Http2 {
    /// The same as [`Http2::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Http2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Http2").field(&self.builder).finish()
    }
}

boxed_future! {
    /// The future of a handshake made by [`Http2::handshake`]: the HTTP/2
    /// connection, or hyper's error.
    pub struct Http2Handshaking<B> => Result<Http2Connection<B>, ::hyper::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option lands in hyper's builder (read from its `Debug`), the
    /// ones not seen on the wire too.
    #[test]
    fn every_option_reaches_hypers_builder() {
        let http2 = Http2::new()
            .keep_alive_interval(Duration::from_secs(7))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(100_000)
            .initial_connection_window_size(300_000)
            .initial_max_send_streams(2)
            .max_frame_size(32_768)
            .max_header_list_size(8_192)
            .header_table_size(1_024)
            .max_concurrent_reset_streams(9);
        let debug = format!("{http2:?}");
        for field in [
            "keep_alive_interval: Some(7s)",
            "keep_alive_timeout: 3s",
            "keep_alive_while_idle: true",
            "initial_stream_window_size: 100000",
            "initial_conn_window_size: 300000",
            "adaptive_window: false",
            "initial_max_send_streams: 2",
            "max_frame_size: Some(32768)",
            "max_header_list_size: 8192",
            "header_table_size: Some(1024)",
            "max_concurrent_reset_streams: Some(9)",
        ] {
            assert!(debug.contains(field), "{field} in {debug}");
        }
        let adaptive = http2.adaptive_window(true);
        let debug = format!("{adaptive:?}");
        assert!(debug.contains("adaptive_window: true"), "{debug}");
        // A window size set afterwards turns it off again.
        let fixed = format!("{:?}", adaptive.initial_stream_window_size(100_000));
        assert!(fixed.contains("adaptive_window: false"), "{fixed}");
    }

    /// HTTP/2's limits, at the edges: accepted on them, refused past them
    /// with a message that names the option.
    #[test]
    fn sizes_within_http2s_limits_are_accepted() {
        let _ = Http2::new()
            .keep_alive_interval(None)
            .keep_alive_interval(Duration::from_nanos(1))
            .keep_alive_timeout(Duration::from_nanos(1))
            .max_frame_size(16_384)
            .max_frame_size(16_777_215)
            .initial_stream_window_size(2_147_483_647)
            .initial_connection_window_size(2_147_483_647);
    }

    #[test]
    #[should_panic(expected = "Http2::keep_alive_interval: zero; pass `None` for no pings")]
    fn a_zero_keep_alive_interval_panics() {
        let _ = Http2::new().keep_alive_interval(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "Http2::keep_alive_timeout: zero; every ping would time out")]
    fn a_zero_keep_alive_timeout_panics() {
        let _ = Http2::new().keep_alive_timeout(Duration::ZERO);
    }

    #[test]
    #[should_panic(
        expected = "Http2::max_frame_size: 16383 is outside HTTP/2's range, 16384 to 16777215"
    )]
    fn a_frame_size_below_the_range_panics() {
        let _ = Http2::new().max_frame_size(16_383);
    }

    #[test]
    #[should_panic(expected = "Http2::max_frame_size: 16777216 is outside HTTP/2's range")]
    fn a_frame_size_above_the_range_panics() {
        let _ = Http2::new().max_frame_size(16_777_216);
    }

    #[test]
    #[should_panic(
        expected = "Http2::initial_stream_window_size: 2147483648 is above HTTP/2's largest window, 2147483647"
    )]
    fn a_stream_window_past_the_limit_panics() {
        let _ = Http2::new().initial_stream_window_size(1 << 31);
    }

    #[test]
    #[should_panic(expected = "Http2::initial_connection_window_size: 2147483648 is above")]
    fn a_connection_window_past_the_limit_panics() {
        let _ = Http2::new().initial_connection_window_size(1 << 31);
    }
}
