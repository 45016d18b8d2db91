//! The re-send budget: tower's `TpsBudget` accounting, with a cheaper deposit.
//!
//! Every successful response deposits into the budget, and every re-send
//! withdraws from it, so that re-sends stay a bounded fraction of recent
//! traffic. tower's [`TpsBudget`](tower::retry::budget::TpsBudget) rotates
//! its sliding window on every deposit, taking a lock and reading the clock
//! each time; on the direct lane that was a quarter of a request's cost. This
//! budget keeps the same window and the same arithmetic, but a deposit is one
//! atomic add, to a count of every deposit ever made, with no lock and no
//! clock read: every caller of a client deposits into the one budget, so each
//! atomic it shares is contended. The window rotates only every
//! [`ROTATE_EVERY`] deposits, and on every withdrawal (which is rare); a
//! rotation credits the deposits counted since the last one to the window
//! being written.
//!
//! The two differ only in when a deposit expires; with no time passing they
//! decide alike (tested side by side with tower's). No deposit or
//! withdrawal counts once more than the ttl has passed since it was made.
//! Within the ttl:
//!
//! - deposits made between two rotations are credited to the window current
//!   at the first of them, as tower does with its writer slot, so they may
//!   expire early;
//! - tower rotates at every deposit, and each rotation rounds the time since
//!   the last one up to whole windows, so in tower's budget a deposit may
//!   expire well before the ttl; here, rotating less often, it may count for
//!   longer than there, up to the ttl.

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
    /// Withdrawals since the last rotation (a negative amount).
    writer: AtomicIsize,
    slots: [AtomicIsize; SLOTS],
    /// Every deposit ever made.
    deposits: AtomicUsize,
    /// The deposits already credited to a slot: `deposits` at the last
    /// rotation. Written only under the `generation` lock.
    credited: AtomicUsize,
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
            credited: AtomicUsize::new(0),
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
        let deposits = self.deposits.load(Ordering::Acquire);
        let pending = self.pending(deposits);
        self.credited.store(deposits, Ordering::Release);
        let written = self
            .writer
            .swap(0, Ordering::AcqRel)
            .saturating_add(pending);
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

    /// What the deposits not yet credited to a slot are worth, with
    /// `deposits` deposits made in all.
    fn pending(&self, deposits: usize) -> isize {
        let uncredited = deposits.wrapping_sub(self.credited.load(Ordering::Acquire));
        isize::try_from(uncredited)
            .unwrap_or(isize::MAX)
            .saturating_mul(self.deposit_amount)
    }

    fn balance(&self) -> isize {
        let pending = self.pending(self.deposits.load(Ordering::Acquire));
        self.slots
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .fold(self.writer.load(Ordering::Acquire), isize::saturating_add)
            .saturating_add(pending)
            .saturating_add(self.reserve)
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        if self.deposit_amount == 0 {
            return;
        }
        if self.deposits.fetch_add(1, Ordering::AcqRel) % ROTATE_EVERY == ROTATE_EVERY - 1 {
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

    /// One step of traffic: deposits (successes), time passing, re-sends.
    #[derive(Clone, Debug)]
    enum Step {
        Deposit(usize),
        Advance(u64),
        Withdraw(usize),
    }

    fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                (1..200usize).prop_map(Step::Deposit),
                (1..1500u64).prop_map(Step::Advance),
                (1..20usize).prop_map(Step::Withdraw),
            ],
            1..60,
        )
    }

    /// Runs `steps` on this budget and on tower's `TpsBudget` side by side,
    /// and calls `check(ours, tower's)` at every withdrawal. Tower's budget
    /// is kept in step with ours: a withdrawal tower grants and ours does
    /// not is given back to it (`withdraw` deposits of one each, the exact
    /// inverse at a percentage of 1/n, as both budgets then deposit 1 and
    /// withdraw n into the same slot at the same instant).
    fn side_by_side(
        ttl: Duration,
        min_per_sec: u32,
        percent: f32,
        steps: &[Step],
        mut check: impl FnMut(bool, bool),
    ) {
        use tower::retry::budget::TpsBudget;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let ours = RetryBudget::new(ttl, min_per_sec, percent);
            let towers = TpsBudget::new(ttl, min_per_sec, percent);
            let withdraw = (1.0 / percent).round() as usize;
            for step in steps {
                match *step {
                    Step::Deposit(n) => (0..n).for_each(|_| {
                        ours.deposit();
                        towers.deposit();
                    }),
                    Step::Advance(ms) => time::advance(Duration::from_millis(ms)).await,
                    Step::Withdraw(n) => {
                        for _ in 0..n {
                            let (a, b) = (ours.withdraw(), towers.withdraw());
                            check(a, b);
                            if b && !a {
                                (0..withdraw).for_each(|_| towers.deposit());
                            }
                        }
                    }
                }
            }
        });
    }

    proptest::proptest! {
        /// Whatever the traffic, once more than the ttl has passed with
        /// none, every deposit and withdrawal has expired, in this budget as
        /// in tower's: both grant exactly the reserve, `min_per_sec` × ttl
        /// re-sends.
        #[test]
        fn nothing_counts_once_the_ttl_has_passed(
            ttl in 1..10u64,
            min_per_sec in 0..5u32,
            n in proptest::sample::select(vec![1u32, 2, 4, 5, 10]),
            mut steps in steps(),
        ) {
            steps.push(Step::Advance(ttl * 1000 + 1));
            steps.push(Step::Withdraw(100));
            // The decisions of the last 100 withdrawals, after the quiet spell.
            let mut decisions = Vec::new();
            side_by_side(secs(ttl), min_per_sec, 1.0 / n as f32, &steps, |ours, towers| {
                decisions.push((ours, towers));
            });
            let last = &decisions[decisions.len() - 100..];
            let granted = (
                last.iter().filter(|(ours, _)| *ours).count(),
                last.iter().filter(|(_, towers)| *towers).count(),
            );
            let reserve = (min_per_sec as u64 * ttl) as usize;
            proptest::prop_assert_eq!(granted, (reserve.min(100), reserve.min(100)));
        }

        /// While no time passes, no window rotates in either budget, and the
        /// two agree on every withdrawal.
        #[test]
        fn agrees_with_towers_budget_while_time_stands_still(
            ttl in 1..10u64,
            min_per_sec in 0..5u32,
            n in proptest::sample::select(vec![1u32, 2, 4, 5, 10]),
            steps in steps(),
        ) {
            let still: Vec<Step> = steps
                .into_iter()
                .filter(|step| !matches!(step, Step::Advance(_)))
                .collect();
            let mut differ = 0;
            side_by_side(secs(ttl), min_per_sec, 1.0 / n as f32, &still, |ours, towers| {
                differ += usize::from(ours != towers);
            });
            proptest::prop_assert_eq!(differ, 0);
        }
    }

    /// Deposits outlive their life in tower's budget, but not the ttl:
    /// tower's window rotates at every deposit, and each rotation rounds the
    /// time since the last one up to whole windows, so a deposit there may
    /// expire well before the ttl. Here 192 deposits made at 0 s still count
    /// at 4.2 s with a 6 s ttl, where tower's budget has dropped them; both
    /// drop them after 6 s.
    #[test]
    fn a_deposit_may_outlive_its_life_in_towers_budget_but_not_the_ttl() {
        use Step::*;
        let before_the_ttl = [
            Deposit(192),
            Advance(601),
            Deposit(1),
            Advance(601),
            Withdraw(10),
            Advance(1801),
            Deposit(1),
            Advance(1201),
            Withdraw(1),
        ];
        let mut last = (false, false);
        side_by_side(secs(6), 0, 0.25, &before_the_ttl, |ours, towers| {
            last = (ours, towers);
        });
        assert_eq!(last, (true, false), "at 4.2 s");

        let mut after_the_ttl = before_the_ttl.to_vec();
        after_the_ttl.pop();
        after_the_ttl.push(Advance(1800));
        after_the_ttl.push(Withdraw(1));
        side_by_side(secs(6), 0, 0.25, &after_the_ttl, |ours, towers| {
            last = (ours, towers);
        });
        assert_eq!(last, (false, false), "at 6.0 s");
    }
}
