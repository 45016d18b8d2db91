//! The client's task: tower's `Buffer` worker, plus a driver that keeps the
//! service moving when no request is queued.
//!
//! tower's `Buffer` worker polls its service only while it holds a request,
//! so on its own a quiet client would never redial, time out a dial, pass
//! its wait limit or notice that its idle connection died. The client's task
//! therefore runs two things:
//!
//! - the driver, which, once the client has been used, polls the service's
//!   `poll_ready` whenever the task is woken: by a backoff timer, a dial, the
//!   wait limit, or the connection's own readiness (see
//!   [`CloseWatch`](crate::connect::CloseWatch));
//! - tower's `Buffer` worker, which sends queued requests to the service.
//!
//! Both poll the one service, on the one task and with the one waker, so
//! whatever wakes the task wakes both. The worker goes first, so that a
//! client whose handles are all gone ends before the driver dials again;
//! when the driver then finds the service ready and the worker is waiting
//! for it, the worker goes again. When the worker's own last `poll_ready`
//! of the round already found the service ready for requests, with the
//! task registered for whatever moves it next, the driver has nothing left
//! to do in that round and does not step it again: that is the queue's hot
//! path, one step per request instead of two.
//! Calling `poll_ready` with no request to follow is allowed by tower's
//! contract; the reservation it may make is the one the next request uses.
//!
//! The task ends when the worker does: when every handle of the client is
//! dropped. The service, and with it the connection, is dropped then.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tower::buffer::Buffer;
use tower::Service;

use crate::BoxError;

/// A service the client's task can move along without a request.
pub(crate) trait Drive<Req>: Service<Req> {
    /// Like `poll_ready`, for the driver: advances timers, dials and the
    /// connection's health, and says what the task should do next.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Drove;

    /// `poll_ready`, for the worker, and whether it settled the service:
    /// ready for requests, and the task registered for whatever moves it
    /// next, just as [`poll_drive`](Drive::poll_drive) would leave it. The
    /// driver then skips its own step in that round. By default never:
    /// the driver always steps too.
    fn poll_ready_settled(
        &mut self,
        cx: &mut Context<'_>,
    ) -> (Poll<Result<(), Self::Error>>, bool) {
        (self.poll_ready(cx), false)
    }
}

/// What the driver found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drove {
    /// Waiting for a timer, a dial or the connection: the task is
    /// registered for it.
    Waiting,
    /// Ready for requests.
    Ready,
    /// Failing fast with a dial due: the worker fails the requests that
    /// waited through the failed dial, then the driver goes again and dials.
    Flush,
    /// Closed for good.
    Closed,
}

/// Starts the driver: shared by the client's handles and its task.
#[derive(Debug, Default)]
pub(crate) struct Kick {
    used: AtomicBool,
    task: AtomicWaker,
}

impl Kick {
    /// The client is in use: from now on the driver keeps it connected.
    pub(crate) fn start(&self) {
        if !self.used.load(Ordering::Relaxed) && !self.used.swap(true, Ordering::AcqRel) {
            self.task.wake();
        }
    }

    /// Registers the client's task, to be woken when the client starts or
    /// its last handle goes, and says whether it has started.
    fn poll_started(&self, cx: &mut Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.used.load(Ordering::Acquire)
    }
}

/// Wakes the client's task when dropped: held, last, by what the handles
/// share, so that the task notices the last handle go even while tower's
/// `Buffer` worker holds a request whose caller gave up (the worker looks at
/// its queue and callers only when woken).
#[derive(Debug)]
pub(crate) struct WakeOnDrop(pub(crate) Arc<Kick>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.task.wake();
    }
}

/// Puts `service` on a spawned task behind tower's `Buffer`, with a driver
/// that keeps it moving once `kick` is started or the first request comes.
///
/// # Panics
///
/// If called outside a tokio runtime.
pub(crate) fn spawn<S, Req>(service: S, capacity: usize, kick: Arc<Kick>) -> Buffer<Req, S::Future>
where
    S: Drive<Req, Error = BoxError> + Send + 'static,
    S::Future: Send,
    Req: Send + 'static,
{
    let service = Arc::new(Mutex::new(Inner {
        service,
        waiting: false,
        settled: false,
    }));
    let shared = Driven {
        service: service.clone(),
        kick: kick.clone(),
    };
    let (buffer, worker) = Buffer::pair(shared, capacity);
    tokio::spawn(Task {
        worker,
        service,
        kick,
        stopped: false,
        _request: PhantomData,
    });
    buffer
}

fn lock<S>(inner: &Mutex<Inner<S>>) -> MutexGuard<'_, Inner<S>> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The service, shared by the worker and the driver. Only the client's task
/// ever takes the lock, so it is never contended.
struct Inner<S> {
    service: S,
    /// Whether the worker holds a request the service was not ready for.
    waiting: bool,
    /// Whether the worker's last `poll_ready` in this round of the task
    /// settled the service (see [`Drive::poll_ready_settled`]), so that the
    /// driver need not step it.
    settled: bool,
}

/// The service as the `Buffer` worker holds it.
struct Driven<S> {
    service: Arc<Mutex<Inner<S>>>,
    kick: Arc<Kick>,
}

impl<S, Req> Service<Req> for Driven<S>
where
    S: Drive<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.kick.start();
        let mut inner = lock(&self.service);
        let (ready, settled) = inner.service.poll_ready_settled(cx);
        inner.waiting = ready.is_pending();
        inner.settled = settled;
        ready
    }

    fn call(&mut self, request: Req) -> S::Future {
        lock(&self.service).service.call(request)
    }
}

pin_project! {
    /// The client's task.
    struct Task<W, S, Req> {
        // tower's `Buffer` worker, whose type tower does not name.
        #[pin]
        worker: W,
        service: Arc<Mutex<Inner<S>>>,
        kick: Arc<Kick>,
        // Set once the service failed `poll_ready`: it is closed for good.
        stopped: bool,
        _request: PhantomData<fn(Req)>,
    }
}

impl<W, S, Req> Future for Task<W, S, Req>
where
    W: Future<Output = ()>,
    S: Drive<Req, Error = BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // A few rounds of worker, then driver; a service whose dials fail at
        // once with no delay due gets the rest on the next wake.
        for _ in 0..4 {
            let started = this.kick.poll_started(cx);
            if this.worker.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if *this.stopped || !started {
                // What the worker settled in this round is not for a later one.
                lock(this.service).settled = false;
                return Poll::Pending;
            }
            let mut inner = lock(this.service);
            let drove = if std::mem::take(&mut inner.settled) {
                Drove::Ready
            } else {
                inner.service.poll_drive(cx)
            };
            let waiting = inner.waiting;
            drop(inner);
            match drove {
                Drove::Waiting => return Poll::Pending,
                Drove::Ready if !waiting => return Poll::Pending,
                // The worker may send the request it holds now.
                Drove::Ready => {}
                // The worker fails its backlog, then the driver dials.
                Drove::Flush => {}
                // The worker learns it, and fails every request from now on.
                Drove::Closed => *this.stopped = true,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
