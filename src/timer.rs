//! Timers for services: a reusable one, and the wait limit.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The longest wait a timer is armed for: "forever" in practice. tokio
/// clamps its own far-future sleeps to the same 30 years.
const FOREVER: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `from + after`, saturating: a duration too large to add (a setting of
/// `Duration::MAX`, say) means "forever", never a panic.
pub(crate) fn deadline(from: Instant, after: Duration) -> Instant {
    from.checked_add(after.min(FOREVER))
        .unwrap_or_else(|| from + Duration::from_secs(365 * 86_400))
}

/// A lazily created, reusable timer: `Sleep` needs a runtime, `new` does not.
#[derive(Default)]
pub(crate) struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    pub(crate) fn arm(&mut self, deadline: Instant) {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Drops the deadline, taking the timer out of tokio's timer wheel: an
    /// armed timer left there costs the runtime work at every park, and
    /// wakes the task for nothing when it fires. The next `arm` makes a new
    /// one.
    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }

    /// Whether the deadline last armed has passed. A timer never armed has
    /// no deadline and never expires.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

/// How long requests may wait for a connection: from the moment it became
/// unavailable until the wait limit has passed. After that, requests fail
/// fast between dials.
///
/// Made only when the clock starts, so it cannot be misread before: there
/// is no "unarmed" wait limit to look expired.
pub(crate) struct WaitLimit {
    since: Instant,
    timer: Pin<Box<Sleep>>,
    passed: bool,
}

impl WaitLimit {
    /// Starts the clock at `since`.
    pub(crate) fn start(since: Instant, limit: Duration) -> Self {
        Self {
            since,
            timer: Box::pin(tokio::time::sleep_until(deadline(since, limit))),
            passed: false,
        }
    }

    /// When the clock started.
    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    /// Whether the limit has passed; if not, wakes the task when it does.
    pub(crate) fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.passed {
            self.passed = self.timer.as_mut().poll(cx).is_ready();
        }
        self.passed
    }

    /// Whether the limit was seen to pass.
    pub(crate) fn passed(&self) -> bool {
        self.passed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deadlines saturate instead of overflowing.
    #[tokio::test(start_paused = true)]
    async fn deadlines_saturate() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(deadline(now, Duration::MAX), now + FOREVER);
    }

    /// A wait limit passes exactly at its deadline, not before.
    #[tokio::test(start_paused = true)]
    async fn a_wait_limit_passes_at_its_deadline() {
        let mut limit = WaitLimit::start(Instant::now(), Duration::from_millis(100));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!limit.poll_passed(&mut cx));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!limit.poll_passed(&mut cx));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limit.poll_passed(&mut cx));
        assert!(limit.passed());
    }

    /// A timer never armed never reports expiry.
    #[test]
    fn an_unarmed_timer_never_expires() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!Timer::default().poll_expired(&mut cx));
    }

    /// A disarmed timer leaves tokio's wheel: it never reports the deadline
    /// it had, and arms again afresh.
    #[tokio::test(start_paused = true)]
    async fn a_disarmed_timer_never_expires_until_armed_again() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut timer = Timer::default();
        timer.arm(deadline(Instant::now(), Duration::from_millis(10)));
        assert!(!timer.poll_expired(&mut cx));
        timer.disarm();
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!timer.poll_expired(&mut cx), "disarmed");
        timer.arm(deadline(Instant::now(), Duration::from_millis(10)));
        assert!(!timer.poll_expired(&mut cx));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(timer.poll_expired(&mut cx));
    }

    /// A setting of `Duration::MAX` means decades: a deadline that far off
    /// is at least 29 years away, not a day or zero.
    #[tokio::test(start_paused = true)]
    async fn the_longest_deadline_is_decades_away() {
        let now = Instant::now();
        let far = deadline(now, Duration::MAX) - now;
        assert!(far >= Duration::from_secs(29 * 365 * 86_400), "{far:?}");
    }

    /// Near the end of the clock's range, where even "forever" does not fit,
    /// a deadline still lies a year or more ahead instead of panicking or
    /// lying in the past.
    #[tokio::test(start_paused = true)]
    async fn deadlines_near_the_end_of_time_still_lie_ahead() {
        let now = Instant::now();
        // The latest instant the clock can represent, in whole seconds.
        let (mut fits, mut overflows) = (0u64, u64::MAX);
        while overflows - fits > 1 {
            let mid = fits + (overflows - fits) / 2;
            if now.checked_add(Duration::from_secs(mid)).is_some() {
                fits = mid;
            } else {
                overflows = mid;
            }
        }
        let year = Duration::from_secs(365 * 86_400);
        let from = now + Duration::from_secs(fits) - 10 * year;
        assert!(from.checked_add(FOREVER).is_none(), "forever does not fit");
        let at = deadline(from, Duration::MAX);
        assert!(
            at >= from + year,
            "{:?} after",
            at.saturating_duration_since(from)
        );
    }
}
