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
//! or through the queue, with an error the [`Classifier`](crate::classify::Classifier)
//! calls dead. Withdrawing it marks the connection dead, for the worker to
//! redial.
//!
//! Handles notice a new or withdrawn lane by one atomic load per
//! `poll_ready`: the generation, bumped on every change. A handle waiting on
//! the connection's readiness is also woken by every change, so it is never
//! left waiting on a connection that has been replaced.
//!
//! The waiting list is bounded by the live handles. A handle's clone of the
//! connection ([`Watched`]) keeps one place in it while its `poll_ready` is
//! pending, with the latest waker, and gives it back when it turns ready,
//! when the lane changes, or when the handle is dropped: handles dropped
//! while the connection is busy leave no wakers behind.
//!
//! A handle keeps its clone of a replaced connection until its next
//! `poll_ready` or until it is dropped.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::Service;

use crate::health::Health;
use crate::panic::CatchPanic;
use crate::sync::{AtomicU64, Mutex, MutexGuard};
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
    waiting: Waiting,
}

/// The wakers of the handles waiting on the published connection, one per
/// waiting [`Watched`] clone, by the key it was given.
#[derive(Default)]
struct Waiting {
    wakers: HashMap<u64, Waker>,
    next_key: u64,
}

impl Waiting {
    /// Below this capacity the map is not shrunk.
    const KEEP: usize = 64;

    /// Keeps `waker` under `key`, or under a new key if there is none.
    /// Returns the key, and the waker it replaced, to drop once the lock is
    /// released.
    fn register(&mut self, key: Option<u64>, waker: &Waker) -> (u64, Option<Waker>) {
        if let Some(key) = key {
            if let Some(held) = self.wakers.get_mut(&key) {
                if held.will_wake(waker) {
                    return (key, None);
                }
                return (key, Some(std::mem::replace(held, waker.clone())));
            }
        }
        let key = self.next_key;
        self.next_key += 1;
        self.wakers.insert(key, waker.clone());
        (key, None)
    }

    /// Gives back the place under `key`, and memory once most places are
    /// free. Returns the waker, to drop once the lock is released.
    fn remove(&mut self, key: u64) -> Option<Waker> {
        let waker = self.wakers.remove(&key);
        let capacity = self.wakers.capacity();
        if capacity > Self::KEEP && self.wakers.len() < capacity / 4 {
            self.wakers.shrink_to(self.wakers.len() * 2);
        }
        waker
    }

    /// Empties the list, memory and all.
    fn take(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.wakers).into_values().collect()
    }
}

/// What a change of the lane leaves to do once the lock is released: drop
/// the connection it replaced and wake the handles that waited on it. Done
/// outside the lock, as dropping a waker or a connection may drop a handle,
/// which takes the lock to give back its place.
#[must_use = "finish once the lock is released"]
struct Changed<Req, Res> {
    replaced: Option<(Lane<Req, Res>, Arc<Health>)>,
    waiting: Vec<Waker>,
}

impl<Req, Res> Changed<Req, Res> {
    fn finish(self) {
        drop(self.replaced);
        for waker in self.waiting {
            waker.wake();
        }
    }
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
                waiting: Waiting::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Published<Req, Res>> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces what is published (`None` withdraws it) and moves the
    /// generation on so that every handle drops its copy. The handles
    /// waiting on the old connection lose their places, and are woken by
    /// [`Changed::finish`].
    fn set(
        published: &mut Published<Req, Res>,
        generation: &AtomicU64,
        lane: Option<(Lane<Req, Res>, Arc<Health>)>,
    ) -> Changed<Req, Res> {
        published.generation += 1;
        let replaced = std::mem::replace(&mut published.lane, lane);
        generation.store(published.generation, Ordering::Release);
        Changed {
            replaced,
            waiting: published.waiting.take(),
        }
    }

    /// Withdraws the lane, if one is published.
    pub(crate) fn withdraw(&self) {
        let mut published = self.lock();
        if published.lane.is_some() {
            let changed = Self::set(&mut published, &self.generation, None);
            drop(published);
            changed.finish();
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
            let changed = Self::set(&mut published, &self.generation, None);
            drop(published);
            changed.finish();
        }
    }

    /// Keeps `waker` for the clone of the connection published at
    /// `generation` until the lane changes; at once if it has. Returns the
    /// clone's key, if it has a place now.
    fn wait(&self, generation: u64, key: Option<u64>, waker: &Waker) -> Option<u64> {
        let mut published = self.lock();
        if published.generation != generation {
            drop(published);
            waker.wake_by_ref();
            return None;
        }
        let (key, replaced) = published.waiting.register(key, waker);
        drop(published);
        drop(replaced);
        Some(key)
    }

    /// Gives back the place under `key` of the clone published at
    /// `generation`. A change of the lane has emptied the list already.
    fn stop_waiting(&self, generation: u64, key: u64) {
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let mut published = self.lock();
        let removed = published.waiting.remove(key);
        drop(published);
        drop(removed);
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
            let fresh = published.lane.as_ref().map(|(lane, _)| lane.clone());
            drop(published);
            // The old copy is dropped outside the lock: it may give back
            // a place among the waiting.
            cache.lane = fresh;
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

/// How the worker's [`Reconnect`](crate::reconnect::Reconnect) publishes its connection
/// `S`, whatever the request type.
pub(crate) trait Publish<S>: Send {
    /// The connection proved healthy: let the handles call it directly.
    fn publish(&self, connection: &S, health: &Arc<Health>, response_timeout: Option<Duration>);

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
    fn publish(&self, connection: &S, health: &Arc<Health>, response_timeout: Option<Duration>) {
        // Called on the callers' tasks: a panic fails that request and the
        // connection is reported dead; the response timeout fails the
        // request only, as the connection is multiplexed.
        let connection = CatchPanic::new(connection.clone(), response_timeout);
        let mut published = self.lock();
        // The generation `set` moves on to.
        let generation = published.generation + 1;
        let lane = Watched::new(connection, Arc::downgrade(self), generation);
        let lane = Some((BoxCloneSyncService::new(lane), health.clone()));
        let changed = LaneCell::set(&mut published, &self.generation, lane);
        drop(published);
        changed.finish();
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

/// A clone of the published connection that keeps its task's place among
/// the waiting while its `poll_ready` is pending: one place per clone, so
/// one per handle, given back when it turns ready or is dropped.
///
/// # Clone
///
/// A clone starts with no place: readiness, and waiting for it, do not
/// survive `Clone`.
struct Watched<S, Req, Res> {
    connection: S,
    /// Weak: the cell holds the published clone.
    cell: Weak<LaneCell<Req, Res>>,
    /// The generation this connection was published at.
    generation: u64,
    /// This clone's place among the waiting, while it has one.
    key: Option<u64>,
}

impl<S, Req, Res> Watched<S, Req, Res> {
    fn new(connection: S, cell: Weak<LaneCell<Req, Res>>, generation: u64) -> Self {
        Self {
            connection,
            cell,
            generation,
            key: None,
        }
    }

    fn stop_waiting(&mut self) {
        if let Some(key) = self.key.take() {
            if let Some(cell) = self.cell.upgrade() {
                cell.stop_waiting(self.generation, key);
            }
        }
    }
}

impl<S, Req, Res> Service<Req> for Watched<S, Req, Res>
where
    S: Service<Req, Response = Res>,
{
    type Response = Res;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        match self.connection.poll_ready(cx) {
            Poll::Pending => {
                // Woken by the connection, or by the lane changing.
                if let Some(cell) = self.cell.upgrade() {
                    self.key = cell.wait(self.generation, self.key, cx.waker());
                }
                Poll::Pending
            }
            ready => {
                self.stop_waiting();
                ready
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.connection.call(request)
    }
}

impl<S: Clone, Req, Res> Clone for Watched<S, Req, Res> {
    fn clone(&self) -> Self {
        Self::new(self.connection.clone(), self.cell.clone(), self.generation)
    }
}

impl<S, Req, Res> Drop for Watched<S, Req, Res> {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

#[cfg(test)]
mod tests {
    use futures_util::task::noop_waker;

    use super::*;

    /// Fills a fresh list with `n` places.
    fn filled(n: usize) -> (Waiting, Vec<u64>) {
        let waker = noop_waker();
        let mut waiting = Waiting::default();
        let keys = (0..n).map(|_| waiting.register(None, &waker).0).collect();
        (waiting, keys)
    }

    /// Every new place gets a key of its own, and each is given back by
    /// its own key.
    #[test]
    fn every_place_has_its_own_key() {
        let (mut waiting, keys) = filled(3);
        assert_eq!(waiting.wakers.len(), 3);
        assert!(waiting.remove(keys[0]).is_some());
        assert_eq!(waiting.wakers.len(), 2);
        assert!(waiting.remove(keys[0]).is_none(), "given back once");
    }

    /// A list that once held many handles gives its memory back once most
    /// places are free.
    #[test]
    fn a_large_list_gives_memory_back_once_mostly_free() {
        let (mut waiting, keys) = filled(1000);
        let full = waiting.wakers.capacity();
        for key in &keys[..990] {
            waiting.remove(*key);
        }
        assert!(
            waiting.wakers.capacity() < full / 4,
            "{} of {full} kept for 10 handles",
            waiting.wakers.capacity()
        );
    }

    /// A small list keeps its memory as handles come and go: no
    /// reallocation below `Waiting::KEEP`.
    #[test]
    fn a_small_list_keeps_its_memory() {
        let (mut waiting, keys) = filled(Waiting::KEEP / 2);
        let full = waiting.wakers.capacity();
        assert!(full <= Waiting::KEEP);
        for key in &keys[1..] {
            waiting.remove(*key);
        }
        assert!(waiting.wakers.capacity() * 2 > full, "reallocated");
    }
}

#[cfg(all(test, tower_redial_loom))]
mod loom;
