//! Tests of the line-protocol test support (`tests/support/src/line.rs`): the
//! server's outage controls and the client connection's error semantics,
//! which the reconnect tests rely on.

use std::io;

use support::line::*;
use tokio::net::TcpStream;
use tower::{Service, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::error::NotSent;

/// Connects to `server`, panicking on failure.
async fn connect(server: &LineServer) -> LineConnection {
    deadline("connect", LineConnection::connect(server.addr()))
        .await
        .expect("connect to the line server")
}

/// Takes the request out of a `NotSent` error, panicking if `error` is
/// anything else.
fn handed_back(error: BoxError) -> String {
    let mut not_sent = error
        .downcast::<NotSent>()
        .unwrap_or_else(|e| panic!("expected NotSent, got {e:?}"));
    not_sent
        .take_request::<String>()
        .expect("NotSent hands the request back")
}

/// GET, SET, INCR and PING round-trip, malformed requests get `ERR`, and
/// pipelined requests (all in flight at once) get their replies in order.
#[tokio::test]
async fn round_trip_and_pipelining() {
    let server = LineServer::start().await;
    let mut conn = connect(&server).await;

    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    assert_eq!(request(&mut conn, "GET a").await.unwrap(), "NIL");
    assert_eq!(request(&mut conn, "SET a hello").await.unwrap(), "OK");
    assert_eq!(request(&mut conn, "GET a").await.unwrap(), "VALUE hello");
    assert_eq!(request(&mut conn, "INCR n").await.unwrap(), "INT 1");
    for bad in ["", "FLY away", "GET", "SET a", "INCR a"] {
        let reply = request(&mut conn, bad).await.unwrap();
        assert!(reply.starts_with("ERR "), "{bad:?} -> {reply:?}");
    }

    // Pipelined: every call is made before any reply is awaited.
    let lines = ["SET p 10", "INCR p", "INCR p", "GET p", "PING", "INCR q"];
    let mut replies = Vec::new();
    for line in lines {
        conn.ready().await.unwrap();
        replies.push(conn.call(line.to_string()));
    }
    let replies = deadline("pipelined replies", futures::future::try_join_all(replies))
        .await
        .unwrap();
    assert_eq!(
        replies,
        ["OK", "INT 11", "INT 12", "VALUE 12", "PONG", "INT 1"]
    );

    assert_eq!(server.counter("p"), 12);
    assert_eq!(server.value("a").as_deref(), Some("hello"));
    assert_eq!(server.incr_executions(), 4);
    assert_eq!(server.accepted(), 1);
}

/// A line break in a request is refused before anything is written, so the
/// FIFO matching of replies cannot be thrown off.
#[tokio::test]
async fn multi_line_request_is_refused() {
    let server = LineServer::start().await;
    let mut conn = connect(&server).await;

    let error = request(&mut conn, "PING\nINCR n").await.unwrap_err();
    assert_eq!(io_kind(&*error), Some(io::ErrorKind::InvalidInput));
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    assert_eq!(server.incr_executions(), 0);
}

/// `restart()` listens again on the same port with the store intact; the old
/// connection ends (its `poll_ready` fails) and a new one works.
#[tokio::test]
async fn restart_keeps_port_and_store() {
    let server = LineServer::start().await;
    let addr = server.addr();
    let mut old = connect(&server).await;
    assert_eq!(request(&mut old, "SET k v1").await.unwrap(), "OK");
    assert_eq!(request(&mut old, "INCR hits").await.unwrap(), "INT 1");

    deadline("restart", server.restart()).await;
    assert_eq!(server.addr(), addr);
    assert!(server.is_running());

    deadline("old connection ends", old.closed()).await;
    let error = deadline("poll_ready", old.ready()).await.unwrap_err();
    assert_eq!(io_kind(&*error), Some(io::ErrorKind::UnexpectedEof));

    let mut new = connect(&server).await;
    assert_eq!(request(&mut new, "GET k").await.unwrap(), "VALUE v1");
    assert_eq!(request(&mut new, "INCR hits").await.unwrap(), "INT 2");
    assert_eq!(server.incr_executions(), 2);
    assert_eq!(server.accepted(), 2);

    // Restarting again, with a connection open, still takes the port back.
    deadline("second restart", server.restart()).await;
    let mut third = connect(&server).await;
    assert_eq!(request(&mut third, "GET hits").await.unwrap(), "VALUE 2");
}

/// `reset_all()` sends an RST: a request written and executed but not yet
/// answered fails with `ConnectionReset` (not `NotSent`: it ran), and the
/// next request on the dead connection comes back unsent.
#[tokio::test]
async fn reset_all_fails_in_flight_with_connection_reset() {
    let server = LineServer::start().await;
    let mut conn = connect(&server).await;
    server.set_hold_replies(true);

    conn.ready().await.unwrap();
    let in_flight = conn.call("INCR n".to_string());
    deadline("INCR executed", server.wait_for_incr_executions(1)).await;
    deadline("reset_all", server.reset_all()).await;

    let error = deadline("in-flight reply", in_flight).await.unwrap_err();
    assert!(!NotSent::is_in(&*error), "{error:?}");
    assert_eq!(
        find_error::<io::Error>(&*error).map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset),
        "{error:?}"
    );

    deadline("connection ends", conn.closed()).await;
    let next = conn.call("INCR n".to_string()).await.unwrap_err();
    assert_eq!(handed_back(next), "INCR n");

    // The listener stayed up; the store saw exactly one INCR.
    server.set_hold_replies(false);
    let mut again = connect(&server).await;
    assert_eq!(request(&mut again, "GET n").await.unwrap(), "VALUE 1");
    assert_eq!(server.incr_executions(), 1);
}

/// After `stop()`, connecting to the port is refused; a request executed
/// but unanswered when the server stopped fails with `UnexpectedEof` (it may
/// have run, so it is not `NotSent`).
#[tokio::test]
async fn stop_refuses_connections_and_ends_open_ones() {
    let server = LineServer::start().await;
    let mut conn = connect(&server).await;
    server.set_hold_replies(true);

    conn.ready().await.unwrap();
    let in_flight = conn.call("INCR n".to_string());
    deadline("INCR executed", server.wait_for_incr_executions(1)).await;
    deadline("stop", server.stop()).await;
    assert!(!server.is_running());
    assert_eq!(server.open_connections(), 0);

    let error = deadline("in-flight reply", in_flight).await.unwrap_err();
    assert!(!NotSent::is_in(&*error), "{error:?}");
    assert_eq!(io_kind(&*error), Some(io::ErrorKind::UnexpectedEof));

    let refused = TcpStream::connect(server.addr()).await.unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);

    // Stopping twice is harmless; `restart` brings it back with the data.
    deadline("stop again", server.stop()).await;
    deadline("restart", server.restart()).await;
    server.set_hold_replies(false);
    let mut conn = connect(&server).await;
    assert_eq!(request(&mut conn, "GET n").await.unwrap(), "VALUE 1");
}

/// In accept-then-close mode the connection is accepted, then closed at
/// once: a request on it fails (unsent, or with a transport error) and is
/// never executed.
#[tokio::test]
async fn accept_then_close_fails_requests() {
    let server = LineServer::start().await;
    server.set_accept_then_close(true);

    let mut conn = connect(&server).await;
    deadline("accepted", server.wait_for_accepted(1)).await;
    let error = deadline("request", request(&mut conn, "INCR n"))
        .await
        .unwrap_err();
    let transport = matches!(
        io_kind(&*error),
        Some(
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::NotConnected
        )
    );
    assert!(NotSent::is_in(&*error) || transport, "{error:?}");
    deadline("connection ends", conn.closed()).await;
    assert_eq!(server.incr_executions(), 0);
    assert_eq!(server.open_connections(), 0);

    server.set_accept_then_close(false);
    let mut conn = connect(&server).await;
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    assert_eq!(server.accepted(), 2);
}

/// A request given to a connection whose task has died comes back as
/// `NotSent`, with the request itself retrievable for a re-send.
#[tokio::test]
async fn request_on_dead_connection_comes_back_not_sent() {
    let server = LineServer::start().await;
    let mut conn = connect(&server).await;
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");

    deadline("stop", server.stop()).await;
    deadline("connection ends", conn.closed()).await;
    assert!(conn.is_closed());

    let error = conn.call("INCR n".to_string()).await.unwrap_err();
    assert_eq!(io_kind(&*error), Some(io::ErrorKind::NotConnected));
    assert_eq!(handed_back(error), "INCR n");
    assert_eq!(server.incr_executions(), 0);
}

/// Requests still queued behind one the connection is writing when it dies
/// were never written: they come back as `NotSent` with their requests. The
/// one being written fails either way (unsent if none of it was written).
#[tokio::test]
async fn queued_requests_come_back_not_sent_when_the_connection_dies() {
    let server = LineServer::start().await;
    // The server reads nothing, so a request much larger than the socket
    // buffers can never be written in full, and those behind it stay queued.
    server.set_stalled(true);
    let mut conn = connect(&server).await;
    deadline("accepted", server.wait_for_accepted(1)).await;

    let huge = format!("SET big {}", "x".repeat(64 << 20));
    conn.ready().await.unwrap();
    let first = conn.call(huge);
    conn.ready().await.unwrap();
    let second = conn.call("INCR n".to_string());
    conn.ready().await.unwrap();
    let third = conn.call("PING".to_string());

    deadline("reset_all", server.reset_all()).await;

    let error = deadline("first", first).await.unwrap_err();
    let transport = matches!(
        io_kind(&*error),
        Some(io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
    );
    assert!(NotSent::is_in(&*error) || transport, "{error:?}");
    let second = deadline("second", second).await.unwrap_err();
    assert_eq!(handed_back(second), "INCR n");
    let third = deadline("third", third).await.unwrap_err();
    assert_eq!(handed_back(third), "PING");
    assert_eq!(server.commands(), 0);
}

/// While stalled the server executes nothing; once unstalled it catches up
/// on the requests that waited in the socket.
#[tokio::test]
async fn stalled_server_catches_up() {
    let server = LineServer::start().await;
    server.set_stalled(true);
    let mut conn = connect(&server).await;

    conn.ready().await.unwrap();
    let reply = conn.call("INCR n".to_string());
    deadline("accepted", server.wait_for_accepted(1)).await;
    assert_eq!(server.commands(), 0);

    server.set_stalled(false);
    assert_eq!(deadline("reply", reply).await.unwrap(), "INT 1");
}

/// Dropping a connection lets the replies already on their way complete,
/// then closes its socket (the server sees it go).
#[tokio::test]
async fn dropping_a_connection_finishes_in_flight_then_closes() {
    let server = LineServer::start().await;
    let mut conn = connect(&server).await;
    server.set_hold_replies(true);

    conn.ready().await.unwrap();
    let in_flight = conn.call("INCR n".to_string());
    deadline("INCR executed", server.wait_for_incr_executions(1)).await;
    drop(conn);
    assert_eq!(server.open_connections(), 1);

    server.set_hold_replies(false);
    assert_eq!(deadline("reply", in_flight).await.unwrap(), "INT 1");
    deadline("socket closed", server.wait_for_open_connections(0)).await;
}

/// Dropping the server closes its port and every connection, and a new
/// server can serve the kept store on the same address.
#[tokio::test]
async fn dropping_the_server_stops_everything() {
    let server = LineServer::start().await;
    let addr = server.addr();
    let mut conn = connect(&server).await;
    assert_eq!(request(&mut conn, "SET k kept").await.unwrap(), "OK");
    let store = server.store();

    drop(server);
    deadline("connection ends", conn.closed()).await;
    // The port closes once the runtime has dropped the aborted accept loop.
    deadline("port closed", async {
        loop {
            match TcpStream::connect(addr).await {
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => break assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            }
        }
    })
    .await;

    let server = LineServer::start_with(addr, store).await;
    let mut conn = connect(&server).await;
    assert_eq!(request(&mut conn, "GET k").await.unwrap(), "VALUE kept");
}

/// `LineConnection::handshake` plugs into the crate's `Handshake` factory,
/// and its futures are `Send + 'static` as a connection factory needs.
#[tokio::test]
async fn handshake_fits_the_connection_factory() {
    fn assert_send_static<T: Send + 'static>(_: &T) {}

    let server = LineServer::start().await;
    let make = Handshake::new(TcpConnector::new(), LineConnection::handshake);
    let mut conn = deadline("dial", make.oneshot(server.addr()))
        .await
        .expect("dial through Handshake");
    assert_eq!(conn.peer_addr(), server.addr());

    let stream = TcpStream::connect(server.addr()).await.unwrap();
    let handshaking = LineConnection::handshake(stream);
    assert_send_static(&handshaking);
    let mut other = handshaking.await.unwrap();
    let reply = other.call("PING".to_string());
    assert_send_static(&reply);
    assert_eq!(reply.await.unwrap(), "PONG");

    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
}

/// Nothing listens on `unused_addr()`: connecting is refused.
#[tokio::test]
async fn unused_addr_refuses() {
    let error = LineConnection::connect(unused_addr()).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
}

/// The store counts every executed command and INCR, reads counters, and
/// can be seeded directly.
#[test]
fn store_executes_and_counts() {
    let store = Store::new();
    store.set("x", "41");
    assert_eq!(store.execute("INCR x"), "INT 42");
    assert_eq!(store.execute("incr y"), "INT 1");
    assert_eq!(store.execute("SET s word"), "OK");
    assert!(store.execute("INCR s").starts_with("ERR "));
    store.set("max", &i64::MAX.to_string());
    assert!(store.execute("INCR max").starts_with("ERR "));
    assert_eq!(store.counter("x"), 42);
    assert_eq!(store.counter("s"), 0);
    assert_eq!(store.counter("missing"), 0);
    assert_eq!(
        store.stats(),
        StoreStats {
            commands: 5,
            incr_executions: 2
        }
    );
}

/// A line cut off by the end of the stream is an error, never a request to
/// run or a reply to trust.
#[test]
fn strict_lines_refuse_a_cut_off_last_line() {
    use tokio_util::codec::Decoder;

    let mut codec = StrictLines::default();
    let mut buf = bytes::BytesMut::from("INT 4\nIN");
    assert_eq!(
        codec.decode_eof(&mut buf).unwrap().as_deref(),
        Some("INT 4")
    );
    assert!(codec.decode_eof(&mut buf).is_err());
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
}
