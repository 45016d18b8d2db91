//! `docs/recovery.svg`: every trial's recovery time, one strip per system,
//! grouped by scenario, on a log scale.

use std::fmt::Write as _;
use std::time::Duration;

/// One strip: a system's recovery times, one per trial.
pub struct Strip {
    pub label: String,
    pub recoveries: Vec<Duration>,
}

/// A scenario's title and its strips.
pub struct Group {
    pub title: String,
    pub strips: Vec<Strip>,
}

const COLORS: [&str; 3] = ["#1f77b4", "#2ca02c", "#d62728"];
/// The x axis, in milliseconds: 0.1 ms to 1 s.
const LOW_MS: f64 = 0.1;
const DECADES: f64 = 4.0;

pub fn svg(groups: &[Group]) -> String {
    let strips: usize = groups.iter().map(|g| g.strips.len()).sum();
    let (left, right, top, strip_h, group_gap) = (440.0, 30.0, 50.0, 26.0, 34.0);
    let w = 1100.0;
    let pw = w - left - right;
    let ph = strip_h * strips as f64 + group_gap * groups.len() as f64;
    let h = top + ph + 60.0;
    let x = |ms: f64| left + pw * (ms.max(LOW_MS) / LOW_MS).log10() / DECADES;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">Recovery: from the server's return (or the reset) to the first success, each trial a dot, the median a bar</text>"#,
        w / 2.0
    );
    for d in 0..=DECADES as i32 {
        let ms = LOW_MS * 10f64.powi(d);
        let xx = x(ms);
        let label = if ms < 1.0 {
            format!("{ms} ms")
        } else {
            format!("{ms:.0} ms")
        };
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            top + ph,
            top + ph + 18.0
        );
    }
    let mut y = top;
    for group in groups {
        y += group_gap;
        let _ = writeln!(
            o,
            r#"<text x="10" y="{:.1}" font-weight="bold">{}</text>"#,
            y - 10.0,
            escape(&group.title)
        );
        for (i, strip) in group.strips.iter().enumerate() {
            let mid = y + strip_h / 2.0;
            let color = COLORS[i % COLORS.len()];
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 10.0,
                mid + 4.0,
                escape(&strip.label)
            );
            for r in &strip.recoveries {
                let _ = writeln!(
                    o,
                    r#"<circle cx="{:.1}" cy="{mid:.1}" r="4" fill="{color}" fill-opacity="0.5"/>"#,
                    x(r.as_secs_f64() * 1e3)
                );
            }
            let mut sorted = strip.recoveries.clone();
            sorted.sort();
            if let Some(median) = sorted.get(sorted.len().saturating_sub(1) / 2) {
                let xx = x(median.as_secs_f64() * 1e3);
                let _ = writeln!(
                    o,
                    r#"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="black" stroke-width="2"/>"#,
                    mid - 9.0,
                    mid + 9.0
                );
            }
            y += strip_h;
        }
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{:.1}" text-anchor="middle">recovery time (log scale)</text>"#,
        left + pw / 2.0,
        top + ph + 42.0
    );
    let _ = writeln!(o, "</svg>");
    o
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "")
}
