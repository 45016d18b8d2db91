//! Loom models of a connection's [`Health`]: the news its responses report
//! from the callers' threads reaches the owner, and the lane's withdraw
//! hook runs, under every interleaving.
//!
//! Run with `RUSTFLAGS="--cfg tower_redial_loom" cargo test --lib loom`
//! (`scripts/test` does).
//!
//! The owner waits as its task does, parked between polls of `poll_dead`
//! (loom's `block_on`): a lost wakeup leaves it parked for good, which loom
//! reports as a deadlock.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::task::Poll;

use loom::future::block_on;
use loom::sync::atomic::AtomicUsize;
use loom::thread;

use super::Health;
use crate::classify::Classifier;
use crate::sync::model;
use crate::BoxError;

fn health() -> Arc<Health> {
    Arc::new(Health::new(Classifier::default()))
}

/// An error the default classifier calls dead.
fn reset() -> BoxError {
    io::Error::from(io::ErrorKind::ConnectionReset).into()
}

/// The peer's own answer: not dead, and a round trip that proves the
/// connection.
fn answer() -> BoxError {
    io::Error::other("no such key").into()
}

/// Runs `f` on a thread of its own, as a response finishing on a caller's
/// task.
fn response(health: &Arc<Health>, f: fn(&Health)) -> thread::JoinHandle<()> {
    let health = health.clone();
    thread::spawn(move || f(&health))
}

/// The owner's task: parked until its connection is found dead.
fn owner_waits_for_death(health: &Health) {
    block_on(poll_fn(|cx| {
        if health.poll_dead(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }));
}

/// Installs a withdraw hook that counts its runs.
fn counted_hook(health: &Health, runs: &Arc<AtomicUsize>) {
    let runs = runs.clone();
    health.on_dead(move || {
        runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
}

fn runs(runs: &AtomicUsize) -> usize {
    runs.load(std::sync::atomic::Ordering::Relaxed)
}

/// A response kills the connection while its owner registers to hear of
/// it: the owner sees it dead or is woken to, and then finds the cause.
#[test]
fn a_kill_reaches_the_owner() {
    model(|| {
        let health = health();
        let killer = response(&health, |health| health.kill(&reset()));
        owner_waits_for_death(&health);
        assert!(health.cause().is_some(), "dead, without its cause");
        killer.join().unwrap();
    });
}

/// A first success reaches the owner as a death does: it sees the
/// connection proven, or is woken to.
#[test]
fn a_success_reaches_the_owner() {
    model(|| {
        let health = health();
        let prover = response(&health, Health::succeeded);
        block_on(poll_fn(|cx| {
            assert!(!health.poll_dead(cx), "nothing killed it");
            if health.is_proven() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        prover.join().unwrap();
    });
}

/// A success (here the peer's answer to a failed request) racing a kill
/// cannot bring the connection back: once killed it stays dead, and the
/// owner hears of it.
#[test]
fn a_success_racing_a_kill_leaves_it_dead() {
    model(|| {
        let health = health();
        let prover = response(&health, |health| health.failed(&answer()));
        let killer = response(&health, |health| health.failed(&reset()));
        owner_waits_for_death(&health);
        prover.join().unwrap();
        killer.join().unwrap();
        assert!(health.is_dead() && health.is_proven());
        assert!(health.cause().is_some());
    });
}

/// Two responses kill the connection at once: the lane's withdraw hook
/// runs once, and the owner hears of it.
#[test]
fn racing_kills_run_the_hook_once() {
    model(|| {
        let health = health();
        let hook = Arc::new(AtomicUsize::new(0));
        counted_hook(&health, &hook);
        let one = response(&health, |health| health.kill(&reset()));
        let other = response(&health, |health| health.failed(&reset()));
        owner_waits_for_death(&health);
        one.join().unwrap();
        other.join().unwrap();
        assert_eq!(runs(&hook), 1);
    });
}

/// The worker installs the hook (publishing the connection) while a
/// response kills it: the hook still runs. It may run twice, once from each
/// side; the lane's hook is a report about one generation, which a second
/// run finds already withdrawn (`lane::loom`).
#[test]
fn a_hook_installed_during_a_kill_runs() {
    model(|| {
        let health = health();
        let hook = Arc::new(AtomicUsize::new(0));
        let killer = response(&health, |health| health.kill(&reset()));
        counted_hook(&health, &hook);
        killer.join().unwrap();
        assert!(
            (1..=2).contains(&runs(&hook)),
            "the hook ran {} times",
            runs(&hook)
        );
    });
}
