//! The module graph of the `strait` crate has no cycles: every `crate::` path in a top-level
//! module's code (tests aside) names a module of a lower layer. The layers, bottom first, are
//! the data flow of `docs/design.md`: plain data, then what is computed from it, then the data
//! path, then what drives them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom first; a module may use any module listed before it, never one after it.
const LAYERS: &[&str] = &[
    "errors",
    "pki",
    "config",
    "model",
    "identity",
    "mesh",
    "policy",
    "flows",
    "dns",
    "metrics",
    "admin",
    "proxy",
    "compile",
    "datapath",
    "sources",
    "lab",
    "clustermesh",
    "ui",
    "agent",
    "cli",
];

/// `crate::NAME` paths in `src` outside comments and `#[cfg(test)]` items.
fn crate_paths(src: &str) -> BTreeSet<String> {
    let code = src.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        // `use crate::{a, b}` lists.
        if let Some(i) = line.find("crate::{") {
            for part in line[i + "crate::{".len()..].split([',', '}']) {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn visit(dir: &Path, top: &str, edges: &mut BTreeMap<String, BTreeSet<String>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "tests" {
                visit(&path, top, edges);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            let src = std::fs::read_to_string(&path).unwrap();
            for used in crate_paths(&src) {
                if used != top {
                    edges.entry(top.to_string()).or_default().insert(used);
                }
            }
        }
    }
}

#[test]
fn modules_only_use_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut tops = BTreeSet::new();
    let mut edges = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        tops.insert(name.clone());
        if path.is_dir() {
            visit(&path, &name, &mut edges);
        } else {
            let text = std::fs::read_to_string(&path).unwrap();
            let used: BTreeSet<String> = crate_paths(&text)
                .into_iter()
                .filter(|u| *u != name)
                .collect();
            edges.insert(name, used);
        }
    }
    let unplaced: Vec<&String> = tops
        .iter()
        .filter(|t| !LAYERS.contains(&t.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer: {unplaced:?}; add them to LAYERS"
    );
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = Vec::new();
    for (from, used) in &edges {
        for to in used {
            if let (Some(a), Some(b)) = (rank(from), rank(to))
                && b >= a
            {
                upward.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "module edges pointing up (or sideways) the layers {LAYERS:?}:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_checker_sees_edges() {
    let src = "use crate::{model, policy::Policy};\n// crate::cli in a comment\nfn f() { crate::flows::x(); }\n#[cfg(test)]\nmod tests { use crate::lab; }";
    assert_eq!(
        crate_paths(src),
        ["flows", "model", "policy"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
