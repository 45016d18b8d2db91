//! Backoff and policy properties, with proptest.

mod backoff;
mod policy;
