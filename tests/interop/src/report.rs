//! Shared by the bench binaries: the machine they ran on, and writing
//! their section of `docs/BENCHMARKS.md`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tower_redial::{Backoff, Jitter};

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

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
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

/// Whether a goal was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
}

impl From<bool> for Verdict {
    fn from(met: bool) -> Self {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
        })
    }
}

/// One row of the summary at the top of `docs/BENCHMARKS.md`.
#[derive(Clone, Debug)]
pub struct Goal {
    /// The point it belongs to, such as `"3"`.
    pub point: &'static str,
    pub goal: String,
    /// What was measured, and how.
    pub measure: String,
    /// The measured value.
    pub value: String,
    pub verdict: Verdict,
}

const GOAL_PREFIX: &str = "<!-- goal | ";
const GOAL_SUFFIX: &str = " -->";

/// Records `goals` in `name`'s section of `path` (as HTML comments, one a
/// line, invisible when rendered), then rebuilds the summary between
/// `<!-- summary:start -->` and `<!-- summary:end -->` from the goals of
/// every section. Call it after [`write_section`].
///
/// Any generator can feed the summary: a line
/// `<!-- goal | POINT | GOAL | MEASURE | VALUE | met -->` (or `missed`)
/// anywhere in the file is a row (the overhead step of `scripts/bench`
/// writes its lines itself).
pub fn write_goals(path: &Path, name: &str, goals: &[Goal]) -> io::Result<()> {
    let end = format!("<!-- {name}:end -->");
    let mut text = std::fs::read_to_string(path)?;
    let Some(at) = text.find(&end) else {
        return Err(io::Error::other(format!("no {end} in {}", path.display())));
    };
    let mut lines = String::new();
    for g in goals {
        let fields = [g.point, &g.goal, &g.measure, &g.value];
        assert!(
            fields
                .iter()
                .all(|f| !f.contains(" | ") && !f.contains("-->")),
            "a goal field holds \" | \" or \"-->\": {fields:?}"
        );
        let verdict = match g.verdict {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
        };
        lines.push_str(&format!(
            "{GOAL_PREFIX}{} | {} | {} | {} | {verdict}{GOAL_SUFFIX}\n",
            g.point, g.goal, g.measure, g.value
        ));
    }
    text.insert_str(at, &lines);
    std::fs::write(path, &text)?;
    write_summary(path)
}

/// Rebuilds the summary table from every goal line in `path`.
pub fn write_summary(path: &Path) -> io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut rows: Vec<(String, [String; 4])> = text
        .lines()
        .filter_map(|line| line.strip_prefix(GOAL_PREFIX)?.strip_suffix(GOAL_SUFFIX))
        .filter_map(|body| {
            let f: Vec<&str> = body.split(" | ").collect();
            let [point, goal, measure, value, verdict] = f[..] else {
                return None;
            };
            Some((
                point.to_string(),
                [goal.into(), measure.into(), value.into(), verdict.into()],
            ))
        })
        .collect();
    // By point; within a point, in the order the file has them.
    rows.sort_by_key(|(point, _)| point.parse::<u32>().unwrap_or(u32::MAX));
    let mut table = String::from(
        "## Summary\n\n\
         Every goal, the measure, and whether it is met. Each row comes from the \
         section below that measured it; regenerate everything with `scripts/bench`.\n\n\
         | point | goal | measure | measured | verdict |\n|---|---|---|---|---|\n",
    );
    for (point, [goal, measure, value, verdict]) in &rows {
        let verdict = match verdict.as_str() {
            "met" => "met".to_string(),
            "missed" => "**missed**".to_string(),
            other => other.to_string(),
        };
        table.push_str(&format!(
            "| {point} | {goal} | {measure} | {value} | {verdict} |\n"
        ));
    }
    let block = format!("<!-- summary:start -->\n{table}<!-- summary:end -->");
    let new = match (
        text.find("<!-- summary:start -->"),
        text.find("<!-- summary:end -->"),
    ) {
        (Some(s), Some(e)) if s < e => format!(
            "{}{block}{}",
            &text[..s],
            &text[e + "<!-- summary:end -->".len()..]
        ),
        // Before the first section.
        _ => match text.find("\n<!-- ") {
            Some(at) => format!("{}\n{block}\n{}", &text[..at], &text[at..]),
            None => format!("{text}\n{block}\n"),
        },
    };
    std::fs::write(path, new)
}

/// `x` with at most three decimals, and none it does not need.
pub fn num(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `100 ms` or `1.6 s`.
pub fn time(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{} s", num(d.as_secs_f64()))
    } else {
        format!("{} ms", num(d.as_secs_f64() * 1e3))
    }
}

/// A backoff's shape without its jitter: `100 ms × 1.1, cap 1.6 s`.
pub fn shape(backoff: &Backoff) -> String {
    format!(
        "{} × {}, cap {}",
        time(backoff.base()),
        num(backoff.raw_delay(2).as_secs_f64() / backoff.base().as_secs_f64()),
        time(backoff.cap())
    )
}

/// A jitter's name: `full`, `proportional ±25 %`.
pub fn jitter_name(jitter: Jitter) -> String {
    match jitter {
        Jitter::None => "none".into(),
        Jitter::Full => "full".into(),
        Jitter::Equal => "equal".into(),
        Jitter::Decorrelated => "decorrelated".into(),
        Jitter::Proportional(f) => format!("proportional ±{} %", num(f * 100.0)),
        other => format!("{other:?}"),
    }
}

/// A backoff with its jitter: `100 ms × 1.1, cap 1.6 s, jitter proportional ±25 %`.
pub fn describe(backoff: &Backoff) -> String {
    format!(
        "{}, jitter {}",
        shape(backoff),
        jitter_name(backoff.jitter_kind())
    )
}
