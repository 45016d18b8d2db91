//! A connection for a protocol of your own, over tokio-util's codecs.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Decoder, Encoder};
use tower::Service;

use crate::connect::CloseWatch;
use crate::error::{ConnectionLost, NotSent};
use crate::failed::OrFailed;
use crate::BoxError;

/// A connection over any IO, for a request/response protocol framed by a
/// tokio-util codec: a [`Decoder`] of responses and an [`Encoder`] of
/// requests, such as `LinesCodec` or `LengthDelimitedCodec` with a message
/// layer on top. Replies are matched to requests in order, first in, first
/// out, and requests are pipelined. So the protocol must answer each request
/// with exactly one frame, in order: a frame the peer sends unasked is taken
/// as the reply to the oldest request waiting. A protocol with frames of its
/// own (pushes, pub/sub) needs to match replies by request id instead.
///
/// It is what this crate recommends for a protocol of your own, because it
/// keeps the rules a reconnecting client relies on:
///
/// - **Cancel-safe.** A task of its own owns the IO. A request whose
///   caller gave up before it was written is never written, and the reply
///   to one dropped in flight is read and thrown away, so the next request
///   never gets it. Tell a [`client`](crate::MakeReconnect::client) so
///   with [`cancel_safe(true)`](crate::ReconnectPolicyBuilder::cancel_safe),
///   or bind it with [`multiplexed`](crate::MakeReconnect::multiplexed).
/// - **Watched while idle.** The task reads all the time, so the peer
///   closing an idle connection is seen at once: `poll_ready` then fails
///   (through a [`CloseWatch`]) and the client redials with no request.
///   A frame that arrives with no request waiting for it ends the
///   connection too, as a protocol error, and so does a frame cut off by
///   the end of the stream: its request fails with [`ConnectionLost`].
/// - **Errors say what happened.** A request that was not written when the
///   connection ended fails with [`NotSent`]: carrying the request if it was
///   still queued, or alone if its encoding had begun. A request written,
///   even in part, fails with [`ConnectionLost`], as the peer may have run
///   it. An encoding error fails that request alone, as the codec's error;
///   the connection stays up.
///
/// Clones share the connection, as redis's multiplexed connection does.
/// Dropping every clone closes the connection once no caller waits for a
/// reply any more: at once if none does.
/// Nothing bounds how many requests one connection holds: the client's
/// queue does, when requests go through it (not on the direct lane of a
/// multiplexed client).
///
/// # Example
///
/// ```
/// use tokio::net::TcpStream;
/// use tokio_util::codec::LinesCodec;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_redial::connect::{Framed, Handshake, TcpConnector};
/// use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// # tokio::spawn(async move {
/// #     use futures::{SinkExt, StreamExt};
/// #     let (io, _) = listener.accept().await.unwrap();
/// #     let mut lines = tokio_util::codec::Framed::new(io, LinesCodec::new());
/// #     while let Some(Ok(line)) = lines.next().await {
/// #         lines.send(line.to_uppercase()).await.unwrap();
/// #     }
/// # });
/// async fn handshake(io: TcpStream) -> std::io::Result<Framed<String, String>> {
///     Ok(Framed::new(io, LinesCodec::new()))
/// }
///
/// let client = ServiceBuilder::new()
///     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
///     .service(Handshake::new(TcpConnector::new(), handshake))
///     .multiplexed(addr);
/// assert_eq!(client.oneshot("hello".to_string()).await?, "HELLO");
/// # Ok(())
/// # }
/// ```
///
/// # Panics
///
/// [`Framed::new`] spawns the connection's task: it panics outside a tokio
/// runtime.
pub struct Framed<Req, Res> {
    jobs: mpsc::UnboundedSender<Job<Req, Res>>,
    closed: CloseWatch,
}

/// A request and where its reply goes.
struct Job<Req, Res> {
    request: Req,
    reply: oneshot::Sender<Result<Res, BoxError>>,
}

impl<Req, Res> Framed<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    /// A connection over `io`, framed by `codec`. Spawns the task that owns
    /// `io` and runs until the connection ends, or until every clone is
    /// dropped and no caller still waits for a reply.
    pub fn new<IO, C>(io: IO, codec: C) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
        C: Encoder<Req> + Decoder<Item = Res> + Send + 'static,
        <C as Encoder<Req>>::Error: Into<BoxError>,
        <C as Decoder>::Error: Into<BoxError>,
    {
        let (jobs, queue) = mpsc::unbounded_channel();
        let closed = CloseWatch::new();
        tokio::spawn(drive(io, codec, queue, closed.for_clone()));
        Self { jobs, closed }
    }
}

impl<Req, Res> Framed<Req, Res> {
    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.closed().is_some()
    }

    /// Waits until the connection has ended, and gives the kind of error
    /// that ended it.
    pub async fn closed(&self) -> io::Error {
        // The task closes the queue on its way out, after the watch.
        self.jobs.closed().await;
        self.closed
            .closed()
            .unwrap_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<Req, Res> Clone for Framed<Req, Res> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
            closed: self.closed.for_clone(),
        }
    }
}

impl<Req, Res> fmt::Debug for Framed<Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Framed")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<Req, Res> Service<Req> for Framed<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    type Response = Res;
    type Error = BoxError;
    type Future = FramedFuture<Res>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.closed.poll_closed(cx) {
            Poll::Ready(error) => Poll::Ready(Err(error.into())),
            Poll::Pending => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let (reply, replied) = oneshot::channel();
        match self.jobs.send(Job { request, reply }) {
            Ok(()) => FramedFuture {
                inner: OrFailed::running(Replied(replied)),
            },
            Err(mpsc::error::SendError(job)) => FramedFuture {
                inner: OrFailed::failed(not_sent(Some(job.request))),
            },
        }
    }
}

pin_project! {
    /// The response future of [`Framed`].
    pub struct FramedFuture<Res> {
        #[pin]
        inner: OrFailed<Replied<Res>>,
    }
}

/// The reply the connection's task sends back.
struct Replied<Res>(oneshot::Receiver<Result<Res, BoxError>>);

impl<Res> Future for FramedFuture<Res> {
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<Res> Future for Replied<Res> {
    type Output = Result<Res, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|reply| {
            // The task answers every request it takes; only a runtime
            // shutting down drops one unanswered.
            reply.unwrap_or_else(|_| {
                Err(lost(
                    io::ErrorKind::ConnectionAborted,
                    "the connection's task ended",
                ))
            })
        })
    }
}

impl<Res> fmt::Debug for FramedFuture<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramedFuture").finish_non_exhaustive()
    }
}

/// The error for a request that was not written: it comes back if it can.
fn not_sent<Req: Send + 'static>(request: Option<Req>) -> BoxError {
    let cause = io::Error::new(
        io::ErrorKind::NotConnected,
        "connection closed before the request was written",
    );
    Box::new(match request {
        Some(request) => NotSent::with_request(request, cause),
        None => NotSent::new(cause),
    })
}

/// The error for a request written, in part or whole, on a connection that
/// then ended.
fn lost(kind: io::ErrorKind, message: impl Into<String>) -> BoxError {
    Box::new(ConnectionLost::new(io::Error::new(kind, message.into())))
}

/// A caller's end of a request: where its reply goes.
type Reply<Res> = oneshot::Sender<Result<Res, BoxError>>;

/// The request being written, and how much of it is.
struct Writing {
    bytes: BytesMut,
    written: usize,
}

/// How much is read at a time.
const READ_SIZE: usize = 8 * 1024;

/// The connection's task: writes queued requests in order, reads replies
/// and hands each to the oldest request waiting, and on the way out fails
/// every request it still holds with the right error.
async fn drive<IO, C, Req, Res>(
    io: IO,
    mut codec: C,
    mut queue: mpsc::UnboundedReceiver<Job<Req, Res>>,
    closed: CloseWatch,
) where
    IO: AsyncRead + AsyncWrite,
    C: Encoder<Req> + Decoder<Item = Res>,
    <C as Encoder<Req>>::Error: Into<BoxError>,
    <C as Decoder>::Error: Into<BoxError>,
    Req: Send + 'static,
{
    let (mut read, mut write) = tokio::io::split(io);
    let mut received = BytesMut::with_capacity(READ_SIZE);
    let mut in_flight: VecDeque<Reply<Res>> = VecDeque::new();
    // The request being written, and its caller's end, kept apart so that
    // the write and the watch on the callers can run side by side.
    let mut writing: Option<Writing> = None;
    let mut writing_reply: Option<Reply<Res>> = None;
    let mut open = true;

    let failure: Option<io::Error> = loop {
        let unwritten: &[u8] = writing.as_ref().map_or(&[], |w| &w.bytes[w.written..]);
        // Replies first, so that a dead connection is noticed before more
        // is written. Each branch is cancel-safe: when another one wins,
        // nothing was read or written.
        tokio::select! {
            biased;
            read = read.read_buf(&mut received) => match read {
                // The peer closed. A frame cut off by the end of the stream
                // is no reply: its request fails as lost.
                Ok(0) if received.is_empty() => break Some(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection",
                )),
                Ok(0) => break Some(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "a reply cut off by the end of the stream",
                )),
                Ok(_) => {
                    if let Err(error) = decode(&mut codec, &mut received, &mut in_flight) {
                        break Some(error);
                    }
                    if received.capacity() - received.len() < READ_SIZE / 4 {
                        received.reserve(READ_SIZE);
                    }
                }
                Err(error) => break Some(error),
            },
            // Every handle is gone, and so is every caller still owed a
            // reply: nothing is left to wait for.
            () = callers_gone(&mut in_flight, &mut writing_reply), if !open => break None,
            wrote = write.write(unwritten), if writing.is_some() => match wrote {
                Ok(0) => break Some(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let done = writing.as_mut().is_some_and(|w| {
                        w.written += n;
                        w.written == w.bytes.len()
                    });
                    if done {
                        writing = None;
                        in_flight.extend(writing_reply.take());
                    }
                }
                Err(error) => break Some(error),
            },
            job = queue.recv(), if open && writing.is_none() => match job {
                Some(job) if job.reply.is_closed() => {
                    // Its caller gave up before it was written: skip it.
                }
                Some(job) => {
                    let mut bytes = BytesMut::new();
                    match codec.encode(job.request, &mut bytes) {
                        Ok(()) if bytes.is_empty() => in_flight.push_back(job.reply),
                        Ok(()) => {
                            writing = Some(Writing { bytes, written: 0 });
                            writing_reply = Some(job.reply);
                        }
                        Err(error) => {
                            let _ = job.reply.send(Err(error.into()));
                        }
                    }
                }
                None => open = false,
            },
        }
    };

    // From here on `poll_ready` fails, with the kind of error that ended
    // the connection, and `call` hands requests back.
    let kind = failure
        .as_ref()
        .map_or(io::ErrorKind::NotConnected, io::Error::kind);
    closed.close(kind);
    queue.close();
    if let Some(failure) = failure {
        tracing::debug!(error = %failure, "framed connection ended");
        let message = failure.to_string();
        if let (Some(w), Some(reply)) = (writing.take(), writing_reply.take()) {
            let error = if w.written == 0 {
                not_sent::<Req>(None)
            } else {
                lost(kind, message.clone())
            };
            let _ = reply.send(Err(error));
        }
        for waiter in in_flight.drain(..) {
            let _ = waiter.send(Err(lost(kind, message.clone())));
        }
    }
    while let Ok(job) = queue.try_recv() {
        let _ = job.reply.send(Err(not_sent(Some(job.request))));
    }
    let _ = write.shutdown().await;
}

/// Ready once every caller in `in_flight` and `writing` has dropped its
/// response future (at once if there are none); until then it wakes the
/// task when one does.
fn callers_gone<'a, Res>(
    in_flight: &'a mut VecDeque<Reply<Res>>,
    writing: &'a mut Option<Reply<Res>>,
) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |cx| {
        let mut waiting = false;
        for reply in in_flight.iter_mut().chain(writing.iter_mut()) {
            waiting |= reply.poll_closed(cx).is_pending();
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
}

/// Hands every whole frame in `received` to the oldest request waiting. A
/// frame with no request waiting, or a frame the codec refuses, ends the
/// connection.
fn decode<C, Res>(
    codec: &mut C,
    received: &mut BytesMut,
    in_flight: &mut VecDeque<Reply<Res>>,
) -> io::Result<()>
where
    C: Decoder<Item = Res>,
    C::Error: Into<BoxError>,
{
    loop {
        match codec.decode(received) {
            Ok(Some(frame)) => answer(frame, in_flight)?,
            Ok(None) => return Ok(()),
            Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error.into())),
        }
    }
}

/// Gives `frame` to the oldest request waiting; its caller may have gone,
/// and then the frame is dropped.
fn answer<Res>(frame: Res, in_flight: &mut VecDeque<Reply<Res>>) -> io::Result<()> {
    match in_flight.pop_front() {
        Some(waiter) => {
            let _ = waiter.send(Ok(frame));
            Ok(())
        }
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a frame arrived with no request waiting for it",
        )),
    }
}
