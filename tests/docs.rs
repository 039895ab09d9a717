//! Keeps the documentation from drifting away from the repository:
//!
//! - every citation of the native protocol, "PROTOCOL.md" then a space, the section sign and a
//!   section number `N` or `N.M` (in the sources, the tests, the bench, docs/ and README.md),
//!   names a heading that docs/PROTOCOL.md has (`## N. …` or `### N.M …`), and every such
//!   citation has a number (this file spells the prefix in pieces so as not to cite);
//! - no source cites the specification the protocol was first written from (it is not in the
//!   repository; cite docs/PROTOCOL.md instead);
//! - every repository path that docs/ARCHITECTURE.md and README.md name in backticks exists.
//!
//! Plain std, no I/O beyond reading the repository's files.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The repository's root (where Cargo.toml is).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The prefix of a protocol citation; a section number follows it.
const CITATION: &str = concat!("PROTOCOL.md ", "\u{a7}");

/// What a source must not cite (written in two pieces so that this file does not cite it).
const SPEC_CITATION: &str = concat!("SPEC ", "\u{a7}");

/// Directories whose `.rs` files are scanned.
const SOURCE_DIRS: [&str; 3] = ["src", "tests", "bench"];

/// Where a path named in backticks must start to be checked.
const PATH_PREFIXES: [&str; 8] = [
    "src/",
    "tests/",
    "bench/",
    "docs/",
    "tuning/",
    "proto/",
    "examples/",
    ".ci/",
];

/// Every file under `dir` (recursively) whose name ends with `extension`, sorted; build
/// output (`target`) and hidden directories are skipped.
fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let kind = entry
                .file_type()
                .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
            if kind.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    pending.push(path);
                }
            } else if name.ends_with(extension) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The `.rs` files of src/, tests/ and bench/.
fn source_files() -> Vec<PathBuf> {
    let root = root();
    SOURCE_DIRS
        .iter()
        .map(|dir| root.join(dir))
        .filter(|dir| dir.is_dir())
        .flat_map(|dir| files_with_extension(&dir, ".rs"))
        .collect()
}

/// The `.md` files of docs/, and README.md.
fn doc_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = files_with_extension(&root.join("docs"), ".md");
    files.push(root.join("README.md"));
    files
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `path` relative to the repository's root, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The section numbers docs/PROTOCOL.md has headings for: "5" for `## 5. …`, "5.6" for
/// `### 5.6 …`.
fn protocol_sections() -> BTreeSet<String> {
    let text = read(&root().join("docs/PROTOCOL.md"));
    let mut sections = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("### ") {
            // `### N.M title`
            if let Some((number, _)) = rest.split_once(' ') {
                if let Some((n, m)) = number.split_once('.') {
                    if is_number(n) && is_number(m) {
                        sections.insert(number.to_owned());
                    }
                }
            }
        } else if let Some(rest) = line.strip_prefix("## ") {
            // `## N. title`
            if let Some((number, _)) = rest.split_once(". ") {
                if is_number(number) {
                    sections.insert(number.to_owned());
                }
            }
        }
    }
    assert!(
        !sections.is_empty(),
        "docs/PROTOCOL.md has no numbered headings (`## N. title`, `### N.M title`): \
         has its heading style changed? Update protocol_sections() in tests/docs.rs"
    );
    sections
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The section numbers cited on one line: "5" or "5.6" after each citation prefix. A
/// prefix with no number after it is returned as an empty string (cited, but not by number).
fn citations(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(CITATION) {
        rest = &rest[at + CITATION.len()..];
        let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let mut number = major.clone();
        if !major.is_empty() {
            let after = &rest[major.len()..];
            if let Some(tail) = after.strip_prefix('.') {
                let minor: String = tail.chars().take_while(char::is_ascii_digit).collect();
                if !minor.is_empty() {
                    number = format!("{major}.{minor}");
                }
            }
        }
        found.push(number);
    }
    found
}

#[test]
fn protocol_citations_name_headings_that_exist() {
    let sections = protocol_sections();
    let mut files = source_files();
    files.extend(doc_files());
    let mut bad = Vec::new();
    let mut checked = 0;
    for file in &files {
        for (index, line) in read(file).lines().enumerate() {
            for number in citations(line) {
                checked += 1;
                if number.is_empty() {
                    bad.push(format!(
                        "{}:{}: `{CITATION}` with no section number after it: {}",
                        shown(file),
                        index + 1,
                        line.trim()
                    ));
                } else if !sections.contains(&number) {
                    let heading = if number.contains('.') {
                        format!("### {number} ")
                    } else {
                        format!("## {number}. ")
                    };
                    bad.push(format!(
                        "{}:{}: {CITATION}{number}: docs/PROTOCOL.md has no heading \
                         `{heading}…`: {}",
                        shown(file),
                        index + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {checked} citations of docs/PROTOCOL.md name no heading it has (its sections: \
         {}); cite an existing heading as `{CITATION}N` or `{CITATION}N.M`:\n{}",
        bad.len(),
        sections.iter().cloned().collect::<Vec<_>>().join(", "),
        bad.join("\n")
    );
}

#[test]
fn sources_do_not_cite_the_specification_outside_the_repository() {
    let mut bad = Vec::new();
    for file in source_files() {
        for (index, line) in read(&file).lines().enumerate() {
            if line.contains(SPEC_CITATION) {
                bad.push(format!("{}:{}: {}", shown(&file), index + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} line(s) cite `{SPEC_CITATION}`, a specification that is not in the repository; \
         cite the heading of docs/PROTOCOL.md that says the same, as `{CITATION}N`:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The inline code spans of a Markdown text outside fenced code blocks, with their line
/// numbers (1-based). Spans are taken within one line.
fn inline_code(text: &str) -> Vec<(usize, String)> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(open) = rest.find('`') {
            let after = &rest[open..];
            let ticks = after.bytes().take_while(|&b| b == b'`').count();
            let fence = &after[..ticks];
            let body = &after[ticks..];
            match body.find(fence) {
                Some(close) => {
                    spans.push((index + 1, body[..close].trim().to_owned()));
                    rest = &body[close + ticks..];
                }
                None => break,
            }
        }
    }
    spans
}

/// The repository path a code span names, if it looks like one: it starts with one of
/// [`PATH_PREFIXES`] and has no space or wildcard, placeholder (`<name>`) or ellipsis. A
/// `:line` suffix is dropped.
fn named_path(span: &str) -> Option<&str> {
    if !PATH_PREFIXES.iter().any(|p| span.starts_with(p)) {
        return None;
    }
    if span.contains(char::is_whitespace) || span.contains(['*', '<', '\u{2026}']) {
        return None;
    }
    let path = match span.split_once(':') {
        Some((path, _)) => path,
        None => span,
    };
    Some(path)
}

#[test]
fn paths_the_architecture_and_readme_name_exist() {
    let root = root();
    let mut bad = Vec::new();
    let mut checked = 0;
    for doc in ["docs/ARCHITECTURE.md", "README.md"] {
        let text = read(&root.join(doc));
        for (line, span) in inline_code(&text) {
            let Some(path) = named_path(&span) else {
                continue;
            };
            checked += 1;
            if !root.join(path).exists() {
                bad.push(format!("{doc}:{line}: `{span}`"));
            }
        }
    }
    assert!(
        checked > 0,
        "no paths found in backticks in docs/ARCHITECTURE.md or README.md: is inline_code() \
         in tests/docs.rs still reading them right?"
    );
    assert!(
        bad.is_empty(),
        "{} of {checked} repository paths named in backticks do not exist (moved or renamed? \
         update the doc; a placeholder should be written `<name>`):\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn the_checkers_read_what_they_should() {
    assert_eq!(
        citations(&format!(
            "see {CITATION}5.6, {CITATION}4) and {CITATION}12."
        )),
        ["5.6", "4", "12"]
    );
    assert_eq!(citations(&format!("{CITATION}x")), [""]);
    assert_eq!(
        inline_code("a `src/a.rs` and ``b `c` d``\n```\n`src/fenced.rs`\n```\n`tests/x.rs`"),
        [
            (1, "src/a.rs".to_owned()),
            (1, "b `c` d".to_owned()),
            (5, "tests/x.rs".to_owned()),
        ]
    );
    assert_eq!(named_path("src/server.rs:143"), Some("src/server.rs"));
    assert_eq!(named_path("tests/fuzz/corpus/<target>"), None);
    assert_eq!(named_path("bench/*.rs"), None);
    assert_eq!(named_path("examples/tls/make-certs.sh /tmp/certs"), None);
    assert_eq!(named_path("engine/shard.rs"), None);
}
