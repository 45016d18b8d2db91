//! A listener that a restarted test server can bind again on the same port.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Listens on `addr` (port 0 for a fresh port) with `SO_REUSEADDR`, so that
/// a server restarted on the same port takes it back while the old
/// connections linger in `TIME_WAIT`.
///
/// # Panics
///
/// If the port cannot be bound.
pub fn reusable(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}
