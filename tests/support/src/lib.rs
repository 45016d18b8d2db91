//! What tower-redial's tests, examples and benchmarks share.
//!
//! - Real servers on `127.0.0.1` ephemeral ports, each stopped when dropped:
//!   [`line`](mod@line) (a line protocol of our own, with a client connection),
//!   [`redis_server`] and [`pg_server`].
//! - Faults: [`fault_proxy`], an in-process TCP proxy that breaks
//!   connections on demand.
//! - [`scripted`]: a connection factory whose dials follow a script, for
//!   the state-machine tests in paused time.
//! - [`outcome`]: how a request ended, by the types in its error chain, and
//!   the books of many requests.
//! - [`listen`] and [`redial_watch`]: a listener a restarted server binds
//!   again, and a watch on a client redialing on its own.
//!
//! Imported as `support` (`support = { package = "tower-redial-test-support", ... }`).

pub mod fault_proxy;
pub mod line;
pub mod listen;
pub mod netns;
pub mod outcome;
pub mod pg_server;
pub mod policy;
pub mod redial_watch;
pub mod redis_server;
pub mod scripted;
