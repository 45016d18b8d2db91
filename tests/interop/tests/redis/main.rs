//! redis-rs: a real redis-server, killed and restarted, against `ConnectionManager`.

mod client;
mod drop_in;
mod drop_in_misuse;
mod drop_in_outage;
mod restart;
mod tls;
