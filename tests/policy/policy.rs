//! No setting crashes anything: the policy builder is fed arbitrary values,
//! extremes included (zero, one nanosecond, `Duration::MAX`, `usize::MAX`),
//! and every policy it accepts drives a real client through refused dials,
//! a connection and a request without a panic; everything else is refused
//! with `InvalidPolicy` naming the setting.

use support::scripted;

use std::time::Duration;

use proptest::prelude::*;
use scripted::{within, Dial, Dialer};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::{Backoff, Client, Jitter, ReconnectLayer, ReconnectPolicy};

/// Durations with the extremes well represented.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::MAX),
        Just(Duration::from_secs(u64::MAX)),
        (0u64..10_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        any::<f64>().prop_map(Jitter::Proportional),
        (0.0f64..=1.0).prop_map(Jitter::Proportional),
    ]
}

fn multiplier() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(1.0),
        Just(1e300),
        Just(f64::MAX),
        any::<f64>(),
        1.0f64..4.0
    ]
}

fn backoff() -> impl Strategy<Value = Backoff> {
    let exponential = (duration(), multiplier(), duration())
        .prop_map(|(base, multiplier, cap)| Backoff::exponential(base, multiplier, cap));
    let fixed = duration().prop_map(Backoff::fixed);
    (
        prop_oneof![exponential, fixed],
        jitter(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(duration()),
    )
        .prop_map(|(backoff, jitter, attempts, elapsed)| {
            let mut backoff = backoff.jitter(jitter);
            if let Some(attempts) = attempts {
                backoff = backoff.max_attempts(attempts);
            }
            if let Some(elapsed) = elapsed {
                backoff = backoff.max_elapsed(elapsed);
            }
            backoff
        })
}

fn capacity() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(usize::MAX),
        1usize..4096,
        any::<usize>()
    ]
}

#[derive(Debug, Clone)]
struct Settings {
    backoff: Backoff,
    connect_timeout: Duration,
    wait_limit: Duration,
    healthy_after: Duration,
    response_timeout: Option<Duration>,
    queue_capacity: usize,
    retry_attempts: u32,
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        backoff(),
        duration(),
        duration(),
        duration(),
        proptest::option::of(duration()),
        capacity(),
        prop_oneof![Just(0u32), Just(1), Just(u32::MAX), 1u32..10],
    )
        .prop_map(
            |(
                backoff,
                connect_timeout,
                wait_limit,
                healthy_after,
                response_timeout,
                queue_capacity,
                retry_attempts,
            )| Settings {
                backoff,
                connect_timeout,
                wait_limit,
                healthy_after,
                response_timeout,
                queue_capacity,
                retry_attempts,
            },
        )
}

fn build(s: &Settings) -> Result<ReconnectPolicy, tower_redial::error::InvalidPolicy> {
    let mut builder = ReconnectPolicy::builder()
        .backoff(s.backoff.clone())
        .connect_timeout(s.connect_timeout)
        .wait_limit(s.wait_limit)
        .healthy_after(s.healthy_after)
        .queue_capacity(s.queue_capacity)
        .retry_attempts(s.retry_attempts)
        .seed(7);
    if let Some(timeout) = s.response_timeout {
        builder = builder.response_timeout(timeout);
    }
    builder.build()
}

/// Drives a client with `policy` under paused time: two refused dials, then
/// a connection that answers. The request ends (served, failed fast, or the
/// client closed at a limit), and nothing panics.
async fn drive(policy: ReconnectPolicy) {
    let dialer = Dialer::new([Dial::Refuse, Dial::Refuse, Dial::Connect]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(dialer.clone())
        .client("db");
    let request = tokio::spawn(client.clone().oneshot("GET".to_string()));
    let answer = tokio::spawn(async move {
        let mut conn = dialer.conn(0).await;
        if let Some((_, reply)) = conn.next_request().await {
            reply.send_response("VALUE".to_string());
        }
        conn
    });
    // Paused time: the longest timers fire as soon as nothing else runs.
    let outcome = within(
        Duration::from_secs(100 * 365 * 86_400),
        "the request",
        request,
    )
    .await
    .expect("the request task did not panic");
    if let Ok(reply) = outcome {
        assert_eq!(reply, "VALUE");
    }
    answer.abort();
    drop(client);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every policy the builder accepts drives a client without a panic;
    /// every one it refuses names a setting.
    #[test]
    fn no_setting_crashes_anything(s in settings()) {
        match build(&s) {
            Ok(policy) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()
                    .unwrap();
                runtime.block_on(drive(policy));
            }
            Err(error) => {
                prop_assert!(!error.setting().is_empty());
                prop_assert!(error.to_string().starts_with("invalid reconnect policy: "));
            }
        }
    }
}

/// "Forever" is a setting, not a crash: every duration at `Duration::MAX`
/// is accepted and drives a client.
#[tokio::test(start_paused = true)]
async fn forever_is_accepted() {
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(1),
            2.0,
            Duration::MAX,
        ))
        .connect_timeout(Duration::MAX)
        .wait_limit(Duration::MAX)
        .healthy_after(Duration::MAX)
        .response_timeout(Duration::MAX)
        .build()
        .unwrap();
    drive(policy).await;
}
