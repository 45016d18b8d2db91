//! What the machine offers: PostgreSQL's binaries, root or not, a free
//! port.

use std::fs;
use std::path::PathBuf;

/// Why no server can be started here, if none can: the binaries are
/// missing, or we are root and cannot switch to the `postgres` user.
pub fn unavailable() -> Option<String> {
    if bin_dir().is_none() {
        return Some(
            "PostgreSQL not found: no /usr/lib/postgresql/*/bin/initdb and no $PG_BIN_DIR \
             (install it with `apt-get install postgresql`; scripts/test does)"
                .to_string(),
        );
    }
    if is_root() {
        let has_user = fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .any(|line| line.starts_with("postgres:"));
        if !has_user {
            return Some(
                "running as root, which PostgreSQL refuses, and there is no `postgres` user \
                 to run it as"
                    .to_string(),
            );
        }
        if which("runuser").is_none() {
            return Some(
                "running as root, which PostgreSQL refuses, and `runuser` is missing".to_string(),
            );
        }
    }
    None
}

/// `$PG_BIN_DIR`, or the newest `/usr/lib/postgresql/*/bin` with `initdb`.
pub(super) fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

pub(super) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            Some(line.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false)
}

pub(super) fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.exists())
}

/// A port that was free a moment ago.
pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
