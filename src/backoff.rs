//! Backoff maths: how long to wait before the next dial.
//!
//! A [`Backoff`] describes a schedule: its kind (exponential or fixed), its
//! [`Jitter`], and the limits after which the client gives up. A [`Schedule`]
//! walks it, one delay per failed dial.
//!
//! The first dial after a healthy connection drops is immediate and takes no
//! delay from the schedule; the delays below are for the failures after it.
//! With `n` failed dials so far, the raw delay is
//!
//! - exponential: `min(cap, base × multiplierⁿ⁻¹)`;
//! - fixed: always the same delay, which is also its cap.
//!
//! The cap applies first, then the [`Jitter`] spreads the raw delay out, as
//! the gRPC connection-backoff spec writes it:
//!
//! | jitter | delay | longest delay |
//! |---|---|---|
//! | [`None`](Jitter::None) | `raw` | `cap` |
//! | [`Full`](Jitter::Full) | random in `[0, raw]` | `cap` |
//! | [`Equal`](Jitter::Equal) | random in `[raw / 2, raw]` | `cap` |
//! | [`Decorrelated`](Jitter::Decorrelated) | `min(cap, random in [base, 3 × previous delay])` | `cap` |
//! | [`Proportional(f)`](Jitter::Proportional) | random in `[raw × (1 - f), raw × (1 + f)]` | `cap × (1 + f)` |
//!
//! Each delay runs from the *start* of the dial that failed, as in the gRPC
//! spec: with `fixed(3 s)`, a server that refuses at once is dialed at 0, 3,
//! 6 and 9 s, like the `connect()` + `sleep(3)` loop it models, and a dial
//! that took longer than its delay is followed at once.
//!
//! Only proportional jitter goes above the cap: at the cap,
//! [`ReconnectPolicy::grpc`](crate::ReconnectPolicy::grpc) (120 s,
//! `Proportional(0.2)`) waits between 96 s and 144 s, and the default (1.6 s,
//! `Proportional(0.25)`) between 1.2 s and 2 s. A delay too long for a
//! [`Duration`] is [`Duration::MAX`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_redial::{Backoff, Jitter};
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(1))
//!     .jitter(Jitter::None);
//! let delays: Vec<_> = backoff.schedule(7).take(6).map(|d| d.as_millis()).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
//! ```

use std::fmt;
use std::time::Duration;

use crate::error::InvalidPolicy;

/// How a raw backoff delay is spread out, so that many clients that lost the
/// same server do not all redial at the same instant.
///
/// Jitter applies to the raw delay, which is already capped. Every jitter but
/// [`Proportional`](Jitter::Proportional) keeps the delay at or below the cap;
/// see the [module docs](self) for the table.
///
/// See AWS's "Exponential Backoff and Jitter" for the trade-offs; full jitter
/// spends the least total work.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// No jitter: wait exactly the raw delay.
    None,
    /// Wait a uniformly random time in `[0, raw]`.
    Full,
    /// Wait `raw / 2` plus a uniformly random time in `[0, raw / 2]`.
    Equal,
    /// AWS's decorrelated jitter: wait a uniformly random time in
    /// `[base, 3 × previous delay]`, capped. The multiplier is not used.
    Decorrelated,
    /// Wait the raw delay times a uniformly random factor in `[1 - f, 1 + f]`;
    /// `f` must be in `[0, 1]`. The factor applies after the cap, as in the
    /// gRPC connection-backoff spec, so the longest delay is `cap × (1 + f)`.
    /// gRPC uses `Proportional(0.2)`.
    Proportional(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Exponential {
        base: Duration,
        multiplier: f64,
        cap: Duration,
    },
    Fixed(Duration),
}

/// A backoff schedule, with its limits.
///
/// Build one with [`Backoff::exponential`] or [`Backoff::fixed`], then pass it
/// to [`ReconnectPolicyBuilder::backoff`](crate::ReconnectPolicyBuilder::backoff),
/// which checks it.
///
/// # Default
///
/// `Backoff::default()` is exponential from 100 ms, × 1.1, capped at 1.6 s,
/// with [`Jitter::Proportional(0.25)`](Jitter::Proportional) (so no delay is
/// longer than 2 s) and no attempt or time limit. Why these numbers: see
/// [`ReconnectPolicy`'s defaults](crate::ReconnectPolicy#default).
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    kind: Kind,
    jitter: Jitter,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
}

impl Backoff {
    /// Exponential backoff: `base`, then `base × multiplier`, and so on, up to
    /// `cap`. No jitter until [`Backoff::jitter`] sets one.
    ///
    /// `base` must be above zero, `multiplier` finite and at least 1, and
    /// `cap` at least `base`; the policy builder refuses anything else.
    pub const fn exponential(base: Duration, multiplier: f64, cap: Duration) -> Self {
        Self::new(Kind::Exponential {
            base,
            multiplier,
            cap,
        })
    }

    /// The same delay before every redial, like the classic `sleep(3)` loop.
    /// `delay` must be above zero.
    pub const fn fixed(delay: Duration) -> Self {
        Self::new(Kind::Fixed(delay))
    }

    const fn new(kind: Kind) -> Self {
        Self {
            kind,
            jitter: Jitter::None,
            max_attempts: None,
            max_elapsed: None,
        }
    }

    /// Sets the jitter.
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Gives up for good after `attempts` consecutive failed dials.
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Gives up for good once the connection has been unavailable for
    /// `elapsed` and the next dial fails.
    pub const fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// The attempt limit, if any.
    pub fn attempt_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The time limit, if any.
    pub fn elapsed_limit(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// The jitter.
    pub fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// The shortest raw delay: the base, or the fixed delay.
    pub fn base(&self) -> Duration {
        match self.kind {
            Kind::Exponential { base, .. } => base,
            Kind::Fixed(delay) => delay,
        }
    }

    /// The longest raw delay: the exponential cap, or the fixed delay.
    ///
    /// It is also the longest delay the schedule gives, except under
    /// [`Jitter::Proportional(f)`](Jitter::Proportional), which applies after
    /// the cap: then the longest delay is `cap × (1 + f)`.
    pub fn cap(&self) -> Duration {
        match self.kind {
            Kind::Exponential { cap, .. } => cap,
            Kind::Fixed(delay) => delay,
        }
    }

    /// The delay before jitter after `failures` failed dials (1 or more).
    pub fn raw_delay(&self, failures: u32) -> Duration {
        match self.kind {
            Kind::Fixed(delay) => delay,
            Kind::Exponential {
                base,
                multiplier,
                cap,
            } => {
                let exponent = failures.saturating_sub(1).min(i32::MAX as u32) as i32;
                let secs = base.as_secs_f64() * multiplier.powi(exponent);
                if secs.is_finite() && secs < cap.as_secs_f64() {
                    seconds(secs).min(cap)
                } else {
                    cap
                }
            }
        }
    }

    /// Walks the schedule with a random source seeded by `seed`: the same
    /// seed gives the same delays.
    pub fn schedule(&self, seed: u64) -> Schedule {
        Schedule {
            backoff: self.clone(),
            rng: fastrand::Rng::with_seed(seed),
            failures: 0,
            previous: self.base(),
        }
    }

    /// The one give-up rule: true when an attempt limit is set and
    /// `attempts` failed dials reach it, or a time limit is set and the
    /// connection has been unavailable for at least that long.
    pub(crate) fn gives_up(&self, attempts: u32, unavailable_for: Duration) -> bool {
        self.max_attempts.is_some_and(|limit| attempts >= limit)
            || self
                .max_elapsed
                .is_some_and(|limit| unavailable_for >= limit)
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidPolicy> {
        match self.kind {
            Kind::Exponential {
                base,
                multiplier,
                cap,
            } => {
                if base.is_zero() {
                    return Err(InvalidPolicy::new(
                        "backoff base",
                        "must be greater than zero",
                    ));
                }
                if cap < base {
                    return Err(InvalidPolicy::new(
                        "backoff cap",
                        format!("({cap:?}) must not be less than the base ({base:?})"),
                    ));
                }
                if !multiplier.is_finite() || multiplier < 1.0 {
                    return Err(InvalidPolicy::new(
                        "backoff multiplier",
                        format!("must be finite and at least 1 (got {multiplier})"),
                    ));
                }
            }
            Kind::Fixed(delay) => {
                if delay.is_zero() {
                    return Err(InvalidPolicy::new(
                        "fixed backoff delay",
                        "must be greater than zero",
                    ));
                }
            }
        }
        if let Jitter::Proportional(f) = self.jitter {
            if !(0.0..=1.0).contains(&f) {
                return Err(InvalidPolicy::new(
                    "proportional jitter",
                    format!("must be a finite fraction in [0, 1] (got {f})"),
                ));
            }
        }
        if self.max_attempts == Some(0) {
            return Err(InvalidPolicy::new("max attempts", "must be at least 1"));
        }
        if self.max_elapsed == Some(Duration::ZERO) {
            return Err(InvalidPolicy::new(
                "max elapsed time",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::exponential(Duration::from_millis(100), 1.1, Duration::from_millis(1600))
            .jitter(Jitter::Proportional(0.25))
    }
}

/// A walk along a [`Backoff`]: each [`next`](Iterator::next) is the delay
/// after one more failed dial. It never ends; the client checks the limits.
#[derive(Clone)]
pub struct Schedule {
    backoff: Backoff,
    rng: fastrand::Rng,
    failures: u32,
    previous: Duration,
}

impl Schedule {
    /// Starts the schedule again from the first delay, as after a connection
    /// proved healthy.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.previous = self.backoff.base();
    }

    /// The backoff this schedule walks.
    pub(crate) fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// How many delays have been taken since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // Already capped: the cap comes before the jitter.
        let raw = self.backoff.raw_delay(self.failures);
        let delay = match self.backoff.jitter {
            Jitter::None => raw,
            // `min(raw)` only guards against float rounding.
            Jitter::Full => scale(raw, self.rng.f64()).min(raw),
            Jitter::Equal => (raw / 2)
                .saturating_add(scale(raw / 2, self.rng.f64()))
                .min(raw),
            // Not capped again: at the cap it spreads over
            // `[cap × (1 - f), cap × (1 + f)]`.
            Jitter::Proportional(f) => scale(raw, 1.0 - f + 2.0 * f * self.rng.f64()),
            Jitter::Decorrelated => {
                let low = self.backoff.base().as_secs_f64();
                let high = (self.previous.as_secs_f64() * 3.0).max(low);
                seconds(low + (high - low) * self.rng.f64()).min(self.backoff.cap())
            }
        };
        self.previous = delay;
        delay
    }
}

/// `delay × factor`, saturating at [`Duration::MAX`] where
/// [`Duration::mul_f64`] would panic.
fn scale(delay: Duration, factor: f64) -> Duration {
    seconds(delay.as_secs_f64() * factor)
}

/// `secs` seconds, saturating at [`Duration::MAX`] where
/// [`Duration::from_secs_f64`] would panic; zero for anything not above zero.
fn seconds(secs: f64) -> Duration {
    if secs > 0.0 {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("backoff", &self.backoff)
            .field("failures", &self.failures)
            .field("previous", &self.previous)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The default preset grows by a tenth from 100 ms and stops at 1.6 s;
    /// with its ±25 % jitter no delay is longer than 2 s.
    #[test]
    fn default_raw_delays_grow_by_a_tenth_up_to_the_cap() {
        let b = Backoff::default();
        let raw: Vec<_> = [1, 2, 3, 8, 30, 31]
            .map(|n| b.raw_delay(n).as_millis())
            .to_vec();
        assert_eq!(raw, [100, 110, 121, 194, 1586, 1600]);
        assert_eq!(b.raw_delay(u32::MAX), Duration::from_millis(1600));
        for seed in 0..100 {
            assert!(b
                .schedule(seed)
                .take(60)
                .all(|d| d <= Duration::from_secs(2)));
        }
    }

    /// The same seed gives the same jittered delays; reset starts over.
    #[test]
    fn seeded_schedule_is_repeatable() {
        let b = Backoff::exponential(ms(100), 2.0, Duration::from_secs(30)).jitter(Jitter::Full);
        let a: Vec<_> = b.schedule(42).take(8).collect();
        let mut s = b.schedule(42);
        let again: Vec<_> = s.by_ref().take(8).collect();
        assert_eq!(a, again);
        s.reset();
        assert_eq!(s.failures(), 0);
        assert!(s.next().unwrap() <= b.raw_delay(1));
        assert_eq!(s.failures(), 1);
    }

    /// The give-up rule: either limit reached gives up, at or past it; no
    /// limit never does.
    #[test]
    fn gives_up_at_either_limit() {
        let none = Backoff::default();
        assert!(!none.gives_up(u32::MAX, Duration::MAX));

        let attempts = Backoff::default().max_attempts(3);
        assert!(!attempts.gives_up(2, Duration::MAX));
        assert!(attempts.gives_up(3, Duration::ZERO));
        assert!(attempts.gives_up(4, Duration::ZERO));

        let elapsed = Backoff::default().max_elapsed(ms(500));
        assert!(!elapsed.gives_up(u32::MAX, ms(499)));
        assert!(elapsed.gives_up(1, ms(500)));
        assert!(elapsed.gives_up(1, ms(501)));

        let both = Backoff::default().max_attempts(3).max_elapsed(ms(500));
        assert!(!both.gives_up(2, ms(499)));
        assert!(both.gives_up(3, ms(0)));
        assert!(both.gives_up(1, ms(500)));
    }

    /// Proportional jitter applies after the cap, as gRPC writes it: at the
    /// cap the delays spread both below and above it.
    #[test]
    fn proportional_jitter_spreads_around_the_cap() {
        let b = Backoff::exponential(ms(1000), 1.6, ms(120_000)).jitter(Jitter::Proportional(0.2));
        let at_cap: Vec<_> = b.schedule(3).skip(20).take(200).collect();
        assert!(at_cap
            .iter()
            .all(|d| (ms(96_000)..=ms(144_000)).contains(d)));
        assert!(at_cap.iter().any(|d| *d < ms(100_000)));
        assert!(at_cap.iter().any(|d| *d > ms(140_000)));
        assert!(at_cap.iter().all(|d| *d != ms(120_000)));
    }

    /// Delays saturate at `Duration::MAX` instead of panicking, for every
    /// jitter, even with the largest cap.
    #[test]
    fn huge_delays_saturate() {
        let jitters = [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
            Jitter::Proportional(1.0),
        ];
        for jitter in jitters {
            for b in [
                Backoff::exponential(Duration::MAX / 2, f64::MAX, Duration::MAX),
                Backoff::fixed(Duration::MAX),
            ] {
                let b = b.jitter(jitter);
                assert!(b.validate().is_ok());
                for delay in b.schedule(9).take(50) {
                    if !matches!(jitter, Jitter::Proportional(_)) {
                        assert!(delay <= b.cap(), "{jitter:?}: {delay:?}");
                    }
                }
            }
        }
    }

    /// Each invalid setting is refused by name, without a panic.
    #[test]
    fn invalid_settings_are_refused() {
        let cases = [
            (Backoff::exponential(ms(0), 2.0, ms(10)), "backoff base"),
            (Backoff::exponential(ms(20), 2.0, ms(10)), "backoff cap"),
            (
                Backoff::exponential(ms(1), 0.5, ms(10)),
                "backoff multiplier",
            ),
            (
                Backoff::exponential(ms(1), f64::NAN, ms(10)),
                "backoff multiplier",
            ),
            (
                Backoff::exponential(ms(1), f64::INFINITY, ms(10)),
                "backoff multiplier",
            ),
            (Backoff::fixed(ms(0)), "fixed backoff delay"),
            (
                Backoff::fixed(ms(1)).jitter(Jitter::Proportional(f64::NAN)),
                "proportional jitter",
            ),
            (
                Backoff::fixed(ms(1)).jitter(Jitter::Proportional(f64::INFINITY)),
                "proportional jitter",
            ),
            (
                Backoff::fixed(ms(1)).jitter(Jitter::Proportional(1.5)),
                "proportional jitter",
            ),
            (Backoff::fixed(ms(1)).max_attempts(0), "max attempts"),
            (Backoff::fixed(ms(1)).max_elapsed(ms(0)), "max elapsed time"),
        ];
        for (backoff, setting) in cases {
            let err = backoff.validate().unwrap_err();
            assert_eq!(err.setting(), setting, "{backoff:?}");
        }
        assert!(Backoff::default().validate().is_ok());
    }

    /// Decorrelated jitter grows from the base towards the cap: each delay
    /// is drawn up to three times the one before.
    #[test]
    fn decorrelated_jitter_grows() {
        let b =
            Backoff::exponential(ms(10), 2.0, Duration::from_secs(10)).jitter(Jitter::Decorrelated);
        for seed in 0..20 {
            let delays: Vec<_> = b.schedule(seed).take(30).collect();
            assert!(delays
                .iter()
                .all(|d| *d >= ms(10) && *d <= Duration::from_secs(10)));
            assert!(
                delays.iter().any(|d| *d > ms(100)),
                "seed {seed}: never grew past 10 × the base: {delays:?}"
            );
        }
    }

    /// A cap equal to the base, or a multiplier of exactly 1, is a constant
    /// schedule: accepted, and constant.
    #[test]
    fn constant_exponential_schedules_are_accepted() {
        for b in [
            Backoff::exponential(ms(50), 2.0, ms(50)),
            Backoff::exponential(ms(50), 1.0, Duration::from_secs(1)),
        ] {
            assert!(b.validate().is_ok(), "{b:?}");
            let delays: Vec<_> = b.schedule(1).take(5).collect();
            assert_eq!(delays, [ms(50); 5]);
        }
    }
}
