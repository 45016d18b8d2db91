//! Loom models of the direct lane: the worker publishing and withdrawing
//! connections while handles fetch them, wait on their readiness and report
//! them dead, under every interleaving.
//!
//! Run with `RUSTFLAGS="--cfg tower_redial_loom" cargo test --lib loom`
//! (`scripts/test` does).
//!
//! A handle waits as its task does, parked between polls (loom's
//! `block_on`): a lost wakeup leaves it parked for good, which loom reports
//! as a deadlock.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::noop_waker;
use loom::future::block_on;
use loom::thread;
use tower::Service;

use super::{Lane, LaneCache, LaneCell, Publish};
use crate::classify::Classifier;
use crate::health::Health;
use crate::sync::model;
use crate::BoxError;

type Cell = LaneCell<(), u8>;

/// A multiplexed connection, busy for good: its `poll_ready` stays
/// pending, so a handle that polls it waits for the lane to change. A call
/// answers with the connection's number.
#[derive(Clone)]
struct Connection(u8);

impl Service<()> for Connection {
    type Response = u8;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u8, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok(self.0))
    }
}

fn cell() -> Arc<Cell> {
    Arc::new(LaneCell::new())
}

fn health() -> Arc<Health> {
    Arc::new(Health::new(Classifier::default()))
}

/// The worker publishes connection number `n`, with its health.
fn publish(cell: &Arc<Cell>, n: u8, health: &Arc<Health>) {
    cell.publish(&Connection(n), health, None);
}

/// Which connection a lane is.
fn number(lane: &mut Lane<(), u8>) -> u8 {
    let waker = noop_waker();
    let mut response = lane.call(());
    match response.as_mut().poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(Ok(n)) => n,
        other => panic!("the connection answers at once: {other:?}"),
    }
}

/// What a handle sees: the generation, and the number of the connection
/// published then, if any.
fn sees(cell: &Cell, cache: &mut LaneCache<(), u8>) -> (u64, Option<u8>) {
    let lane = cell.current(cache).map(number);
    (cache.generation, lane)
}

fn reset() -> BoxError {
    io::Error::from(io::ErrorKind::ConnectionReset).into()
}

/// A handle polls the readiness of the connection published at generation
/// 1 until it sees the lane change, parked in between.
fn handle_waits_for_a_change(cell: &Cell) {
    let mut cache = LaneCache::default();
    block_on(poll_fn(|cx| {
        let published = cell.current(&mut cache).is_some();
        if !published || cache.generation != 1 {
            return Poll::Ready(());
        }
        let lane = cache.lane.as_mut().expect("published");
        assert!(lane.poll_ready(cx).is_pending(), "the connection is busy");
        Poll::Pending
    }));
}

/// The list of waiting handles is empty.
fn nobody_waits(cell: &Cell) -> bool {
    cell.lock().waiting.wakers.is_empty()
}

/// A cell with connection 1 published, and the worker's thread doing
/// `change` to it meanwhile.
fn published_while(
    change: impl FnOnce(&Arc<Cell>) + Send + 'static,
) -> (Arc<Cell>, thread::JoinHandle<()>) {
    let cell = cell();
    publish(&cell, 1, &health());
    let worker = {
        let cell = cell.clone();
        thread::spawn(move || change(&cell))
    };
    (cell, worker)
}

/// A handle waits on the readiness of the published connection while the
/// worker replaces it: the handle is woken, never left waiting on the
/// replaced connection, and leaves no waker behind.
#[test]
fn a_handle_waiting_on_a_replaced_connection_is_woken() {
    model(|| {
        let (cell, worker) = published_while(|cell| publish(cell, 2, &health()));
        handle_waits_for_a_change(&cell);
        worker.join().unwrap();
        assert!(nobody_waits(&cell));
    });
}

/// The same when the worker withdraws the connection: the handle is
/// woken, to go through the queue.
#[test]
fn a_handle_waiting_on_a_withdrawn_connection_is_woken() {
    model(|| {
        let (cell, worker) = published_while(|cell| LaneCell::withdraw(cell));
        handle_waits_for_a_change(&cell);
        worker.join().unwrap();
        assert!(nobody_waits(&cell));
    });
}

/// A handle that waits once and is dropped while the worker replaces the
/// connection takes a place only among the waiting on the connection still
/// published, and gives it back or the change takes it: no waker is left
/// behind either way.
#[test]
fn a_dropped_handle_leaves_no_waker() {
    model(|| {
        let (cell, worker) = published_while(|cell| publish(cell, 2, &health()));
        let mut cache = LaneCache::default();
        if let Some(lane) = cell.current(&mut cache) {
            let waker = noop_waker();
            let pending = lane.poll_ready(&mut Context::from_waker(&waker));
            assert!(pending.is_pending(), "the connection is busy");
        }
        drop(cache);
        worker.join().unwrap();
        assert!(nobody_waits(&cell));
    });
}

/// While the worker withdraws a connection and publishes the next, a
/// handle sees each generation with the lane published at it, never a
/// withdrawn lane with a newer generation, and never goes back.
#[test]
fn a_handle_sees_each_generation_with_its_own_lane() {
    model(|| {
        let (cell, worker) = published_while(|cell| {
            LaneCell::withdraw(cell);
            publish(cell, 2, &health());
        });
        let mut cache = LaneCache::default();
        let mut last = 0;
        for _ in 0..2 {
            let (generation, lane) = sees(&cell, &mut cache);
            let published = match generation {
                1 => Some(1),
                2 => None,
                3 => Some(2),
                _ => unreachable!("generation {generation}"),
            };
            assert_eq!(lane, published, "at generation {generation}");
            assert!(generation >= last, "back from {last} to {generation}");
            last = generation;
        }
        worker.join().unwrap();
        assert_eq!(sees(&cell, &mut cache), (3, Some(2)));
    });
}

/// Reports that the connection of generation 1 died (its own response's,
/// through the health's hook, and a handle's) race the worker replacing
/// it: neither withdraws the newer connection nor marks it dead.
#[test]
fn a_report_about_a_replaced_connection_keeps_the_new_one() {
    model(|| {
        let cell = cell();
        let old = health();
        publish(&cell, 1, &old);
        let fresh = health();
        let worker = {
            let (cell, fresh) = (cell.clone(), fresh.clone());
            thread::spawn(move || {
                LaneCell::withdraw(&cell);
                publish(&cell, 2, &fresh);
            })
        };
        let handle = {
            let cell = cell.clone();
            thread::spawn(move || cell.report_dead(1))
        };
        old.kill(&reset());
        worker.join().unwrap();
        handle.join().unwrap();
        assert_eq!(sees(&cell, &mut LaneCache::default()), (3, Some(2)));
        assert!(!fresh.is_dead());
    });
}

/// A response kills the connection while the worker publishes it: the
/// lane does not keep the dead connection, whichever comes first.
#[test]
fn a_connection_killed_as_it_is_published_is_withdrawn() {
    model(|| {
        let cell = cell();
        let health = health();
        let worker = {
            let (cell, health) = (cell.clone(), health.clone());
            thread::spawn(move || publish(&cell, 1, &health))
        };
        health.kill(&reset());
        worker.join().unwrap();
        assert_eq!(sees(&cell, &mut LaneCache::default()), (2, None));
    });
}
