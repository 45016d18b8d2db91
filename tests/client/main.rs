//! The client: its queue, wait limit, direct lane, composition with tower, and balance.

mod balance;
mod client;
mod compose;
mod lane_wakers;
mod multiplexed;
mod queue_slots;
