//! The policy the restart tests share.

use std::time::Duration;

use tower_redial::{Backoff, ReconnectPolicy, ReconnectPolicyBuilder};

/// The defaults, but for a short backoff, 5 ms doubling up to 100 ms (the
/// test servers are back within milliseconds), and a generous wait limit,
/// 30 s (no request may fail fast, however slow the machine). No opt-in to
/// re-sending.
pub fn quick_redial() -> ReconnectPolicyBuilder {
    ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(5),
            2.0,
            Duration::from_millis(100),
        ))
        .wait_limit(Duration::from_secs(30))
}
