//! Over real TCP: the line-protocol server, the fault proxy, half-open peers, `connect::Framed`, and balance over real servers.

mod balance_servers;
mod faults;
mod framed;
mod half_open;
mod idle_probe;
mod integration;
mod server;
mod soak;
