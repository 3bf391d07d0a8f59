//! Every metric name the hub exposes is spelled once, in `hub_engine::metrics` (with its HELP
//! text): product code elsewhere registers series through that module's functions and
//! constants, never with a name literal of its own. Tests may spell names (they assert on the
//! rendered text).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The families' prefixes: a string literal starting with one of these is a metric name.
const PREFIXES: [&str; 6] = [
    "\"hub_consumer_",
    "\"hub_backend_",
    "\"hub_dispatcher_",
    "\"hub_zeromq_",
    "\"hub_amqp_",
    "\"hub_exec_",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // Test modules kept in their own files (`dispatcher/tests/...`).
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// `file:line: text` for each line of product code (before any `#[cfg(test)]`, outside
/// comments) that holds a metric-name literal.
fn literals(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .filter(|(_, l)| PREFIXES.iter().any(|p| l.contains(p)))
        .map(|(i, l)| format!("{}:{}: {}", path.display(), i + 1, l.trim()))
        .collect()
}

#[test]
fn metric_names_are_spelled_only_in_the_metrics_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let home = root.join("crates/hub-engine/src/metrics.rs");
    let mut files = Vec::new();
    for dir in ["crates", "examples"] {
        for member in std::fs::read_dir(root.join(dir)).unwrap() {
            let src = member.unwrap().path().join("src");
            if src.is_dir() {
                rust_files(&src, &mut files);
            }
        }
    }
    rust_files(&root.join("hub/src"), &mut files);
    assert!(files.len() > 20, "found the sources: {files:?}");

    // The scan sees names where they are: the metrics module holds them all.
    let defined = literals(&home);
    assert!(defined.len() >= 20, "{defined:#?}");

    let elsewhere: Vec<String> = files
        .iter()
        .filter(|f| f.canonicalize().unwrap() != home.canonicalize().unwrap())
        .flat_map(|f| literals(f))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "metric names belong in hub_engine::metrics (a constant and its HELP text), not:\n{}",
        elsewhere.join("\n")
    );
}
