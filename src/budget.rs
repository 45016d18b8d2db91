//! The re-send budget: tower's `TpsBudget` accounting, with a cheaper deposit.
//!
//! Every successful response deposits into the budget, and every re-send
//! withdraws from it, so that re-sends stay a bounded fraction of recent
//! traffic. tower's [`TpsBudget`](tower::retry::budget::TpsBudget) rotates
//! its sliding window on every deposit, taking a lock and reading the clock
//! each time; on the direct lane that was a quarter of a request's cost. This
//! budget keeps the same window and the same arithmetic, but a deposit is two
//! atomic adds, with no lock and no clock read; the window rotates only every
//! [`ROTATE_EVERY`] deposits, and on every withdrawal (which is rare).
//!
//! Deposits made between two rotations are credited to the window current at
//! the first of them, as tower does with its writer slot; with rotations
//! less frequent, they may be credited to an earlier window than their own,
//! and so expire early. The error only ever makes the budget stricter.

use std::fmt;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::Budget;

/// Deposits between two rotations of the window.
const ROTATE_EVERY: usize = 64;
/// Slots the window is divided into, as in tower.
const SLOTS: usize = 10;

pub(crate) struct RetryBudget {
    /// The slot being written, and when its window started.
    generation: Mutex<Generation>,
    /// Deposits and withdrawals since the last rotation.
    writer: AtomicIsize,
    slots: [AtomicIsize; SLOTS],
    deposits: AtomicUsize,
    window: Duration,
    reserve: isize,
    deposit_amount: isize,
    withdraw_amount: isize,
}

struct Generation {
    index: usize,
    time: Instant,
}

impl RetryBudget {
    /// A budget as `TpsBudget::new(ttl, min_per_sec, retry_percent)`; the
    /// policy's builder has already checked the arguments are in range.
    pub(crate) fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        let (deposit_amount, withdraw_amount) = if retry_percent == 0.0 {
            (0, 1)
        } else if retry_percent <= 1.0 {
            (1, (1.0 / retry_percent) as isize)
        } else {
            (1000, (1000.0 / retry_percent) as isize)
        };
        let reserve = (min_per_sec as isize)
            .saturating_mul(ttl.as_secs() as isize)
            .saturating_mul(withdraw_amount);
        Self {
            generation: Mutex::new(Generation {
                index: 0,
                time: Instant::now(),
            }),
            writer: AtomicIsize::new(0),
            slots: Default::default(),
            deposits: AtomicUsize::new(0),
            window: ttl / SLOTS as u32,
            reserve,
            deposit_amount,
            withdraw_amount,
        }
    }

    /// Moves the writer into its slot and clears the slots whose windows
    /// have passed, if the current window is over.
    fn rotate(&self) {
        let mut generation = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut elapsed = now.saturating_duration_since(generation.time);
        if elapsed < self.window {
            return;
        }
        let written = self.writer.swap(0, Ordering::AcqRel);
        self.slots[generation.index].store(written, Ordering::Release);
        let mut index = (generation.index + 1) % SLOTS;
        // At most one lap: after a long quiet spell every slot is cleared once.
        for _ in 0..SLOTS {
            if elapsed <= self.window {
                break;
            }
            self.slots[index].store(0, Ordering::Release);
            elapsed -= self.window;
            index = (index + 1) % SLOTS;
        }
        generation.index = index;
        generation.time = now;
    }

    fn balance(&self) -> isize {
        self.slots
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .fold(self.writer.load(Ordering::Acquire), isize::saturating_add)
            .saturating_add(self.reserve)
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        if self.deposit_amount == 0 {
            return;
        }
        self.writer.fetch_add(self.deposit_amount, Ordering::AcqRel);
        if self.deposits.fetch_add(1, Ordering::Relaxed) % ROTATE_EVERY == ROTATE_EVERY - 1 {
            self.rotate();
        }
    }

    fn withdraw(&self) -> bool {
        self.rotate();
        if self.balance() >= self.withdraw_amount {
            self.writer
                .fetch_sub(self.withdraw_amount, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("balance", &self.balance())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn empty_budget_refuses() {
        let budget = RetryBudget::new(secs(1), 0, 1.0);
        assert!(!budget.withdraw());
    }

    #[test]
    fn the_reserve_allows_min_per_sec_times_ttl() {
        let budget = RetryBudget::new(secs(10), 2, 0.2);
        let granted = (0..100).take_while(|_| budget.withdraw()).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn each_deposit_earns_its_share_of_a_withdrawal() {
        let budget = RetryBudget::new(secs(10), 0, 0.2);
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }

    #[test]
    fn percentages_above_one_hundred_scale() {
        let budget = RetryBudget::new(secs(10), 0, 2.0);
        budget.deposit();
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }

    #[test]
    fn zero_percent_earns_nothing() {
        let budget = RetryBudget::new(secs(10), 0, 0.0);
        for _ in 0..1000 {
            budget.deposit();
        }
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_ttl() {
        let budget = RetryBudget::new(secs(1), 0, 1.0);
        budget.deposit();
        time::advance(secs(3)).await;
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_live_until_their_window_passes() {
        let budget = RetryBudget::new(secs(1), 0, 0.5);
        budget.deposit();
        budget.deposit();
        time::advance(Duration::from_millis(901)).await;
        assert!(budget.withdraw());
        time::advance(Duration::from_millis(200)).await;
        assert!(!budget.withdraw(), "the deposits' window has passed");
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_between_rotations_are_never_credited_late() {
        // Many deposits, then a long quiet spell with no rotation: the
        // first withdrawal after it sees them expired, not fresh.
        let budget = RetryBudget::new(secs(1), 0, 1.0);
        for _ in 0..(ROTATE_EVERY / 2) {
            budget.deposit();
        }
        time::advance(secs(2)).await;
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn steady_traffic_keeps_the_budget_funded() {
        let budget = RetryBudget::new(secs(1), 0, 1.0);
        for _ in 0..20 {
            for _ in 0..ROTATE_EVERY {
                budget.deposit();
            }
            time::advance(Duration::from_millis(500)).await;
        }
        // The last second's deposits (two rounds) are still there.
        let granted = (0..10 * ROTATE_EVERY)
            .take_while(|_| budget.withdraw())
            .count();
        assert!(granted >= ROTATE_EVERY, "granted {granted}");
        assert!(granted <= 3 * ROTATE_EVERY, "granted {granted}");
    }
}
