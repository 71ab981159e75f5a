//! The README and docs/ link to each other, to files of the repository and to headings: a link that points
//! nowhere after a rename or a rewrite fails here, not in a reader's browser.
//!
//! Checked: every Markdown link `[text](target)` whose target is relative (not `http…`, `mailto:`), in
//! README.md, docs/*.md, bench/README.md and deploy/*.md: the file must exist (relative to the linking
//! file), and a `#fragment` must name a heading of the target file, slugged as GitHub does (lowercase, spaces
//! to `-`, punctuation other than `-` and `_` dropped).

use std::{
    fs,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md"), root.join("bench/README.md")];
    for dir in ["docs", "deploy"] {
        let mut found: Vec<PathBuf> = fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// `(line number, target)` of each inline link outside code blocks and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code_block = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
            continue;
        }
        if in_code_block {
            continue;
        }
        // Drop code spans: a `[x](y)` inside backticks is code, not a link.
        let mut plain = String::new();
        let mut in_span = false;
        for c in line.chars() {
            if c == '`' {
                in_span = !in_span;
            } else if !in_span {
                plain.push(c);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading text.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
            continue;
        }
        if !in_code_block && line.starts_with('#') {
            out.push(slug(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn relative_links_point_at_files_and_headings_that_exist() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap();
        for (line, target) in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() { doc.clone() } else { dir.join(file) };
            let name = format!("{}:{line}: ({target})", doc.strip_prefix(root()).unwrap_or(&doc).display());
            if !path.exists() {
                broken.push(format!("{name}: no such file {}", path.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                let target_text =
                    if path.is_file() { fs::read_to_string(&path).unwrap_or_default() } else { String::new() };
                if !anchors(&target_text).iter().any(|a| a == fragment) {
                    broken.push(format!("{name}: no heading #{fragment} in {}", path.display()));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} relative links found: is the link parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_parser_finds_links_and_skips_code() {
    let text = "see [a](docs/a.md) and `[b](not.md)`\n```\n[c](no.md)\n```\n[d](x.md#y-z) [e](https://e)";
    let found: Vec<String> = links(text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(found, ["docs/a.md", "x.md#y-z", "https://e"]);
    assert_eq!(slug(" Budgets: what one request may cause"), "budgets-what-one-request-may-cause");
    assert_eq!(slug("Sending, timers and metadata"), "sending-timers-and-metadata");
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md").exists());
}
