//! Shared support for the integration tests: a line-protocol server and
//! client over real TCP (see [`line`]), and how requests ended ([`outcome`]).
#![allow(dead_code)]

pub mod line;

pub mod outcome;
