//! `hyper::Http2`: hyper's HTTP/2 client settings reach the wire, and
//! keep-alive pings find a peer that stopped answering.
//!
//! The peer is a frame-level HTTP/2 server (`raw_peer`), which sees the
//! client's `SETTINGS`, `WINDOW_UPDATE` and `PING` frames as sent, and can
//! stop acknowledging pings. Timing runs on the real clock (hyper's timer
//! and real sockets); waits are events with hang guards, and the only time
//! assertions are lower bounds, which a slow machine can only exceed, or
//! absences over a window, which it cannot break.
#![cfg(feature = "hyper")]

use super::raw_peer::*;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use support::policy::quick_redial;
use tokio::time::{sleep, timeout, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::connect::{Handshake, TcpConnector};
use tower_redial::error::ConnectionLost;
use tower_redial::hyper::{http2, hyper_error, Http2};
use tower_redial::state::Phase;
use tower_redial::{BoxError, Client, ReconnectLayer};

type HttpClient = Client<Request<Full<Bytes>>, Response<Incoming>>;

/// A hang guard, far longer than any wait here needs.
const GUARD: Duration = Duration::from_secs(20);
const INTERVAL: Duration = Duration::from_millis(200);
const PING_TIMEOUT: Duration = Duration::from_millis(300);
/// hyper's timers may fire a little early against our clock.
const EPSILON: Duration = Duration::from_millis(20);
/// The spec's initial window, which a `WINDOW_UPDATE` adds to.
const SPEC_WINDOW: u32 = 65_535;

fn client(addr: SocketAddr, settings: Http2) -> HttpClient {
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(quick_redial().build().unwrap()))
        .service(Handshake::new(TcpConnector::new(), settings.handshake()))
        .multiplexed(addr)
}

fn get(addr: SocketAddr) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn guard<F: std::future::Future>(what: &str, future: F) -> F::Output {
    timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

/// One answered request, then the frames the client sent up to it: its
/// `SETTINGS`, and the connection's `WINDOW_UPDATE` if it sent one.
async fn opening(peer: &mut RawPeer, client: &HttpClient) -> (Vec<(u16, u32)>, Option<u32>) {
    let response = guard("a request", client.clone().oneshot(get(peer.addr)))
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let frames = peer.drain();
    let settings = frames
        .iter()
        .find(|f| f.kind == SETTINGS && !f.is_ack())
        .expect("the client's SETTINGS")
        .settings();
    let window = frames
        .iter()
        .find(|f| f.kind == WINDOW_UPDATE && f.stream == 0)
        .map(Frame::increment);
    (settings, window)
}

fn answering() -> Behaviour {
    Behaviour {
        settings_at_once: true,
        ack_pings: true,
        answer: true,
    }
}

fn silent() -> Behaviour {
    Behaviour {
        settings_at_once: true,
        ack_pings: false,
        answer: false,
    }
}

/// Window sizes, frame size, header list size and header table size are
/// sent as set: in the client's `SETTINGS`, and the connection window as a
/// `WINDOW_UPDATE` on stream 0.
#[tokio::test]
async fn settings_reach_the_wire() {
    let mut peer = RawPeer::start(answering()).await;
    let settings = Http2::new()
        .initial_stream_window_size(1_000_000)
        .initial_connection_window_size(3_000_000)
        .max_frame_size(32_768)
        .max_header_list_size(8_192)
        .header_table_size(1_024);
    let client = client(peer.addr, settings);
    let (settings, window) = opening(&mut peer, &client).await;
    for expected in [
        (SETTINGS_INITIAL_WINDOW_SIZE, 1_000_000),
        (SETTINGS_MAX_FRAME_SIZE, 32_768),
        (SETTINGS_MAX_HEADER_LIST_SIZE, 8_192),
        (SETTINGS_HEADER_TABLE_SIZE, 1_024),
        (SETTINGS_ENABLE_PUSH, 0),
    ] {
        assert!(settings.contains(&expected), "{expected:?} in {settings:?}");
    }
    assert_eq!(window, Some(3_000_000 - SPEC_WINDOW));
}

/// `http2`, the default form, and `Http2::new()` send the same: hyper's
/// defaults (a 2 MiB stream window, a 5 MiB connection window, 16 KiB
/// frames and header lists).
#[tokio::test]
async fn http2_and_http2_new_send_hyper_defaults() {
    let mut peer = RawPeer::start(answering()).await;
    let default_form: HttpClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(quick_redial().build().unwrap()))
        .service(Handshake::new(TcpConnector::new(), http2::<Full<Bytes>>))
        .multiplexed(peer.addr);
    let (settings, window) = opening(&mut peer, &default_form).await;
    for expected in [
        (SETTINGS_INITIAL_WINDOW_SIZE, 2 << 20),
        (SETTINGS_MAX_FRAME_SIZE, 16_384),
        (SETTINGS_MAX_HEADER_LIST_SIZE, 16_384),
    ] {
        assert!(settings.contains(&expected), "{expected:?} in {settings:?}");
    }
    assert_eq!(window, Some((5 << 20) - SPEC_WINDOW));

    let new = client(peer.addr, Http2::new());
    assert_eq!(opening(&mut peer, &new).await, (settings, window));
}

/// The adaptive window starts from the spec's windows, whatever sizes were
/// set before: no larger stream window, no connection `WINDOW_UPDATE`.
#[tokio::test]
async fn adaptive_window_starts_from_the_spec_windows() {
    let mut peer = RawPeer::start(answering()).await;
    let settings = Http2::new()
        .initial_stream_window_size(1_000_000)
        .initial_connection_window_size(3_000_000)
        .adaptive_window(true);
    let client = client(peer.addr, settings);
    let (settings, window) = opening(&mut peer, &client).await;
    let stream_window = settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_INITIAL_WINDOW_SIZE)
        .map_or(SPEC_WINDOW, |(_, value)| *value);
    assert_eq!(stream_window, SPEC_WINDOW, "{settings:?}");
    assert_eq!(window, None);
}

/// Until the server's `SETTINGS` arrive, the client opens no more streams
/// than `initial_max_send_streams`; the server's limit then replaces it.
#[tokio::test]
async fn initial_max_send_streams_holds_until_the_server_settings() {
    let mut peer = RawPeer::start(Behaviour {
        settings_at_once: false,
        ack_pings: true,
        answer: false,
    })
    .await;
    let client = client(peer.addr, Http2::new().initial_max_send_streams(2));
    guard("connect", client.connected()).await.unwrap();
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(client.clone().oneshot(get(peer.addr))))
        .collect();
    for _ in 0..2 {
        guard("a request's HEADERS", peer.next(HEADERS)).await;
    }
    // The other three wait in hyper, for a window far longer than writing
    // them would take.
    sleep(Duration::from_millis(300)).await;
    let early: Vec<_> = peer
        .drain()
        .into_iter()
        .filter(|f| f.kind == HEADERS)
        .collect();
    assert!(early.is_empty(), "streams beyond the limit: {early:?}");

    peer.send_settings(0, &[(SETTINGS_MAX_CONCURRENT_STREAMS, 10)])
        .await;
    for _ in 0..3 {
        guard("a held request's HEADERS", peer.next(HEADERS)).await;
    }
    for request in requests {
        request.abort();
    }
}

/// With `keep_alive_while_idle`, an idle connection is pinged every
/// interval; pings that are acknowledged keep it up.
#[tokio::test]
async fn an_idle_connection_is_pinged_while_idle() {
    let mut peer = RawPeer::start(answering()).await;
    let settings = Http2::new()
        .keep_alive_interval(INTERVAL)
        .keep_alive_timeout(GUARD)
        .keep_alive_while_idle(true);
    let client = client(peer.addr, settings);
    // Before the dial: every ping comes an interval after the last read.
    let start = Instant::now();
    guard("connect", client.connected()).await.unwrap();
    for _ in 0..3 {
        guard("a PING", peer.next(PING)).await;
    }
    assert!(start.elapsed() + EPSILON >= INTERVAL * 3, "pinged early");
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
    let stats = client.stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");
}

/// Without `keep_alive_while_idle`, an idle connection is not pinged, and
/// one with a request open is.
#[tokio::test]
async fn without_while_idle_only_open_requests_are_pinged() {
    let mut peer = RawPeer::start(answering()).await;
    let settings = Http2::new()
        .keep_alive_interval(INTERVAL)
        .keep_alive_timeout(GUARD);
    let client = client(peer.addr, settings);
    guard("a request", client.clone().oneshot(get(peer.addr)))
        .await
        .expect("answered");
    sleep(INTERVAL * 5).await;
    let pings: Vec<_> = peer
        .drain()
        .into_iter()
        .filter(|f| f.kind == PING)
        .collect();
    assert!(pings.is_empty(), "an idle connection was pinged: {pings:?}");

    peer.answer(false);
    let open = tokio::spawn(client.clone().oneshot(get(peer.addr)));
    guard("a PING while a request is open", peer.next(PING)).await;
    open.abort();
}

/// A request open while the peer stops answering pings fails, once a ping
/// has gone unanswered for the timeout, with a `ConnectionLost` whose hyper
/// error is a timeout; the client drops the connection and redials.
#[tokio::test]
async fn an_unanswered_ping_fails_the_open_request_and_the_client_redials() {
    let mut peer = RawPeer::start(silent()).await;
    let settings = Http2::new()
        .keep_alive_interval(INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT);
    let client = client(peer.addr, settings);
    let start = Instant::now();
    guard("connect", client.connected()).await.unwrap();
    let error: BoxError = guard("the open request", client.clone().oneshot(get(peer.addr)))
        .await
        .expect_err("never answered");
    let failed = start.elapsed();
    assert!(error.is::<ConnectionLost>(), "{error:?}");
    assert!(
        hyper_error(&*error).is_some_and(hyper::Error::is_timeout),
        "{error:?}"
    );
    // The ping may go out as the request opens, an interval after the last
    // read; the request fails a timeout after it.
    assert!(failed + EPSILON >= PING_TIMEOUT, "failed after {failed:?}");
    let pings = peer.drain().into_iter().filter(|f| f.kind == PING).count();
    assert!(pings >= 1, "no PING was sent");

    guard("redial", client.connected()).await.unwrap();
    let stats = client.stats();
    assert_eq!(
        (stats.dials, stats.drops, stats.retries),
        (2, 1, 0),
        "{stats:?}"
    );
}

/// With pings while idle, a peer that stops answering is found with no
/// request at all: the client leaves `Ready` and drops the connection.
/// Without keep-alive (the control, `http2`), the same silence goes
/// unnoticed for many times that long.
#[tokio::test]
async fn an_idle_silent_peer_is_found_only_with_keep_alive() {
    let peer = RawPeer::start(silent()).await;
    let settings = Http2::new()
        .keep_alive_interval(INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true);
    let pinging = client(peer.addr, settings);
    let quiet: HttpClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(quick_redial().build().unwrap()))
        .service(Handshake::new(TcpConnector::new(), http2::<Full<Bytes>>))
        .multiplexed(peer.addr);
    let start = Instant::now();
    guard("connect", pinging.connected()).await.unwrap();
    guard("connect", quiet.connected()).await.unwrap();

    let mut state = pinging.state();
    guard(
        "the client notices",
        state.wait_for(|s| s.phase() != Phase::Ready),
    )
    .await
    .unwrap();
    let noticed = start.elapsed();
    assert!(
        noticed + EPSILON >= INTERVAL + PING_TIMEOUT,
        "noticed after {noticed:?}"
    );
    assert_eq!(pinging.stats().drops, 1);

    sleep((INTERVAL + PING_TIMEOUT) * 3).await;
    assert_eq!(quiet.state().borrow().phase(), Phase::Ready);
    let stats = quiet.stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");
}
