//! The import graph of `src/` is one-way, as `ARCHITECTURE.md` documents:
//! each module imports only from modules on a lower layer.

use std::collections::BTreeMap;
use std::path::Path;

/// The layers of `ARCHITECTURE.md`, lowest first.
const LAYERS: &[&[&str]] = &[
    &[
        "timer", "redact", "budget", "close", "driver", "boxed", "failed", "sync",
    ],
    &["error"],
    &["backoff", "classify", "panic", "state"],
    &["health", "policy", "failfast"],
    &["connect", "tls"],
    &["lane"],
    &["reconnect"],
    &["retry"],
    &["client"],
    &["layer"],
    &["bind", "balance", "dial", "probe"],
    &["make"],
    &["hyper", "redis", "postgres"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every module of `src/`, with the `crate::` modules its code names.
fn imports() -> BTreeMap<String, Vec<(String, String)>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        if relative == Path::new("lib.rs") || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        // Test modules may reach anywhere.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let entry: &mut Vec<(String, String)> = graph.entry(module.clone()).or_default();
        for line in code.lines() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let before = line[..at].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let target: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !target.is_empty() && target != module {
                    entry.push((target, line.trim().to_string()));
                }
            }
        }
    }
    graph
}

#[test]
fn every_module_imports_only_from_lower_layers() {
    let mut wrong = Vec::new();
    for (module, targets) in imports() {
        let Some(layer) = layer_of(&module) else {
            wrong.push(format!("`{module}` is in no layer of ARCHITECTURE.md"));
            continue;
        };
        for (target, line) in targets {
            match layer_of(&target) {
                Some(below) if below < layer => {}
                _ => wrong.push(format!(
                    "`{module}` (layer {layer}) uses `{target}`: {line}"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_layers_match_the_documented_table() {
    let doc = include_str!("../../ARCHITECTURE.md");
    for (n, layer) in LAYERS.iter().enumerate() {
        let row = doc
            .lines()
            .find(|line| line.starts_with(&format!("| {n} |")))
            .unwrap_or_else(|| panic!("no row for layer {n}"));
        for module in *layer {
            assert!(
                row.contains(&format!("`{module}`")),
                "layer {n}: `{module}` missing in {row}"
            );
        }
    }
}
