//! The shape of the crate: the one-way import graph, and what the root exports.

mod imports;
mod public_root;
