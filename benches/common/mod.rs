//! Shared by the bench binaries: the machine they ran on, and writing
//! their section of `docs/BENCHMARKS.md`.

#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};

/// The number of CPUs, the CPU model and the rustc version.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let rustc =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "rustc (unknown version)".into());
    format!("{cpus} CPUs ({model}), {rustc}")
}

/// The repository's root: `cargo bench` runs the benches from this crate's
/// own directory, two levels below it.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The path after `--write`, if given (`cargo bench` adds its own
/// `--bench`), relative to the repository's root.
pub fn write_arg() -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().position(|a| a == "--write").map(|i| {
        args.get(i + 1)
            .map(|path| repo_root().join(path))
            .expect("--write needs a path")
    })
}

/// Puts `section` between the `<!-- NAME:start -->`/`<!-- NAME:end -->` markers in `path`, appending them if missing.
pub fn write_section(path: &Path, name: &str, section: &str) -> io::Result<()> {
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let block = format!("{start}\n{}\n{end}", section.trim_end());
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let new = match (old.find(&start), old.find(&end)) {
        (Some(s), Some(e)) if s < e => {
            format!("{}{block}{}", &old[..s], &old[e + end.len()..])
        }
        _ if old.is_empty() => format!("{block}\n"),
        _ => {
            let sep = if old.ends_with("\n\n") {
                ""
            } else if old.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{old}{sep}{block}\n")
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, new)
}
