//! tower-redial against real peers, kept apart so that the crate's own
//! build stays lean: tests against tonic, redis-rs and hyper's HTTP/2
//! server, the benchmarks (criterion, tower-resilience, redis-rs's
//! `ConnectionManager`), the tonic example, and the README's code blocks,
//! compiled and run as doc tests here with every feature on.

/// The README's code blocks, compiled and run as doc tests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
