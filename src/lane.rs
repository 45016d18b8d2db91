//! The direct lane: callers use a shared connection without the worker hop.
//!
//! A multiplexed connection (hyper's HTTP/2 `SendRequest`, and so this
//! crate's HTTP/2 connection under tonic; redis's `MultiplexedConnection`) is
//! `Clone`, and its clones share one connection. Once such a connection has proved healthy, the worker
//! publishes a clone of it here, and every [`Client`](crate::Client) handle
//! calls its own clone directly, on the caller's task. The queue and the
//! worker carry requests only while the connection is being (re)made.
//!
//! The lane is withdrawn as soon as anyone sees the connection die: the
//! worker, a handle whose `poll_ready` on it fails, or any response, direct
//! or through the queue, with an error the [`Classifier`](crate::Classifier)
//! calls dead. Withdrawing it marks the connection dead, for the worker to
//! redial.
//!
//! Handles notice a new or withdrawn lane by one atomic load per
//! `poll_ready`: the generation, bumped on every change. A handle waiting on
//! the connection's readiness is also woken by every change, so it is never
//! left waiting on a connection that has been replaced.
//!
//! A handle keeps its clone of a replaced connection until its next
//! `poll_ready` or until it is dropped.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::health::Health;
use crate::BoxError;

/// A clone of the published connection, as the handles call it.
pub(crate) type Lane<Req, Res> = BoxCloneSyncService<Req, Res, BoxError>;

/// Where the worker publishes the connection, shared by all handles of one
/// client.
pub(crate) struct LaneCell<Req, Res> {
    /// A copy of `Published::generation`, read without the lock.
    generation: AtomicU64,
    published: Mutex<Published<Req, Res>>,
}

struct Published<Req, Res> {
    generation: u64,
    lane: Option<(Lane<Req, Res>, Arc<Health>)>,
    /// Handles waiting on the published connection's readiness.
    waiting: Vec<Waker>,
}

/// One handle's copy of the lane, refreshed when the generation moves on.
pub(crate) struct LaneCache<Req, Res> {
    pub(crate) generation: u64,
    pub(crate) lane: Option<Lane<Req, Res>>,
}

impl<Req, Res> LaneCache<Req, Res> {
    /// Drops this handle's copy of a dead connection. Its generation stays:
    /// the report has moved the published one on, so the next `current`
    /// fetches whatever is published then, once.
    pub(crate) fn clear(&mut self) {
        self.lane = None;
    }
}

impl<Req, Res> Default for LaneCache<Req, Res> {
    fn default() -> Self {
        Self {
            generation: 0,
            lane: None,
        }
    }
}

impl<Req, Res> Clone for LaneCache<Req, Res> {
    fn clone(&self) -> Self {
        Self {
            generation: self.generation,
            lane: self.lane.clone(),
        }
    }
}

impl<Req, Res> LaneCell<Req, Res> {
    pub(crate) fn new() -> Self {
        Self {
            generation: AtomicU64::new(0),
            published: Mutex::new(Published {
                generation: 0,
                lane: None,
                waiting: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Published<Req, Res>> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces what is published (`None` withdraws it), moves the
    /// generation on so that every handle drops its copy, and wakes the
    /// handles waiting on the old connection.
    fn set(
        published: &mut Published<Req, Res>,
        generation: &AtomicU64,
        lane: Option<(Lane<Req, Res>, Arc<Health>)>,
    ) {
        published.generation += 1;
        published.lane = lane;
        generation.store(published.generation, Ordering::Release);
        for waker in published.waiting.drain(..) {
            waker.wake();
        }
    }

    /// Wakes `waker` when the lane changes, unless it already has: the
    /// handle saw `generation` and the connection was not ready.
    pub(crate) fn wake_on_change(&self, generation: u64, waker: &Waker) {
        let mut published = self.lock();
        if published.generation != generation {
            waker.wake_by_ref();
        } else if !published.waiting.iter().any(|w| w.will_wake(waker)) {
            published.waiting.push(waker.clone());
        }
    }

    /// Withdraws the lane, if one is published.
    pub(crate) fn withdraw(&self) {
        let mut published = self.lock();
        if published.lane.is_some() {
            Self::set(&mut published, &self.generation, None);
        }
    }

    /// A handle saw the connection of `generation` die: withdraw it, and mark
    /// it dead so that the worker redials. A report about a connection
    /// already replaced does nothing.
    pub(crate) fn report_dead(&self, generation: u64) {
        let mut published = self.lock();
        if published.generation != generation {
            return;
        }
        if let Some((_, health)) = &published.lane {
            health.mark_dead();
            Self::set(&mut published, &self.generation, None);
        }
    }
}

impl<Req, Res> LaneCell<Req, Res>
where
    Req: 'static,
    Res: 'static,
{
    /// The lane for this handle, if one is published: the cached copy while
    /// the generation is unchanged, a fresh clone otherwise.
    pub(crate) fn current<'a>(
        &self,
        cache: &'a mut LaneCache<Req, Res>,
    ) -> Option<&'a mut Lane<Req, Res>> {
        if self.generation.load(Ordering::Acquire) != cache.generation {
            let published = self.lock();
            cache.generation = published.generation;
            cache.lane = published.lane.as_ref().map(|(lane, _)| lane.clone());
        }
        cache.lane.as_mut()
    }
}

impl<Req, Res> fmt::Debug for LaneCell<Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaneCell")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// How the worker's [`Reconnect`](crate::Reconnect) publishes its connection
/// `S`, whatever the request type.
pub(crate) trait Publish<S>: Send {
    /// The connection proved healthy: let the handles call it directly.
    fn publish(&self, connection: &S, health: &Arc<Health>);

    /// The connection is gone: back to the queue.
    fn withdraw(&self);
}

impl<S, Req, Res> Publish<S> for Arc<LaneCell<Req, Res>>
where
    S: Service<Req, Response = Res> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    Req: Send + 'static,
    Res: Send + 'static,
{
    fn publish(&self, connection: &S, health: &Arc<Health>) {
        let lane = BoxCloneSyncService::new(connection.clone().map_err(Into::into));
        let generation = {
            let mut published = self.lock();
            let lane = Some((lane, health.clone()));
            LaneCell::set(&mut published, &self.generation, lane);
            published.generation
        };
        // A response that finds the connection dead withdraws it at once.
        // Weak: the cell holds the health, which holds this.
        let cell = Arc::downgrade(self);
        health.on_dead(move || {
            if let Some(cell) = cell.upgrade() {
                cell.report_dead(generation);
            }
        });
    }

    fn withdraw(&self) {
        LaneCell::withdraw(self);
    }
}
