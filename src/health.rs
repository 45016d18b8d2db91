//! What a connection's responses tell the service that owns it.
//!
//! Responses finish on the callers' tasks, not on the task that owns the
//! connection. Each connection gets one [`Health`], shared by its response
//! futures (and the direct lane): a success proves the connection healthy,
//! an error the [`Classifier`] calls dead marks it dead. Either news wakes
//! the owning task, so that it acts on it without waiting for a request.

use std::fmt;
use std::sync::atomic::Ordering;
use std::task::Context;

use crate::classify::Classifier;
use crate::redact::redact;
use crate::sync::{fence, AtomicBool, AtomicWaker, OnceLock};
use crate::BoxError;

/// What responses report back about their connection.
pub(crate) struct Health {
    proven: AtomicBool,
    dead: AtomicBool,
    /// What a response that found the connection dead failed with.
    cause: OnceLock<String>,
    classifier: Classifier,
    /// The task that owns the connection.
    owner: AtomicWaker,
    /// Withdraws the connection from the direct lane, once published there.
    on_dead: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("proven", &self.proven)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl Health {
    pub(crate) fn new(classifier: Classifier) -> Self {
        Self {
            proven: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            cause: OnceLock::new(),
            classifier,
            owner: AtomicWaker::new(),
            on_dead: OnceLock::new(),
        }
    }

    /// Whether a response found the connection dead; if not, the task in `cx`
    /// is woken when one does, or when one first proves it healthy.
    pub(crate) fn poll_dead(&self, cx: &mut Context<'_>) -> bool {
        self.owner.register(cx.waker());
        self.is_dead()
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub(crate) fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Relaxed)
    }

    /// What the response that found the connection dead failed with.
    pub(crate) fn cause(&self) -> Option<&str> {
        self.cause.get().map(String::as_str)
    }

    /// Marks the connection dead, without telling the direct lane: for the
    /// lane itself, which is withdrawing it.
    pub(crate) fn mark_dead(&self) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            self.owner.wake();
        }
    }

    /// Runs `withdraw` when a response finds the connection dead: at least
    /// once, and twice if the response kills it while `on_dead` installs
    /// it, once from each side.
    pub(crate) fn on_dead(&self, withdraw: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_dead.set(Box::new(withdraw));
        // Pairs with the fence in `kill`: of the two, the later sees what
        // the other stored. Without both, each side could miss the other's
        // store, the hook never run, and the lane keep a dead connection.
        fence(Ordering::SeqCst);
        if self.is_dead() {
            self.withdraw();
        }
    }

    /// A response came back: the connection is proven.
    pub(crate) fn succeeded(&self) {
        if !self.proven.load(Ordering::Relaxed) && !self.proven.swap(true, Ordering::Relaxed) {
            self.owner.wake();
        }
    }

    /// A response failed. An error the classifier calls dead kills the
    /// connection; any other is the peer's answer, a full round trip that
    /// proves the connection as well as a success.
    pub(crate) fn failed(&self, error: &BoxError) {
        if !self.classifier.finds_dead(&**error) {
            self.succeeded();
            return;
        }
        self.kill(error);
    }

    /// Kills the connection for `error`, whatever the classifier says.
    pub(crate) fn kill(&self, error: &BoxError) {
        let _ = self.cause.set(redact(&error.to_string()));
        if !self.dead.swap(true, Ordering::AcqRel) {
            // Pairs with the fence in `on_dead`.
            fence(Ordering::SeqCst);
            self.withdraw();
            self.owner.wake();
        }
    }

    fn withdraw(&self) {
        if let Some(withdraw) = self.on_dead.get() {
            withdraw();
        }
    }
}

#[cfg(all(test, tower_redial_loom))]
mod loom;
