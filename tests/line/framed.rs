//! `connect::Framed`: a pipelined connection over a tokio-util codec. Each
//! test drives the peer's side of an in-memory pipe by hand, so that what
//! was written, and when, is exact; one test runs a client over real TCP.

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::{duplex, AsyncReadExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder, LinesCodec, LinesCodecError};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::{Framed, TcpConnector};
use tower_redial::error::ConnectionLost;
use tower_redial::error::NotSent;
use tower_redial::state::Phase;
use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 10 s"))
}

type Lines = tokio_util::codec::Framed<DuplexStream, LinesCodec>;

/// A connection over a pipe of `capacity` bytes, and the peer's end.
fn pipe(capacity: usize) -> (Framed<String, String>, DuplexStream) {
    let (ours, theirs) = duplex(capacity);
    (Framed::new(ours, LinesCodec::new()), theirs)
}

/// Reads what the connection wrote so far, as text.
async fn read_some(peer: &mut DuplexStream) -> String {
    let mut buf = vec![0; 1024];
    let n = within("a read", peer.read(&mut buf)).await.unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// A request dropped after it was written does not desynchronise the
/// connection: its reply is read and thrown away, and the next request
/// gets its own.
#[tokio::test]
async fn the_reply_to_a_dropped_request_goes_to_no_one() {
    let (mut connection, peer) = pipe(1024);
    let mut peer = Lines::new(peer, LinesCodec::new());

    let first = connection.ready().await.unwrap().call("first".into());
    assert_eq!(
        within("first", peer.next()).await.unwrap().unwrap(),
        "first"
    );
    drop(first);
    let second = connection.ready().await.unwrap().call("second".into());
    assert_eq!(
        within("second", peer.next()).await.unwrap().unwrap(),
        "second"
    );

    peer.send("reply to first").await.unwrap();
    peer.send("reply to second").await.unwrap();
    assert_eq!(
        within("second's reply", second).await.unwrap(),
        "reply to second"
    );
    assert!(!connection.is_closed());
}

/// A request whose caller gave up while it was still queued is never
/// written: the peer sees the requests before and after it, not it.
#[tokio::test]
async fn a_request_dropped_before_it_was_written_is_never_written() {
    // Eight bytes of room: the first request fills the pipe, and the
    // others queue behind it until the peer reads.
    let (mut connection, mut peer) = pipe(8);
    let first = connection
        .ready()
        .await
        .unwrap()
        .call("first request".into());
    let given_up = connection.ready().await.unwrap().call("given up".into());
    let third = connection.ready().await.unwrap().call("third".into());
    // Let the connection's task take the first request and fill the pipe.
    tokio::task::yield_now().await;
    drop(given_up);

    let mut seen = String::new();
    while !seen.ends_with("third\n") {
        seen += &read_some(&mut peer).await;
    }
    assert_eq!(seen, "first request\nthird\n");
    drop((first, third));
}

/// When the connection ends, a request still queued comes back as
/// `NotSent` carrying it, and one written in part fails with
/// `ConnectionLost`: the peer may have read it.
#[tokio::test]
async fn an_ended_connection_says_what_was_sent() {
    let (mut connection, mut peer) = pipe(8);
    let written = connection
        .ready()
        .await
        .unwrap()
        .call("partly written, and far longer than the pipe".into());
    let queued = connection.ready().await.unwrap().call("queued".into());
    // The first eight bytes of the first request are in the pipe.
    assert_eq!(read_some(&mut peer).await, "partly w");
    tokio::task::yield_now().await;
    drop(peer);

    let error = within("the written request", written).await.unwrap_err();
    assert!(error.is::<ConnectionLost>(), "{error:?}");
    let mut error = within("the queued request", queued).await.unwrap_err();
    let not_sent = error.downcast_mut::<NotSent>().expect("NotSent");
    assert_eq!(not_sent.take_request::<String>().as_deref(), Some("queued"));

    let ended = within("the close", connection.closed()).await;
    assert_eq!(ended.kind(), io::ErrorKind::UnexpectedEof, "{ended:?}");
    let error = connection.ready().await.unwrap_err();
    assert!(tower_redial::classify::is_transport_error(&*error));
    let mut error = connection.call("after".into()).await.unwrap_err();
    let not_sent = error.downcast_mut::<NotSent>().expect("NotSent");
    assert_eq!(not_sent.take_request::<String>().as_deref(), Some("after"));
}

/// A peer that closes an idle connection is seen at once, with no
/// request: `poll_ready` fails.
#[tokio::test]
async fn an_idle_connection_closed_by_the_peer_is_seen_at_once() {
    let (mut connection, peer) = pipe(1024);
    drop(peer);
    let ended = within("the close", connection.closed()).await;
    assert_eq!(ended.kind(), io::ErrorKind::UnexpectedEof);
    assert!(connection.is_closed());
    assert!(connection.ready().await.is_err());
}

/// A frame that arrives with no request waiting for it is a protocol
/// error: the connection ends, rather than hand it to the next request.
#[tokio::test]
async fn a_frame_no_request_waits_for_ends_the_connection() {
    let (mut connection, peer) = pipe(1024);
    let mut peer = Lines::new(peer, LinesCodec::new());
    peer.send("unasked").await.unwrap();
    let ended = within("the close", connection.closed()).await;
    assert_eq!(ended.kind(), io::ErrorKind::InvalidData);
    assert!(connection.ready().await.is_err());
}

/// `LinesCodec`, refusing requests that are not one line.
#[derive(Default)]
struct OneLine(LinesCodec);

impl Decoder for OneLine {
    type Item = String;
    type Error = LinesCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<String>, LinesCodecError> {
        self.0.decode(buf)
    }
}

impl Encoder<String> for OneLine {
    type Error = LinesCodecError;

    fn encode(&mut self, line: String, buf: &mut BytesMut) -> Result<(), LinesCodecError> {
        if line.contains('\n') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "two lines").into());
        }
        self.0.encode(line, buf)
    }
}

/// A request the codec cannot encode fails alone, with the codec's error;
/// nothing is written for it and the connection carries on.
#[tokio::test]
async fn a_request_the_codec_refuses_fails_alone() {
    let (ours, theirs) = duplex(1024);
    let mut connection: Framed<String, String> = Framed::new(ours, OneLine::default());
    let mut peer = Lines::new(theirs, LinesCodec::new());

    let error = connection
        .ready()
        .await
        .unwrap()
        .call("a\nb".into())
        .await
        .unwrap_err();
    assert!(error.is::<LinesCodecError>(), "{error:?}");
    assert!(!tower_redial::classify::is_transport_error(&*error));

    let fine = connection.ready().await.unwrap().call("fine".into());
    assert_eq!(within("fine", peer.next()).await.unwrap().unwrap(), "fine");
    peer.send("ok").await.unwrap();
    assert_eq!(within("the reply", fine).await.unwrap(), "ok");
}

/// Clones share one connection, and their requests are pipelined on it:
/// replies come back in order, each to its own caller.
#[tokio::test]
async fn clones_pipeline_on_one_connection() {
    let (connection, peer) = pipe(1024);
    let mut peer = Lines::new(peer, LinesCodec::new());
    let calls: Vec<_> = (0..5)
        .map(|n| connection.clone().oneshot(format!("{n}")))
        .collect();
    let answers = tokio::spawn(futures::future::join_all(calls));
    for n in 0..5 {
        let line = within("a request", peer.next()).await.unwrap().unwrap();
        assert_eq!(line, n.to_string());
        peer.send(format!("reply {n}")).await.unwrap();
    }
    let answers = within("the replies", answers).await.unwrap();
    for (n, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), format!("reply {n}"));
    }
}

/// Over real TCP, under a client: the server closing the idle connection
/// is redialed with no request sent, and the next request is answered on
/// the new connection.
#[tokio::test]
async fn a_client_redials_an_idle_framed_connection_the_server_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, mut connections) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let mut lines = tokio_util::codec::Framed::new(io, LinesCodec::new());
            let (close, closing) = tokio::sync::oneshot::channel::<()>();
            accepted.send(close).unwrap();
            tokio::spawn(async move {
                tokio::select! {
                    _ = closing => {}
                    _ = async {
                        while let Some(Ok(line)) = lines.next().await {
                            lines.send(line.to_uppercase()).await.unwrap();
                        }
                    } => {}
                }
            });
        }
    });

    async fn handshake(io: TcpStream) -> io::Result<Framed<String, String>> {
        Ok(Framed::new(io, LinesCodec::new()))
    }
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(ReconnectPolicy::default()))
        .service(Handshake::new(TcpConnector::new(), handshake))
        .client(addr);
    within("the first connection", client.connected())
        .await
        .unwrap();
    let close_first = within("the first accept", connections.recv())
        .await
        .unwrap();
    assert_eq!(
        within("a request", client.clone().oneshot("hi".into()))
            .await
            .unwrap(),
        "HI"
    );

    let _ = close_first.send(());
    let _second = within("a redial with no request", connections.recv())
        .await
        .unwrap();
    let mut state = client.state();
    within(
        "ready again",
        state.wait_for(|s| s.phase() == Phase::Ready && client.stats().drops == 1),
    )
    .await
    .unwrap();
    assert_eq!(
        within("a request", client.clone().oneshot("again".into()))
            .await
            .unwrap(),
        "AGAIN"
    );
    server.abort();
}

/// A factory of `Framed` connections over in-memory pipes; it hands the
/// test each peer's end.
#[tokio::test]
async fn framed_is_cancel_safe_under_a_client() {
    let (peers, mut dialed) = mpsc::unbounded_channel();
    let make = service_fn(move |_: &'static str| {
        let (ours, theirs) = duplex(1024);
        peers.send(theirs).unwrap();
        async move { Ok::<_, BoxError>(Framed::<String, String>::new(ours, LinesCodec::new())) }
    });
    let policy = ReconnectPolicy::builder()
        .cancel_safe(true)
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(make)
        .client("pipe");

    let slow = tokio::spawn(client.clone().oneshot("slow".to_string()));
    let peer = within("a dial", dialed.recv()).await.unwrap();
    let mut peer = Lines::new(peer, LinesCodec::new());
    assert_eq!(within("slow", peer.next()).await.unwrap().unwrap(), "slow");
    slow.abort();
    let _ = slow.await;

    let next = tokio::spawn(client.clone().oneshot("next".to_string()));
    assert_eq!(within("next", peer.next()).await.unwrap().unwrap(), "next");
    peer.send("reply to slow").await.unwrap();
    peer.send("reply to next").await.unwrap();
    assert_eq!(
        within("next's reply", next).await.unwrap().unwrap(),
        "reply to next"
    );
    assert_eq!(client.stats().dials, 1, "the same connection");
}

/// A reply cut off by the end of the stream is no reply: its request fails
/// with `ConnectionLost`, as the peer may have run it.
#[tokio::test]
async fn a_reply_cut_off_by_the_end_of_the_stream_is_lost() {
    use tokio::io::AsyncWriteExt;
    let (mut connection, mut peer) = pipe(1024);
    let call = connection.ready().await.unwrap().call("half".into());
    assert_eq!(read_some(&mut peer).await, "half\n");
    peer.write_all(b"hello wor").await.unwrap();
    drop(peer);
    let error = within("the cut-off reply", call).await.unwrap_err();
    assert!(error.is::<ConnectionLost>(), "{error:?}");
    let ended = within("the close", connection.closed()).await;
    assert_eq!(ended.kind(), io::ErrorKind::UnexpectedEof);
}

/// Dropping every handle closes the connection once no caller waits for a
/// reply: a caller still waiting keeps it open until its reply comes; one
/// that gave up does not.
#[tokio::test]
async fn dropping_every_handle_closes_once_no_caller_waits() {
    // A caller still waiting: answered, then the connection closes.
    let (mut connection, peer) = pipe(1024);
    let mut peer = Lines::new(peer, LinesCodec::new());
    let waiting = connection.ready().await.unwrap().call("waiting".into());
    drop(connection);
    assert_eq!(
        within("the request", peer.next()).await.unwrap().unwrap(),
        "waiting"
    );
    peer.send("answer").await.unwrap();
    assert_eq!(within("the reply", waiting).await.unwrap(), "answer");
    assert!(within("the close", peer.next()).await.is_none());

    // A caller that gave up: the connection closes without its reply.
    let (mut connection, peer) = pipe(1024);
    let mut peer = Lines::new(peer, LinesCodec::new());
    let given_up = connection.ready().await.unwrap().call("given up".into());
    assert_eq!(
        within("the request", peer.next()).await.unwrap().unwrap(),
        "given up"
    );
    drop(given_up);
    drop(connection);
    assert!(within("the close", peer.next()).await.is_none());
}

/// Replies are matched first in, first out: a frame the peer sends unasked,
/// while a request waits, is taken as that request's reply (a protocol with
/// frames of its own needs request ids).
#[tokio::test]
async fn a_frame_sent_unasked_answers_the_oldest_request() {
    let (mut connection, peer) = pipe(1024);
    let mut peer = Lines::new(peer, LinesCodec::new());
    let first = connection.ready().await.unwrap().call("first".into());
    let second = connection.ready().await.unwrap().call("second".into());
    assert_eq!(
        within("first", peer.next()).await.unwrap().unwrap(),
        "first"
    );
    assert_eq!(
        within("second", peer.next()).await.unwrap().unwrap(),
        "second"
    );
    peer.send("reply to first").await.unwrap();
    peer.send("unasked").await.unwrap();
    assert_eq!(within("first", first).await.unwrap(), "reply to first");
    assert_eq!(within("second", second).await.unwrap(), "unasked");
}
