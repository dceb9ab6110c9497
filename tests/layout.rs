//! The source layout keeps its promises: no module cycle in `src/`, the bottom layer imports
//! nothing of ours above it, and no file grows past the size a reader can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Modules that are plain values or helpers: they may use each other only as listed.
const BOTTOM: [(&str, &[&str]); 9] = [
    ("ids", &[]),
    ("priority", &[]),
    ("unwind", &[]),
    ("config", &[]),
    ("report", &["ids"]),
    ("context", &["ids"]),
    ("error", &["config"]),
    ("response", &["error", "ids"]),
    ("metrics", &["ids", "priority", "report"]),
];

/// The largest source file, in lines.
const MAX_LINES: usize = 620;

/// Every file under `src/`.
fn source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![Path::new("src").to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Top-level module → the top-level modules it names through `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in source_files() {
        let rel = path
            .strip_prefix("src")
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let top = rel.split(['/', '.']).next().unwrap().to_owned();
        if top == "lib" {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let deps = g.entry(top.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for part in line.split("crate::").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(m) = stack.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if d == to {
                return true;
            }
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    false
}

#[test]
fn src_has_no_module_cycle() {
    let g = graph();
    for (m, deps) in &g {
        for d in deps {
            assert!(!reaches(&g, d, m), "module cycle: {m} -> {d} -> … -> {m}");
        }
    }
}

#[test]
fn the_bottom_layer_imports_nothing_above_it() {
    let g = graph();
    for (m, allowed) in BOTTOM {
        let deps = g.get(m).unwrap_or_else(|| panic!("no module {m}"));
        for d in deps {
            assert!(
                allowed.contains(&d.as_str()),
                "bottom module {m} imports {d}"
            );
        }
    }
}

#[test]
fn no_source_file_is_too_long() {
    for path in source_files() {
        let lines = fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= MAX_LINES, "{} has {lines} lines", path.display());
    }
}
