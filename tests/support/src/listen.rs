//! Servers that restart on the same port: a listener bound with
//! `SO_REUSEADDR` ([`reusable`]), and [`Restartable`], which stops a server
//! gracefully and starts it again there.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// Resolves when the server should shut down gracefully.
pub type Shutdown = oneshot::Receiver<()>;

type Serve = Box<dyn Fn(TcpListener, Shutdown) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A server on a `127.0.0.1` port of its own that restarts gracefully.
///
/// `serve` runs the server on a listener until its [`Shutdown`] resolves,
/// then shuts down as the server would (stop accepting, let requests in
/// flight finish) and returns. [`restart_gracefully`](Self::restart_gracefully)
/// waits for that, then serves again on the same port. Dropping it aborts
/// the server.
pub struct Restartable {
    addr: SocketAddr,
    serve: Serve,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Restartable {
    /// Starts `serve` on a fresh port.
    pub fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(TcpListener, Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = reusable("127.0.0.1:0".parse().unwrap());
        let mut server = Self {
            addr: listener.local_addr().unwrap(),
            serve: Box::new(move |listener, shutdown| Box::pin(serve(listener, shutdown))),
            running: None,
        };
        server.run(listener);
        server
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn run(&mut self, listener: TcpListener) {
        let (stop, shutdown) = oneshot::channel();
        let task = tokio::spawn((self.serve)(listener, shutdown));
        self.running = Some((stop, task));
    }

    /// Shuts the server down gracefully, waits until it has finished, then
    /// serves again on the same port.
    ///
    /// # Panics
    ///
    /// If the server panicked.
    pub async fn restart_gracefully(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            task.await.unwrap();
        }
        self.run(reusable(self.addr));
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
    }
}
