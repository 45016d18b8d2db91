//! A real PostgreSQL server for the tests and the example: `initdb` and
//! `pg_ctl` in a fresh temporary directory, listening on `127.0.0.1` only,
//! on a free port, with `trust` authentication for the user `postgres`.
//!
//! The binaries are found in `$PG_BIN_DIR`, or else in the newest
//! `/usr/lib/postgresql/*/bin`. PostgreSQL refuses to run as root: as root,
//! the directory is handed to the `postgres` user and every command runs
//! through `runuser -u postgres`; as anyone else, the commands run as is.
//!
//! [`PgServer::restart_with`] and [`PgServer::try_restart`] restart it in
//! any of `pg_ctl`'s [`Shutdown`] modes. [`PgServer::start_with_tls`]
//! starts it with `ssl=on` and a certificate of the caller's, which
//! [`PgServer::replace_tls`] swaps for the next restart. Dropping a [`PgServer`] stops the
//! server (`pg_ctl stop -m immediate`) and removes its directory, also when
//! a test panics.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod host;

pub use host::unavailable;
use host::{bin_dir, free_port, is_root};

/// How long `pg_ctl` waits for the server to start or stop, unless told.
const PG_CTL_WAIT: Duration = Duration::from_secs(60);

/// A PostgreSQL server in a temporary directory, stopped and removed on drop.
pub struct PgServer {
    bin: PathBuf,
    /// Holds the data directory, the socket and the server log.
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// Whether commands run as the `postgres` user (we are root).
    as_postgres: bool,
    /// Whether the server runs with `ssl=on`, with the certificate and key
    /// in `root` (see [`PgServer::start_with_tls`]).
    tls: bool,
}

/// How `pg_ctl` stops the server: its `-m` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Refuses new connections (`57P03`) and waits for every session to end.
    Smart,
    /// Ends every session with `FATAL 57P01 admin_shutdown`, then shuts
    /// down cleanly. `pg_ctl`'s default.
    Fast,
    /// Kills the server, like a crash: sessions get a `WARNING 57P01` notice
    /// and are cut, and the next start runs crash recovery.
    Immediate,
}

impl Shutdown {
    fn mode(self) -> &'static str {
        match self {
            Shutdown::Smart => "smart",
            Shutdown::Fast => "fast",
            Shutdown::Immediate => "immediate",
        }
    }
}

impl PgServer {
    /// Runs `initdb` in a fresh temporary directory and starts the server.
    ///
    /// # Panics
    ///
    /// If PostgreSQL is missing (see [`unavailable`]) or fails to start;
    /// the message includes the command's output and the server log.
    pub async fn start() -> PgServer {
        Self::start_inner(None).await
    }

    /// Like [`start`](PgServer::start), with `ssl=on`: the server presents
    /// the PEM certificate (chain) in the file `cert`, with the PEM private
    /// key in the file `key`. Both are copied; the server still accepts
    /// clients without TLS.
    pub async fn start_with_tls(cert: &Path, key: &Path) -> PgServer {
        Self::start_inner(Some((cert, key))).await
    }

    /// Copies a new certificate and key in place of the server's own, for
    /// the next start or restart (a running server goes on with the old
    /// one).
    ///
    /// # Panics
    ///
    /// If the server was not started with
    /// [`start_with_tls`](PgServer::start_with_tls).
    pub async fn replace_tls(&self, cert: &Path, key: &Path) {
        assert!(self.tls, "replace_tls: the server was started without TLS");
        self.install_tls(cert, key).await;
    }

    /// Copies the certificate and key into the server's directory, as
    /// PostgreSQL wants them: owned by the server's user, the key readable
    /// by no one else.
    async fn install_tls(&self, cert: &Path, key: &Path) {
        use std::os::unix::fs::PermissionsExt;
        for (from, to) in [(cert, self.cert_file()), (key, self.key_file())] {
            fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600))
                .expect("chmod the certificate");
            if self.as_postgres {
                let output = tokio::process::Command::new("chown")
                    .args([OsStr::new("postgres:postgres"), to.as_os_str()])
                    .stdin(Stdio::null())
                    .output()
                    .await
                    .expect("run chown");
                self.check("chown", &output);
            }
        }
    }

    fn cert_file(&self) -> PathBuf {
        self.root.join("server.crt")
    }

    fn key_file(&self) -> PathBuf {
        self.root.join("server.key")
    }

    async fn start_inner(tls: Option<(&Path, &Path)>) -> PgServer {
        if let Some(why) = unavailable() {
            panic!("cannot start PostgreSQL: {why}");
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root = std::env::temp_dir().join(format!(
            "tower-redial-pg-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("create the server's temporary directory");
        // From here on, drop cleans up, even if a step below panics.
        let server = PgServer {
            bin: bin_dir().expect("checked above"),
            data: root.join("data"),
            log: root.join("server.log"),
            root,
            port: free_port(),
            as_postgres: is_root(),
            tls: tls.is_some(),
        };
        if server.as_postgres {
            let output = tokio::process::Command::new("chown")
                .args([OsStr::new("postgres:postgres"), server.root.as_os_str()])
                .stdin(Stdio::null())
                .output()
                .await
                .expect("run chown");
            server.check("chown", &output);
        }
        let data = server.data.clone();
        server
            .run(
                "initdb",
                [
                    OsStr::new("-A"),
                    OsStr::new("trust"),
                    OsStr::new("-U"),
                    OsStr::new("postgres"),
                    OsStr::new("-E"),
                    OsStr::new("UTF8"),
                    OsStr::new("--locale=C"),
                    OsStr::new("--no-sync"),
                    OsStr::new("--no-instructions"),
                    OsStr::new("-D"),
                    data.as_os_str(),
                ],
            )
            .await;
        if let Some((cert, key)) = tls {
            server.install_tls(cert, key).await;
        }
        server.start_again().await;
        server
    }

    /// The port the server listens on, on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection string of the server, as `postgres`, over TCP: parse
    /// it into a `tokio_postgres::Config` (this crate does not depend on
    /// tokio-postgres, so that what builds it stays light).
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres application_name=tower-redial-test",
            self.port
        )
    }

    /// `pg_ctl restart -m immediate`: kills the server without a clean
    /// shutdown (every connection is cut) and starts it again, which runs
    /// crash recovery. Returns once it accepts connections.
    pub async fn restart(&self) {
        self.restart_with(Shutdown::Immediate).await;
    }

    /// `pg_ctl restart -m <mode>`: stops the server as `mode` says and
    /// starts it again. Returns once it accepts connections.
    ///
    /// # Panics
    ///
    /// If `pg_ctl` fails, such as a smart shutdown that sessions outlast
    /// for 60 s; [`try_restart`](PgServer::try_restart) returns that.
    pub async fn restart_with(&self, mode: Shutdown) {
        let output = self.pg_ctl_output("restart", PG_CTL_WAIT, mode).await;
        self.check("pg_ctl restart", &output);
    }

    /// `pg_ctl restart -m <mode> -t <wait>`: `Ok` once the server accepts
    /// connections again, or `Err` with `pg_ctl`'s output if it gave up:
    /// a smart shutdown that sessions outlast for `wait` fails with "server
    /// does not shut down", and leaves the server refusing new connections
    /// until its last session ends, when it stops for good.
    pub async fn try_restart(&self, mode: Shutdown, wait: Duration) -> Result<(), String> {
        let output = self.pg_ctl_output("restart", wait, mode).await;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl restart -m {} failed ({}):\n{}{}",
                mode.mode(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// `pg_ctl stop -m immediate`: kills the server; returns once it is gone.
    pub async fn stop(&self) {
        let output = self
            .pg_ctl_output("stop", PG_CTL_WAIT, Shutdown::Immediate)
            .await;
        self.check("pg_ctl stop", &output);
    }

    /// `pg_ctl start`: starts the (stopped) server; returns once it accepts
    /// connections.
    pub async fn start_again(&self) {
        let output = self.pg_ctl_args("start", PG_CTL_WAIT, &[]).await;
        self.check("pg_ctl start", &output);
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `pg_ctl <action> -m <mode>`, waiting up to `wait` for it.
    async fn pg_ctl_output(&self, action: &str, wait: Duration, mode: Shutdown) -> Output {
        self.pg_ctl_args(action, wait, &["-m", mode.mode()]).await
    }

    /// Runs `pg_ctl <action> -w -t <wait> ...`, and returns its output
    /// whether it succeeded or not.
    async fn pg_ctl_args(&self, action: &str, wait: Duration, extra: &[&str]) -> Output {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.root.display()
        );
        if self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                self.cert_file().display(),
                self.key_file().display()
            ));
        }
        // Whole seconds, at least one: `-t 0` would not wait at all.
        let wait = wait.as_secs().max(1).to_string();
        let mut args: Vec<&OsStr> = vec![
            action.as_ref(),
            OsStr::new("-w"),
            OsStr::new("-t"),
            OsStr::new(&wait),
            OsStr::new("-D"),
            self.data.as_os_str(),
        ];
        if action != "stop" {
            // The server's output goes to a file: were it left on pg_ctl's
            // stdout, the server would hold our pipe open for ever.
            args.extend([OsStr::new("-l"), self.log.as_os_str()]);
            args.extend([OsStr::new("-o"), OsStr::new(&options)]);
        }
        args.extend(extra.iter().map(OsStr::new));
        self.command("pg_ctl", args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("run pg_ctl {action}: {e}"))
    }

    /// Runs one of the PostgreSQL binaries, as `postgres` if we are root.
    async fn run<'a>(&self, program: &str, args: impl IntoIterator<Item = &'a OsStr>) {
        let output = self
            .command(program, args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        self.check(program, &output);
    }

    fn command<'a>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = &'a OsStr>,
    ) -> tokio::process::Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = tokio::process::Command::new("runuser");
            command.args([
                OsStr::new("-u"),
                OsStr::new("postgres"),
                OsStr::new("--"),
                path.as_os_str(),
            ]);
            command
        } else {
            tokio::process::Command::new(path)
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .current_dir(&self.root);
        command
    }

    fn check(&self, what: &str, output: &Output) {
        assert!(
            output.status.success(),
            "{what} failed ({}):\n{}{}\n--- server log ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.server_log()
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let path = self.bin.join("pg_ctl");
            let mut command = if self.as_postgres {
                let mut command = std::process::Command::new("runuser");
                command.args([
                    OsStr::new("-u"),
                    OsStr::new("postgres"),
                    OsStr::new("--"),
                    path.as_os_str(),
                ]);
                command
            } else {
                std::process::Command::new(path)
            };
            let _ = command
                .args([
                    OsStr::new("stop"),
                    OsStr::new("-w"),
                    OsStr::new("-m"),
                    OsStr::new("immediate"),
                ])
                .args([OsStr::new("-D"), self.data.as_os_str()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .current_dir(&self.root)
                .status();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}
