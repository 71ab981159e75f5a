//! The library's layers depend on each other in one direction (docs/internals.md, "Layers"): a lower layer never names
//! a higher one outside its doc comments. This test reads the sources and fails on any arrow pointing up, so
//! a `use crate::control::...` slipped into the datapath is caught by `make test`, not by a reviewer.

use std::{fs, path::Path};

/// Each layer and the modules of the crate it may use (besides itself).
const ALLOWED: &[(&str, &[&str])] = &[
    ("packet", &[]),
    ("handler", &["packet"]),
    ("sys", &[]),
    ("datapath", &["packet", "handler", "sys"]),
    ("steer", &["sys"]),
    ("in_kernel", &["sys", "steer"]),
    // The client side (XskPort): drives the datapath's socket from outside; no server layer names it.
    ("client", &["datapath"]),
    ("observe", &["packet", "handler", "sys", "datapath", "steer", "in_kernel"]),
    ("control", &["packet", "handler", "sys", "datapath", "steer", "in_kernel", "observe"]),
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate modules a line of code names, as `crate::NAME` or inside `use crate::{NAME, ...}`.
fn named_modules(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

#[test]
fn no_layer_names_a_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers: Vec<&str> = ALLOWED.iter().map(|(l, _)| *l).collect();
    let mut violations = Vec::new();
    for (layer, allowed) in ALLOWED {
        let mut files = Vec::new();
        sources(&root.join(layer), &mut files);
        assert!(!files.is_empty(), "layer {layer} has no sources under src/{layer}/");
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            // `use crate::{a, b::c}` spans lines: join each statement before looking.
            let code: Vec<&str> = text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")).collect();
            let code = code.join(" ");
            let mut braces = Vec::new();
            for stmt in code.split(';') {
                if let Some(at) = stmt.find("use crate::{") {
                    braces.extend(stmt[at + "use crate::{".len()..].split(',').filter_map(|item| {
                        let item = item.trim().trim_start_matches('{');
                        let name: String =
                            item.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                        (!name.is_empty()).then_some(name)
                    }));
                }
            }
            for name in named_modules(&code).into_iter().chain(braces) {
                if name != *layer && layers.contains(&name.as_str()) && !allowed.contains(&name.as_str()) {
                    violations.push(format!("{} (layer {layer}) uses crate::{name}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "arrows pointing up:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_both_forms_of_use() {
    assert_eq!(named_modules("use crate::control::config::Config"), vec!["control"]);
    assert_eq!(named_modules("let x = crate::observe::latency::human_ns(1)"), vec!["observe"]);
}
