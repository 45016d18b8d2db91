//! The synchronisation the direct lane and the health flags share between
//! threads: std's and futures-util's, or, in the loom models
//! (`src/health/loom.rs`, `src/lane/loom.rs`, built with
//! `--cfg tower_redial_loom`), loom's, so that loom can try every
//! interleaving of them.
//!
//! `Arc` and `Weak` stay std's under loom (loom's `Arc` has no `Weak`): loom
//! then does not follow reference counts, only the atomics, locks and wakers
//! below.

#[cfg(not(all(test, tower_redial_loom)))]
pub(crate) use futures_util::task::AtomicWaker;
#[cfg(not(all(test, tower_redial_loom)))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64};
#[cfg(not(all(test, tower_redial_loom)))]
pub(crate) use std::sync::{Mutex, MutexGuard, OnceLock};

#[cfg(all(test, tower_redial_loom))]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64};
#[cfg(all(test, tower_redial_loom))]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(all(test, tower_redial_loom))]
pub(crate) use modelled::{model, AtomicWaker, OnceLock};

/// What loom lacks or names differently.
#[cfg(all(test, tower_redial_loom))]
mod modelled {
    use std::sync::atomic::Ordering;
    use std::task::Waker;

    use loom::sync::atomic::AtomicBool;
    use loom::sync::Mutex;

    /// Runs the model `f` under every interleaving of its threads with at
    /// most `PREEMPTIONS` preemptions (`LOOM_MAX_PREEMPTIONS` overrides
    /// it), loom's advice for models of more than two threads.
    pub(crate) fn model(f: impl Fn() + Sync + Send + 'static) {
        const PREEMPTIONS: usize = 3;
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound.get_or_insert(PREEMPTIONS);
        builder.check(f);
    }

    /// loom's `AtomicWaker`, under futures-util's names.
    #[derive(Debug, Default)]
    pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

    impl AtomicWaker {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        pub(crate) fn register(&self, waker: &Waker) {
            self.0.register_by_ref(waker);
        }

        pub(crate) fn wake(&self) {
            self.0.wake();
        }
    }

    /// std's `OnceLock`, of which loom has no model, made of what loom
    /// sees: the value is kept in a std `OnceLock`, and what makes it
    /// visible between threads is a loom flag with std's orderings (the
    /// `Once` state is stored with `Release` once the value is in, and
    /// `get` loads it with `Acquire`), and a loom lock that a racing `set`
    /// waits on, as std's `Once` makes it wait, before it fails.
    pub(crate) struct OnceLock<T> {
        done: AtomicBool,
        setting: Mutex<()>,
        value: std::sync::OnceLock<T>,
    }

    impl<T> OnceLock<T> {
        pub(crate) fn new() -> Self {
            Self {
                done: AtomicBool::new(false),
                setting: Mutex::new(()),
                value: std::sync::OnceLock::new(),
            }
        }

        pub(crate) fn get(&self) -> Option<&T> {
            if self.done.load(Ordering::Acquire) {
                self.value.get()
            } else {
                None
            }
        }

        pub(crate) fn set(&self, value: T) -> Result<(), T> {
            if self.done.load(Ordering::Acquire) {
                return Err(value);
            }
            let _setting = self.setting.lock().unwrap();
            if self.done.load(Ordering::Acquire) {
                return Err(value);
            }
            let set = self.value.set(value);
            self.done.store(true, Ordering::Release);
            set
        }
    }
}
