//! The state machine: `Reconnect` and the dial, driven by scripted connections in paused time.

mod cancel_safe;
mod core_edges;
mod dial;
mod heal;
mod panics;
mod response_timeout;
mod service;
