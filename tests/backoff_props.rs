//! Property tests of the backoff maths: every delay lies within its jitter
//! envelope and never exceeds the cap, for any valid schedule and seed; and
//! invalid settings are refused rather than accepted or panicking.

use std::time::Duration;

use proptest::prelude::*;
use tower_redial::{Backoff, Jitter, ReconnectPolicy};

/// Float rounding in `Duration::from_secs_f64` and `mul_f64`.
const SLACK: Duration = Duration::from_micros(1);

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        (0.0f64..=1.0).prop_map(Jitter::Proportional),
    ]
}

fn backoff() -> impl Strategy<Value = Backoff> {
    let exponential = (1u64..5_000, 1.0f64..4.0, 1u64..200, jitter()).prop_map(
        |(base_ms, multiplier, cap_factor, jitter)| {
            let base = Duration::from_millis(base_ms);
            Backoff::exponential(base, multiplier, base * cap_factor as u32).jitter(jitter)
        },
    );
    let fixed = (1u64..60_000, jitter())
        .prop_map(|(ms, jitter)| Backoff::fixed(Duration::from_millis(ms)).jitter(jitter));
    prop_oneof![exponential, fixed]
}

proptest! {
    /// Each delay is inside the envelope its jitter promises, and at most the cap.
    #[test]
    fn delays_stay_within_their_envelope(backoff in backoff(), seed in any::<u64>(), steps in 1usize..64) {
        prop_assert!(ReconnectPolicy::builder().backoff(backoff.clone()).build().is_ok());
        let cap = backoff.cap();
        let mut previous = backoff.base();
        for (n, delay) in backoff.schedule(seed).take(steps).enumerate() {
            let raw = backoff.raw_delay(n as u32 + 1);
            prop_assert!(raw <= cap);
            prop_assert!(delay <= cap, "delay {delay:?} above cap {cap:?}");
            let (low, high) = match backoff.jitter_kind() {
                Jitter::None => (raw, raw),
                Jitter::Full => (Duration::ZERO, raw),
                Jitter::Equal => (raw / 2, raw),
                Jitter::Proportional(f) => (raw.mul_f64(1.0 - f), raw.mul_f64(1.0 + f).min(cap)),
                Jitter::Decorrelated => (backoff.base().min(cap), (previous * 3).max(backoff.base()).min(cap)),
                other => panic!("unexpected jitter {other:?}"),
            };
            prop_assert!(delay + SLACK >= low, "step {n}: {delay:?} below {low:?}");
            prop_assert!(delay <= high + SLACK, "step {n}: {delay:?} above {high:?}");
            previous = delay;
        }
    }

    /// Raw exponential delays never shrink and stop at the cap.
    #[test]
    fn raw_delays_grow_monotonically_to_the_cap(backoff in backoff()) {
        let mut last = Duration::ZERO;
        for n in 1..200 {
            let raw = backoff.raw_delay(n);
            prop_assert!(raw >= last);
            prop_assert!(raw <= backoff.cap());
            last = raw;
        }
    }

    /// The same seed always gives the same delays.
    #[test]
    fn seeded_schedules_repeat(backoff in backoff(), seed in any::<u64>()) {
        let a: Vec<_> = backoff.schedule(seed).take(16).collect();
        let b: Vec<_> = backoff.schedule(seed).take(16).collect();
        prop_assert_eq!(a, b);
    }

    /// Any multiplier that is not a finite number ≥ 1 is refused, never a panic.
    #[test]
    fn bad_multipliers_are_refused(multiplier in any::<f64>()) {
        let result = ReconnectPolicy::builder()
            .backoff(Backoff::exponential(Duration::from_millis(1), multiplier, Duration::from_secs(1)))
            .build();
        prop_assert_eq!(result.is_ok(), multiplier.is_finite() && multiplier >= 1.0);
    }

    /// Any proportional jitter outside [0, 1], or NaN or infinite, is refused.
    #[test]
    fn bad_jitter_fractions_are_refused(f in any::<f64>()) {
        let result = ReconnectPolicy::builder()
            .backoff(Backoff::fixed(Duration::from_millis(1)).jitter(Jitter::Proportional(f)))
            .build();
        prop_assert_eq!(result.is_ok(), (0.0..=1.0).contains(&f));
    }

    /// A cap below the base is refused; at or above it is accepted.
    #[test]
    fn inverted_delays_are_refused(base in 1u64..10_000, cap in 0u64..10_000) {
        let result = ReconnectPolicy::builder()
            .backoff(Backoff::exponential(Duration::from_millis(base), 2.0, Duration::from_millis(cap)))
            .build();
        prop_assert_eq!(result.is_ok(), cap >= base);
    }
}
