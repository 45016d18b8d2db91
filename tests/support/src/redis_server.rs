//! A real `redis-server` for the tests and the example: started on a free
//! `127.0.0.1` port, killed with `SIGKILL` (or shut down with `SHUTDOWN`)
//! and restarted on the same port.
//!
//! Each server gets a temporary directory of its own, removed on drop. A
//! durable server keeps an append-only file fsynced on every write, so that
//! every write it acknowledged survives a `kill -9`. A slow-loading server
//! is a durable one with a dataset that each restart loads slowly, answering
//! `-LOADING` meanwhile, until the test lets it finish. Dropping a
//! `RedisServer` kills its process, also when a test panics.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// The program started; found on `PATH`.
const PROGRAM: &str = "redis-server";
/// How long a start may take before it counts as failed: a hang guard, not
/// a speed assumption.
const START_GUARD: Duration = Duration::from_secs(20);
/// The size of each key's value in a slow-loading server's dataset: over
/// the 1024 bytes between two rounds of serving clients while loading, so
/// that the server answers between any two keys.
const VALUE_BYTES: u32 = 1100;
/// How long a slow-loading server takes to load each key, in microseconds,
/// until told to finish. With [`SLOW_KEYS`] keys, 50 s in all: far longer
/// than any hang guard, so the test decides when loading ends.
const LOAD_DELAY_US: u32 = 5_000;
/// The keys in a slow-loading server's dataset.
pub const SLOW_KEYS: u32 = 10_000;

/// A `redis-server` process on `127.0.0.1`.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    durable: bool,
    /// Arguments beyond the common ones and persistence.
    args: Vec<String>,
    /// Whether the server counts as started once it answers `PING` at all,
    /// `-LOADING` or `-MASTERDOWN` included, rather than only with `+PONG`.
    answering_is_ready: bool,
    child: Option<Child>,
    starts: u32,
    /// The TLS port, for a server started with [`RedisServer::start_tls`].
    tls_port: Option<u16>,
}

/// The files of a TLS server: its certificate chain and key, and the CA
/// certificate it would check clients against (it does not ask them for
/// one). PEM files, read at each start: replace them between a kill and a
/// restart to restart with a new certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl RedisServer {
    /// Starts a server without persistence: its data is lost when killed.
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing or does not start.
    pub async fn start() -> Self {
        Self::try_start(false)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a durable server, stores a dataset of [`SLOW_KEYS`] keys of
    /// about 1 KiB in the base of its append-only file, and makes every
    /// later start (and `DEBUG RELOAD`) load it slowly: 5 ms a key, 50 s in
    /// all, answering other clients with `-LOADING` meanwhile, until
    /// [`finish_loading`](Self::finish_loading). A restart returns once the
    /// server answers, loading or not.
    ///
    /// Needs `redis-server` 7 or later (for `enable-debug-command`).
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing or does not start, or the dataset is not
    /// stored.
    pub async fn start_slow_loading() -> Self {
        let args = [
            "--enable-debug-command",
            "local",
            // The dataset is stored uncompressed, so each key is over the
            // interval below.
            "--rdbcompression",
            "no",
            "--loading-process-events-interval-bytes",
            "1024",
            "--key-load-delay",
            &LOAD_DELAY_US.to_string(),
            // The base file stays as written.
            "--auto-aof-rewrite-percentage",
            "0",
        ];
        let server = Self::try_start_with(true, &args, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (keys, bytes) = (SLOW_KEYS.to_string(), VALUE_BYTES.to_string());
        let populated = server
            .raw(&["DEBUG", "POPULATE", &keys, "slow", &bytes])
            .await;
        assert_eq!(populated, "+OK\r\n");
        // DEBUG POPULATE is not logged to the append-only file: a rewrite
        // writes the dataset into its base.
        let rewrite = server.raw(&["BGREWRITEAOF"]).await;
        assert!(rewrite.starts_with('+'), "BGREWRITEAOF: {rewrite:?}");
        server
            .wait_until("the append-only file rewritten", |info| {
                info.contains("aof_rewrites:1\r\n")
                    && info.contains("aof_rewrite_in_progress:0\r\n")
                    && info.contains("aof_rewrite_scheduled:0\r\n")
            })
            .await;
        server
    }

    /// Starts a replica of a master that does not exist, with
    /// `replica-serve-stale-data no`: it refuses commands, `PING` included,
    /// with `-MASTERDOWN` until [`promote`](Self::promote). Without
    /// persistence.
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing or does not start.
    pub async fn start_cut_off_replica() -> Self {
        // A port where nothing listens: taken, then given back.
        let master = free_port().expect("a free port").to_string();
        let args = [
            "--replicaof",
            "127.0.0.1",
            &master,
            "--replica-serve-stale-data",
            "no",
        ];
        Self::try_start_with(false, &args, true)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server that fsyncs an append-only file on every write, so
    /// that every acknowledged write survives `kill -9`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing or does not start.
    pub async fn start_durable() -> Self {
        Self::try_start(true)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server without persistence that also serves TLS, on a port
    /// of its own ([`tls_url`](Self::tls_url)), with `files`; the plain port
    /// stays for the helpers (`raw`, `counter`, the start's `PING`).
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing, was built without TLS, or does not
    /// start.
    pub async fn start_tls(files: &TlsFiles) -> Self {
        let tls_port = free_port().expect("a free port");
        let (port, cert, key, ca) = (
            tls_port.to_string(),
            files.cert.display().to_string(),
            files.key.display().to_string(),
            files.ca.display().to_string(),
        );
        let args = [
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ];
        let mut server = Self::try_start_with(false, &args, false)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        server.tls_port = Some(tls_port);
        server
    }

    /// `rediss://127.0.0.1:tls-port/`, for a server started with
    /// [`start_tls`](Self::start_tls).
    ///
    /// # Panics
    ///
    /// If the server does not serve TLS.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("a server started with start_tls");
        format!("rediss://127.0.0.1:{port}/")
    }

    /// Starts a server on a free port, with a clear error if `redis-server`
    /// is not installed.
    pub async fn try_start(durable: bool) -> io::Result<Self> {
        Self::try_start_with(durable, &[], false).await
    }

    async fn try_start_with(
        durable: bool,
        args: &[&str],
        answering_is_ready: bool,
    ) -> io::Result<Self> {
        let dir = temp_dir()?;
        let mut server = Self {
            port: 0,
            dir,
            durable,
            args: args.iter().map(|arg| arg.to_string()).collect(),
            answering_is_ready,
            child: None,
            starts: 0,
            tls_port: None,
        };
        // Another process may take the free port before the server binds it:
        // then try another one.
        let mut last_error = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(error),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// The port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// How many times the server has been started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Kills the server with `SIGKILL` and waits for it to exit. Its
    /// connections are closed by the kernel, with nothing said.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill redis-server");
        }
    }

    /// Starts the server again on the same port, and waits until it answers.
    ///
    /// # Panics
    ///
    /// If it does not start.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the server before restarting it");
        // The port may be held for a moment by someone else: try again.
        let mut last_error = None;
        for _ in 0..20 {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(error) => last_error = Some(error),
            }
            sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "redis-server did not restart on port {}: {:?}",
            self.port, last_error
        );
    }

    /// Kills the server, then starts it again on the same port. Returns how
    /// long it was down.
    pub async fn kill_and_restart(&mut self) -> Duration {
        self.kill().await;
        let down = Instant::now();
        self.restart().await;
        down.elapsed()
    }

    /// Shuts the server down gracefully with `SHUTDOWN`, and waits for it to
    /// exit: it syncs its append-only file, and its connections are closed
    /// with the commands it had not yet run unanswered.
    ///
    /// # Panics
    ///
    /// If the server refuses, or does not exit, or exits with a failure.
    pub async fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The server answers only if it refuses; it closes the connection
        // as it exits.
        let refused = timeout(START_GUARD, raw_command(self.addr(), &["SHUTDOWN"])).await;
        if let Ok(Ok(reply)) = refused {
            let _ = child.kill().await;
            panic!("redis-server refused SHUTDOWN: {reply:?}");
        }
        let status = timeout(START_GUARD, child.wait())
            .await
            .unwrap_or_else(|_| panic!("redis-server did not exit after SHUTDOWN"))
            .expect("wait for redis-server");
        assert!(status.success(), "redis-server exited with {status}");
    }

    /// Shuts the server down with `SHUTDOWN`, then starts it again on the
    /// same port. Returns how long it was down.
    pub async fn shutdown_and_restart(&mut self) -> Duration {
        self.shutdown().await;
        let down = Instant::now();
        self.restart().await;
        down.elapsed()
    }

    /// Whether the server is loading its dataset.
    pub async fn is_loading(&self) -> bool {
        self.raw(&["INFO", "persistence"])
            .await
            .contains("\r\nloading:1\r\n")
    }

    /// Lets a slow-loading server load the rest of its dataset at full
    /// speed, and waits until it has.
    pub async fn finish_loading(&self) {
        let reply = self.raw(&["CONFIG", "SET", "key-load-delay", "0"]).await;
        assert_eq!(reply, "+OK\r\n");
        self.wait_until("the dataset loaded", |info| {
            info.contains("\r\nloading:0\r\n")
        })
        .await;
    }

    /// Makes a slow-loading server reload its dataset with `DEBUG RELOAD`
    /// while it keeps its connections, and returns once it is loading. The
    /// task returned answers `+OK` once it has reloaded.
    pub async fn reload_slowly(&self) -> JoinHandle<io::Result<String>> {
        let addr = self.addr();
        let reload = tokio::spawn(async move { raw_command(addr, &["DEBUG", "RELOAD"]).await });
        self.wait_until("DEBUG RELOAD loading", |info| {
            info.contains("\r\nloading:1\r\n")
        })
        .await;
        reload
    }

    /// Makes a replica a master, with `REPLICAOF NO ONE`.
    pub async fn promote(&self) {
        assert_eq!(self.raw(&["REPLICAOF", "NO", "ONE"]).await, "+OK\r\n");
    }

    /// How many times the server refused a command with the error `code`
    /// (`LOADING`, say) since it started, from `INFO errorstats`.
    pub async fn errors(&self, code: &str) -> u64 {
        let reply = self.raw(&["INFO", "errorstats"]).await;
        let prefix = format!("errorstat_{code}:count=");
        reply
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |count| {
                let count = count.split(',').next().unwrap_or_default();
                count.parse().unwrap_or_else(|_| panic!("{reply:?}"))
            })
    }

    /// Polls `INFO` until `done` says so, or panics after [`START_GUARD`].
    async fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) {
        let wait = async {
            while !done(&self.raw(&["INFO"]).await) {
                sleep(Duration::from_millis(5)).await;
            }
        };
        timeout(START_GUARD, wait)
            .await
            .unwrap_or_else(|_| panic!("redis-server: waited {START_GUARD:?} for {what}"));
    }

    /// Sends one command on a fresh connection and returns the raw RESP
    /// reply, e.g. `":42\r\n"` or `"$-1\r\n"`.
    pub async fn raw(&self, args: &[&str]) -> String {
        timeout(START_GUARD, raw_command(self.addr(), args))
            .await
            .unwrap_or_else(|_| panic!("redis-server did not answer {args:?}"))
            .unwrap_or_else(|e| panic!("redis-server failed {args:?}: {e}"))
    }

    /// The integer value of `key` (0 if it does not exist).
    pub async fn counter(&self, key: &str) -> i64 {
        let reply = self.raw(&["GET", key]).await;
        if reply.starts_with("$-1") {
            return 0;
        }
        let value = reply.lines().nth(1).unwrap_or_default();
        value
            .parse()
            .unwrap_or_else(|_| panic!("GET {key}: {reply:?}"))
    }

    /// A field of `INFO`, such as `blocked_clients`.
    pub async fn info_field(&self, field: &str) -> Option<String> {
        let reply = self.raw(&["INFO"]).await;
        let prefix = format!("{field}:");
        reply
            .lines()
            .find_map(|line| line.strip_prefix(&prefix).map(str::to_string))
    }

    /// Waits until `n` clients are blocked in a command (held by `CLIENT
    /// PAUSE` or a blocking command).
    pub async fn wait_for_blocked_clients(&self, n: u32) {
        let wait = async {
            loop {
                let blocked = self.info_field("blocked_clients").await;
                if blocked.and_then(|b| b.parse::<u32>().ok()) >= Some(n) {
                    return;
                }
                sleep(Duration::from_millis(5)).await;
            }
        };
        timeout(START_GUARD, wait)
            .await
            .unwrap_or_else(|_| panic!("{n} clients never blocked"));
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    async fn spawn_and_wait(&mut self) -> io::Result<()> {
        let port = self.port.to_string();
        let mut command = Command::new(PROGRAM);
        command
            .args(["--bind", "127.0.0.1", "--port", &port, "--save", ""])
            .args(["--daemonize", "no", "--logfile"])
            .arg(self.dir.join("redis.log"))
            .arg("--dir")
            .arg(&self.dir);
        if self.durable {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        command.args(&self.args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "redis-server is not installed: install it (Debian/Ubuntu: \
                     `apt-get install redis-server`; macOS: `brew install redis`), \
                     or run `scripts/test`, which installs it",
                )
            } else {
                error
            }
        })?;

        // Ready once it answers PING; failed if it exits first.
        let deadline = Instant::now() + START_GUARD;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server exited at start ({status}) on port {}: {}",
                    self.port,
                    self.log()
                        .lines()
                        .rev()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" | ")
                )));
            }
            if let Ok(Ok(reply)) =
                timeout(Duration::from_secs(1), raw_command(self.addr(), &["PING"])).await
            {
                let answering = reply.starts_with("-LOADING") || reply.starts_with("-MASTERDOWN");
                if reply.starts_with("+PONG") || (self.answering_is_ready && answering) {
                    break;
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-server did not answer on port {}", self.port),
                ));
            }
            sleep(Duration::from_millis(5)).await;
        }
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends one RESP command on a new connection and reads one reply (a reply
/// ends with `\r\n`, and a bulk string's body with a second one).
async fn raw_command(addr: SocketAddr, args: &[&str]) -> io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buf[..n]);
        if is_complete(&reply) {
            return Ok(String::from_utf8_lossy(&reply).into_owned());
        }
    }
}

/// Whether `reply` holds one whole simple reply or bulk string.
fn is_complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if reply[0] != b'$' {
        return true;
    }
    let len: i64 = std::str::from_utf8(&reply[1..end])
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1);
    len < 0 || reply.len() >= end + 2 + len as usize + 2
}

/// A free port on 127.0.0.1, as the kernel hands them out.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A new, empty directory under the system's temporary directory.
fn temp_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "tower-redial-redis-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
