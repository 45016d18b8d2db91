//! Property tests of the backoff maths: every delay lies within its jitter
//! envelope, for any valid schedule and seed; only proportional jitter goes
//! past the cap, which it applies after, as the gRPC connection-backoff spec
//! does; no accepted setting panics; and invalid settings are refused rather
//! than accepted or panicking.

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

/// Float rounding in the gRPC envelope check: a few nanoseconds.
const NANO_SLACK: f64 = 5e-9;

/// The gRPC connection-backoff spec's delay before jitter after `n` failed
/// dials, in seconds: `min(MAX_BACKOFF, INITIAL_BACKOFF × MULTIPLIERⁿ⁻¹)`.
fn grpc_backoff_secs(n: i32) -> f64 {
    1.6f64.powi(n - 1).min(120.0)
}

/// Any duration up to `Duration::MAX`, weighted towards the edges.
fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..100_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        any::<u64>().prop_map(Duration::from_nanos),
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::MAX),
    ]
}

/// Any multiplier, valid or not, weighted towards the edges.
fn any_multiplier() -> impl Strategy<Value = f64> {
    prop_oneof![
        1.0f64..10.0,
        any::<f64>(),
        Just(1.0),
        Just(f64::MAX),
        Just(f64::INFINITY),
        Just(f64::NAN),
    ]
}

/// Any jitter, with any proportional fraction.
fn any_jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        jitter(),
        any::<f64>().prop_map(Jitter::Proportional),
        Just(Jitter::Proportional(1.0)),
    ]
}

/// Any backoff, valid or not, with any limits.
fn any_backoff() -> impl Strategy<Value = Backoff> {
    let kind = prop_oneof![
        (any_duration(), any_multiplier(), any_duration())
            .prop_map(|(base, multiplier, cap)| Backoff::exponential(base, multiplier, cap)),
        any_duration().prop_map(Backoff::fixed),
    ];
    (
        kind,
        any_jitter(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any_duration()),
    )
        .prop_map(|(backoff, jitter, attempts, elapsed)| {
            let backoff = backoff.jitter(jitter);
            let backoff = match attempts {
                Some(n) => backoff.max_attempts(n),
                None => backoff,
            };
            match elapsed {
                Some(d) => backoff.max_elapsed(d),
                None => backoff,
            }
        })
}

/// A valid exponential backoff with any base, multiplier and cap, however
/// large, and the given jitter.
fn wide_exponential(jitter: Jitter) -> impl Strategy<Value = Backoff> {
    let multiplier = prop_oneof![1.0f64..10.0, 1.0f64..f64::MAX, Just(1.0), Just(f64::MAX)];
    (any_duration(), any_duration(), multiplier).prop_map(move |(a, b, multiplier)| {
        let (a, b) = (
            a.max(Duration::from_nanos(1)),
            b.max(Duration::from_nanos(1)),
        );
        Backoff::exponential(a.min(b), multiplier, a.max(b)).jitter(jitter)
    })
}

/// Under `ReconnectPolicy::grpc()`, delays at the cap spread over the whole
/// gRPC envelope `[96, 144]` s, not clamped to 120 s.
#[test]
fn grpc_delays_at_the_cap_spread_over_96_to_144_s() {
    let backoff = ReconnectPolicy::grpc().backoff().clone();
    // 1.6¹¹ > 120: from the 12th delay on, the raw delay is the cap.
    let at_cap: Vec<f64> = (0..500)
        .flat_map(|seed| backoff.schedule(seed).skip(11).take(20))
        .map(|d| d.as_secs_f64())
        .collect();
    let outside: Vec<_> = at_cap
        .iter()
        .filter(|&&s| !(96.0 - NANO_SLACK..=144.0 + NANO_SLACK).contains(&s))
        .collect();
    assert!(outside.is_empty(), "outside [96, 144] s: {outside:?}");
    assert!(at_cap.iter().any(|&s| s < 100.0), "none below 100 s");
    assert!(at_cap.iter().any(|&s| s > 140.0), "none above 140 s");
    let at_120 = at_cap.iter().filter(|&&s| s == 120.0).count();
    assert!(
        at_120 < at_cap.len() / 100,
        "{at_120} of {} exactly 120 s",
        at_cap.len()
    );
}

proptest! {
    /// Each delay is inside the envelope its jitter promises: at most the
    /// cap, or for proportional jitter at most `cap × (1 + f)`.
    #[test]
    fn delays_stay_within_their_envelope(backoff in backoff(), seed in any::<u64>(), steps in 1usize..64) {
        prop_assert!(ReconnectPolicy::builder().backoff(backoff.clone()).build().is_ok());
        let cap = backoff.cap();
        let mut previous = backoff.base();
        for (n, delay) in backoff.schedule(seed).take(steps).enumerate() {
            let raw = backoff.raw_delay(n as u32 + 1);
            prop_assert!(raw <= cap);
            if let Jitter::Proportional(f) = backoff.jitter_kind() {
                let longest = cap.mul_f64(1.0 + f);
                prop_assert!(delay <= longest + SLACK, "delay {delay:?} above {longest:?}");
            } else {
                prop_assert!(delay <= cap, "delay {delay:?} above cap {cap:?}");
            }
            let (low, high) = match backoff.jitter_kind() {
                Jitter::None => (raw, raw),
                Jitter::Full => (Duration::ZERO, raw),
                Jitter::Equal => (raw / 2, raw),
                Jitter::Proportional(f) => (raw.mul_f64(1.0 - f), raw.mul_f64(1.0 + f)),
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

    /// Under `ReconnectPolicy::grpc()`, the n-th delay lies within
    /// `[0.8, 1.2] × min(120 s, 1 s × 1.6ⁿ⁻¹)`, as the gRPC spec writes it.
    #[test]
    fn grpc_delays_follow_the_spec(seed in any::<u64>()) {
        let backoff = ReconnectPolicy::grpc().backoff().clone();
        for (i, delay) in backoff.schedule(seed).take(40).enumerate() {
            let n = i as i32 + 1;
            let current = grpc_backoff_secs(n);
            let (low, high) = (0.8 * current - NANO_SLACK, 1.2 * current + NANO_SLACK);
            let secs = delay.as_secs_f64();
            prop_assert!(
                (low..=high).contains(&secs),
                "delay {n}: {secs} s outside [{low}, {high}]"
            );
        }
    }

    /// Full jitter never exceeds the cap, for any base, multiplier and cap.
    #[test]
    fn full_jitter_never_exceeds_the_cap(backoff in wide_exponential(Jitter::Full), seed in any::<u64>()) {
        prop_assert!(ReconnectPolicy::builder().backoff(backoff.clone()).build().is_ok());
        for delay in backoff.schedule(seed).take(200) {
            prop_assert!(delay <= backoff.cap(), "{delay:?} above {:?}", backoff.cap());
        }
    }

    /// Equal jitter never exceeds the cap, for any base, multiplier and cap.
    #[test]
    fn equal_jitter_never_exceeds_the_cap(backoff in wide_exponential(Jitter::Equal), seed in any::<u64>()) {
        prop_assert!(ReconnectPolicy::builder().backoff(backoff.clone()).build().is_ok());
        for delay in backoff.schedule(seed).take(200) {
            prop_assert!(delay <= backoff.cap(), "{delay:?} above {:?}", backoff.cap());
        }
    }

    /// No backoff the builder accepts panics while walking its schedule, for
    /// any durations up to `Duration::MAX`, multiplier, jitter and limits.
    #[test]
    fn no_accepted_backoff_panics(backoff in any_backoff(), seed in any::<u64>()) {
        let Ok(policy) = ReconnectPolicy::builder().backoff(backoff).build() else {
            return Ok(());
        };
        let backoff = policy.backoff();
        let cap = backoff.cap();
        let longest = match backoff.jitter_kind() {
            Jitter::Proportional(f) => {
                Duration::try_from_secs_f64(cap.as_secs_f64() * (1.0 + f)).unwrap_or(Duration::MAX)
            }
            _ => cap,
        };
        for delay in backoff.schedule(seed).take(200) {
            prop_assert!(delay <= longest.saturating_add(SLACK), "{delay:?} above {longest:?}");
        }
        prop_assert!(backoff.raw_delay(u32::MAX) <= cap);
    }
}
