//! Shared support for the integration tests: a line-protocol server and
//! client over real TCP (see [`line`]).
#![allow(dead_code)]

pub mod line;
