use std::fmt;
use std::time::Duration;

use crate::backoff::{Backoff, Jitter};
use crate::classify::Classifier;
use crate::error::InvalidPolicy;

/// How a [`Client`](crate::Client) redials, queues and re-sends.
///
/// Build one with [`ReconnectPolicy::builder`], or take a preset:
/// [`default`](ReconnectPolicy::default), [`grpc`](ReconnectPolicy::grpc) or
/// [`fixed`](ReconnectPolicy::fixed). The builder checks every setting and
/// refuses bad ones with [`InvalidPolicy`], so a policy that exists is valid.
///
/// # Default
///
/// | setting | default | why |
/// |---|---|---|
/// | backoff | exponential, 100 ms × 2, capped at 30 s, full jitter, no limit | AWS "Exponential Backoff and Jitter": full jitter spends the least work |
/// | connect timeout | 10 s per dial | a blackholed address is not left to the kernel's ~127 s SYN timeout |
/// | wait limit | 5 s, then fail fast with [`Unavailable`](crate::error::Unavailable) | rides through a restart; bounded |
/// | queue capacity | 1024 requests | tonic's channel default |
/// | when the queue is full | `poll_ready` waits (backpressure); [`load_shed`](ReconnectPolicyBuilder::load_shed) refuses with `Overloaded` instead | callers choose |
/// | healthy after | 2 s Ready, or one successful response | a server that accepts and at once closes must not reset the backoff |
/// | retry attempts | 3 in all (the first send and two re-sends) | gRPC A6 |
/// | retry budget | as tower's `TpsBudget::default()`: 10 s window, 10 re-sends/s floor, 20 % of requests | Finagle's requeue budget |
/// | classifier | [`is_transport_error`](crate::classify::is_transport_error) | by type, never by message text |
/// | jitter seed | random | set one for repeatable tests |
/// | cancel-safe connections | no: a one-at-a-time connection whose request is dropped mid-flight is redialed | see [`cancel_safe`](ReconnectPolicyBuilder::cancel_safe) |
/// | response timeout | none | a silent server is found by the idle probe or TCP settings; see [`response_timeout`](ReconnectPolicyBuilder::response_timeout) |
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_redial::{Backoff, Jitter, ReconnectPolicy};
///
/// let policy = ReconnectPolicy::builder()
///     .backoff(
///         Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(5))
///             .jitter(Jitter::Equal)
///             .max_attempts(20),
///     )
///     .connect_timeout(Duration::from_secs(2))
///     .wait_limit(Duration::from_secs(1))
///     .queue_capacity(256)
///     .build()?;
/// assert_eq!(policy.queue_capacity(), 256);
/// # Ok::<_, tower_redial::error::InvalidPolicy>(())
/// ```
#[derive(Clone)]
pub struct ReconnectPolicy {
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) wait_limit: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) load_shed: bool,
    pub(crate) healthy_after: Duration,
    pub(crate) retry_attempts: u32,
    pub(crate) budget: Budget,
    pub(crate) classifier: Classifier,
    pub(crate) seed: Option<u64>,
    pub(crate) response_timeout: Option<Duration>,
    pub(crate) cancel_safe: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Budget {
    pub(crate) ttl: Duration,
    pub(crate) min_per_sec: u32,
    pub(crate) retry_percent: f32,
}

impl ReconnectPolicy {
    /// Starts from the defaults; see the table above.
    pub fn builder() -> ReconnectPolicyBuilder {
        ReconnectPolicyBuilder {
            policy: Self::default(),
        }
    }

    /// The gRPC connection-backoff preset: 1 s × 1.6, ±20 % jitter, capped at
    /// 120 s, with a 20 s connect timeout (the spec's `MIN_CONNECT_TIMEOUT`).
    /// Other settings are the defaults.
    pub fn grpc() -> Self {
        Self {
            backoff: Backoff::exponential(Duration::from_secs(1), 1.6, Duration::from_secs(120))
                .jitter(Jitter::Proportional(0.2)),
            connect_timeout: Duration::from_secs(20),
            ..Self::default()
        }
    }

    /// The classic redial loop: the same `delay` before every redial, no
    /// jitter. `ReconnectPolicy::fixed(Duration::from_secs(3))` is the origin
    /// recipe's `sleep(3)`.
    ///
    /// # Errors
    ///
    /// [`InvalidPolicy`] if `delay` is zero.
    pub fn fixed(delay: Duration) -> Result<Self, InvalidPolicy> {
        Self::builder().backoff(Backoff::fixed(delay)).build()
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The timeout for each dial.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long requests wait for a connection before failing fast.
    pub fn wait_limit(&self) -> Duration {
        self.wait_limit
    }

    /// How many requests may wait in the queue.
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// How long a new connection must stay up to count as healthy.
    pub fn healthy_after(&self) -> Duration {
        self.healthy_after
    }

    /// How long a response may take, if limited.
    pub fn response_timeout(&self) -> Option<Duration> {
        self.response_timeout
    }

    /// How many times a request may be sent in all.
    pub fn retry_attempts(&self) -> u32 {
        self.retry_attempts
    }

    pub(crate) fn new_budget(&self) -> crate::budget::RetryBudget {
        let Budget {
            ttl,
            min_per_sec,
            retry_percent,
        } = self.budget;
        crate::budget::RetryBudget::new(ttl, min_per_sec, retry_percent)
    }

    pub(crate) fn schedule(&self) -> crate::backoff::Schedule {
        self.backoff
            .schedule(self.seed.unwrap_or_else(|| fastrand::u64(..)))
    }
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            wait_limit: Duration::from_secs(5),
            queue_capacity: 1024,
            load_shed: false,
            healthy_after: Duration::from_secs(2),
            retry_attempts: 3,
            budget: Budget {
                ttl: Duration::from_secs(10),
                min_per_sec: 10,
                retry_percent: 0.2,
            },
            classifier: Classifier::default(),
            seed: None,
            response_timeout: None,
            cancel_safe: false,
        }
    }
}

impl fmt::Debug for ReconnectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectPolicy")
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_limit", &self.wait_limit)
            .field("queue_capacity", &self.queue_capacity)
            .field("load_shed", &self.load_shed)
            .field("healthy_after", &self.healthy_after)
            .field("retry_attempts", &self.retry_attempts)
            .field("budget", &self.budget)
            .field("seed", &self.seed)
            .field("response_timeout", &self.response_timeout)
            .field("cancel_safe", &self.cancel_safe)
            .finish_non_exhaustive()
    }
}

/// The largest queue tower's `Buffer` can hold: its semaphore's limit.
const MAX_QUEUE_CAPACITY: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// Builds a [`ReconnectPolicy`], checking every setting in
/// [`build`](ReconnectPolicyBuilder::build).
#[derive(Clone, Debug)]
pub struct ReconnectPolicyBuilder {
    policy: ReconnectPolicy,
}

impl ReconnectPolicyBuilder {
    /// Sets the backoff schedule and its limits.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy.backoff = backoff;
        self
    }

    /// Sets the timeout for each dial. Must be above zero; `Duration::MAX`
    /// means no timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.policy.connect_timeout = timeout;
        self
    }

    /// Sets how long requests wait for a connection before they fail fast with
    /// [`Unavailable`](crate::error::Unavailable). Must be above zero;
    /// `Duration::MAX` means requests wait for as long as it takes.
    pub fn wait_limit(mut self, limit: Duration) -> Self {
        self.policy.wait_limit = limit;
        self
    }

    /// Sets how many requests may wait in the queue. Must be above zero, and
    /// at most tokio's `Semaphore::MAX_PERMITS` (`usize::MAX >> 3`), the
    /// most tower's `Buffer` can count.
    ///
    /// # Backpressure
    ///
    /// When the queue is full, [`Client`](crate::Client)'s `poll_ready` waits
    /// for room. Choose a bound that covers the requests you expect to arrive
    /// within the wait limit.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.policy.queue_capacity = capacity;
        self
    }

    /// Refuses requests at once with [`Overloaded`](crate::error::Overloaded)
    /// when the queue is full, instead of making `poll_ready` wait for room.
    /// Off by default: a full queue applies backpressure.
    pub fn load_shed(mut self, shed: bool) -> Self {
        self.policy.load_shed = shed;
        self
    }

    /// Sets how long a new connection must stay up before it counts as
    /// healthy (one successful response also counts). Only a healthy
    /// connection resets the backoff. Must be above zero.
    pub fn healthy_after(mut self, after: Duration) -> Self {
        self.policy.healthy_after = after;
        self
    }

    /// Sets how many times a request may be sent in all, counting the first
    /// send. `1` turns re-sending off. Must be at least 1.
    pub fn retry_attempts(mut self, attempts: u32) -> Self {
        self.policy.retry_attempts = attempts;
        self
    }

    /// Sets the re-send budget, as tower's
    /// [`TpsBudget::new`](tower::retry::budget::TpsBudget::new): `ttl` between
    /// 1 and 60 s, `retry_percent` between 0 and 1000.
    pub fn retry_budget(mut self, ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        self.policy.budget = Budget {
            ttl,
            min_per_sec,
            retry_percent,
        };
        self
    }

    /// Replaces the classifier that decides which response errors mean the
    /// connection is dead.
    pub fn classifier(mut self, classifier: Classifier) -> Self {
        self.policy.classifier = classifier;
        self
    }

    /// Fails a request whose response has not come within `timeout` with
    /// [`ResponseTimeout`](crate::error::ResponseTimeout). Off by default. Must be
    /// above zero; `Duration::MAX` means never.
    ///
    /// On a connection that serves one request at a time (bound with
    /// [`client`](crate::MakeReconnect::client)), the connection then counts
    /// as dead and is redialed: a server that accepts and reads but never
    /// answers would otherwise hold every request until the caller's own
    /// timeout, and a late reply would answer the next request. On a
    /// [`multiplexed`](crate::MakeReconnect::multiplexed) connection only
    /// the request fails; to find a silent multiplexed peer, use the
    /// [idle probe](crate::probe) or transport keep-alives.
    ///
    /// The request may have reached the peer, so it is re-sent only if you
    /// opted in with [`resend_if`](crate::ReconnectLayer::resend_if) and the
    /// connection was found dead.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.policy.response_timeout = Some(timeout);
        self
    }

    /// Declares that the connections are cancel-safe: a request dropped
    /// before its response completes (by a caller's timeout, say) leaves
    /// the connection in step. Off by default.
    ///
    /// A connection bound with [`client`](crate::MakeReconnect::client)
    /// serves one request at a time. Written the plain way (write the
    /// request, then read the reply), a request dropped mid-flight leaves
    /// its reply on the wire, where the next request would read it as its
    /// own. So by default such a connection counts as dead once a request
    /// on it is dropped before its response completes, and is redialed.
    /// Turn this on for connections that keep themselves in step, such as
    /// one whose own task matches each reply to its request and discards
    /// the replies of dropped requests. A
    /// [`multiplexed`](crate::MakeReconnect::multiplexed) connection is
    /// never killed this way.
    pub fn cancel_safe(mut self, cancel_safe: bool) -> Self {
        self.policy.cancel_safe = cancel_safe;
        self
    }

    /// Seeds the jitter's random source, so that delays are repeatable.
    pub fn seed(mut self, seed: u64) -> Self {
        self.policy.seed = Some(seed);
        self
    }

    /// Checks every setting and returns the policy.
    ///
    /// # Errors
    ///
    /// [`InvalidPolicy`] names the first setting that is out of range: a zero
    /// or inverted delay, a multiplier below 1, a NaN or infinite jitter, a
    /// zero capacity, timeout or limit, or a budget tower would refuse.
    pub fn build(self) -> Result<ReconnectPolicy, InvalidPolicy> {
        let p = self.policy;
        p.backoff.validate()?;
        let positive = [
            ("connect timeout", p.connect_timeout),
            ("wait limit", p.wait_limit),
            ("healthy after", p.healthy_after),
        ];
        if p.response_timeout == Some(Duration::ZERO) {
            return Err(InvalidPolicy::new(
                "response timeout",
                "must be greater than zero",
            ));
        }
        for (setting, value) in positive {
            if value.is_zero() {
                return Err(InvalidPolicy::new(setting, "must be greater than zero"));
            }
        }
        if p.queue_capacity == 0 {
            return Err(InvalidPolicy::new("queue capacity", "must be at least 1"));
        }
        if p.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(InvalidPolicy::new(
                "queue capacity",
                format!(
                    "must be at most {MAX_QUEUE_CAPACITY} (got {})",
                    p.queue_capacity
                ),
            ));
        }
        if p.retry_attempts == 0 {
            return Err(InvalidPolicy::new("retry attempts", "must be at least 1"));
        }
        let Budget {
            ttl,
            min_per_sec,
            retry_percent,
        } = p.budget;
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(InvalidPolicy::new(
                "retry budget ttl",
                format!("must be between 1 s and 60 s (got {ttl:?})"),
            ));
        }
        if !(0.0..=1000.0).contains(&retry_percent) {
            return Err(InvalidPolicy::new(
                "retry budget percent",
                format!("must be between 0 and 1000 (got {retry_percent})"),
            ));
        }
        if min_per_sec >= i32::MAX as u32 {
            return Err(InvalidPolicy::new(
                "retry budget minimum",
                format!("must be below {} (got {min_per_sec})", i32::MAX),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Presets carry the documented values.
    #[test]
    fn presets_match_their_documentation() {
        let d = ReconnectPolicy::default();
        assert_eq!(d.backoff().base(), Duration::from_millis(100));
        assert_eq!(d.backoff().cap(), Duration::from_secs(30));
        assert_eq!(d.backoff().jitter_kind(), Jitter::Full);
        assert_eq!(d.connect_timeout(), Duration::from_secs(10));
        assert_eq!(d.wait_limit(), Duration::from_secs(5));
        assert_eq!(d.queue_capacity(), 1024);
        assert_eq!(d.retry_attempts(), 3);

        let g = ReconnectPolicy::grpc();
        assert_eq!(g.backoff().base(), Duration::from_secs(1));
        assert_eq!(g.backoff().raw_delay(2), Duration::from_millis(1600));
        assert_eq!(g.backoff().cap(), Duration::from_secs(120));
        assert_eq!(g.backoff().jitter_kind(), Jitter::Proportional(0.2));
        assert_eq!(g.connect_timeout(), Duration::from_secs(20));

        let f = ReconnectPolicy::fixed(Duration::from_secs(3)).unwrap();
        assert_eq!(f.backoff().raw_delay(9), Duration::from_secs(3));
        assert_eq!(f.backoff().jitter_kind(), Jitter::None);
    }

    /// Every out-of-range setting is refused with a typed error naming it.
    #[test]
    fn builder_refuses_bad_settings() {
        let b = ReconnectPolicy::builder;
        let cases = [
            (b().queue_capacity(0).build(), "queue capacity"),
            (b().queue_capacity(usize::MAX).build(), "queue capacity"),
            (
                b().response_timeout(Duration::ZERO).build(),
                "response timeout",
            ),
            (
                b().connect_timeout(Duration::ZERO).build(),
                "connect timeout",
            ),
            (b().wait_limit(Duration::ZERO).build(), "wait limit"),
            (b().healthy_after(Duration::ZERO).build(), "healthy after"),
            (b().retry_attempts(0).build(), "retry attempts"),
            (
                b().retry_budget(Duration::ZERO, 1, 0.2).build(),
                "retry budget ttl",
            ),
            (
                b().retry_budget(Duration::from_secs(1), 1, f32::NAN)
                    .build(),
                "retry budget percent",
            ),
            (
                b().retry_budget(Duration::from_secs(1), u32::MAX, 0.2)
                    .build(),
                "retry budget minimum",
            ),
            (
                b().backoff(
                    Backoff::fixed(Duration::from_secs(1))
                        .jitter(Jitter::Proportional(f64::INFINITY)),
                )
                .build(),
                "proportional jitter",
            ),
            (
                ReconnectPolicy::fixed(Duration::ZERO),
                "fixed backoff delay",
            ),
        ];
        for (result, setting) in cases {
            let err = result.unwrap_err();
            assert_eq!(err.setting(), setting);
            assert!(err.to_string().starts_with("invalid reconnect policy: "));
        }
    }
}
