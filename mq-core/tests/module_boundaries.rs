//! The backends are thin adapters over the rules in mq-core's own modules: no backend imports
//! another, and the shared modules import neither. Checked on the source, so that a new `use`
//! across the boundary fails here rather than in review.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without its comments and string literals, line by line.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    for (n, line) in text.lines().enumerate() {
        let mut code = String::new();
        let mut chars = line.chars().peekable();
        let mut in_str = false;
        while let Some(c) = chars.next() {
            if in_block {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    in_block = false;
                }
                continue;
            }
            if in_str {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => in_str = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '/' if chars.peek() == Some(&'/') => break,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    in_block = true;
                }
                '"' => in_str = true,
                _ => code.push(c),
            }
        }
        out.push((n + 1, code));
    }
    out
}

/// Whether `code` names the module `name` as a path segment of this crate (`crate::name`,
/// `super::name`, `name::` or `name` in a `use` list), not the external crate `::name`.
fn names_module(code: &str, name: &str) -> bool {
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before = &code[..at];
        let after = &code[at + name.len()..];
        let word_start =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let word_end = after
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if !word_start || !word_end {
            continue;
        }
        // `::redis::cmd` is the Redis client crate, not a module of mq-core.
        if before.ends_with("::") && !before.ends_with("crate::") && !before.ends_with("super::") {
            let head = before.trim_end_matches("::");
            if head.is_empty() || head.ends_with(|c: char| !(c.is_alphanumeric() || c == '_')) {
                continue;
            }
        }
        let as_path = before.ends_with("crate::") || before.ends_with("super::");
        let in_use_list = code.trim_start().starts_with("use ") || before.contains("crate::{");
        if as_path || (in_use_list && (after.starts_with("::") || after.starts_with(['}', ',']))) {
            return true;
        }
    }
    false
}

/// The places in `files` that name any of `forbidden`.
fn crossings(files: &[PathBuf], forbidden: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap();
        for (n, code) in code_lines(&text) {
            for name in forbidden {
                if names_module(&code, name) {
                    out.push(format!(
                        "{}:{n}: uses `{name}`: {}",
                        file.display(),
                        code.trim()
                    ));
                }
            }
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_backend_imports_another() {
    let embedded = crossings(&sources(&src().join("embedded")), &["redis"]);
    let redis = crossings(&sources(&src().join("redis")), &["embedded"]);
    let both: Vec<_> = embedded.into_iter().chain(redis).collect();
    assert!(
        both.is_empty(),
        "a backend imports another; move the shared rule into mq-core's own modules:\n{}",
        both.join("\n")
    );
}

#[test]
fn shared_modules_import_no_backend() {
    // The crate root declares the backends; the conformance suite and the fuzzing entry
    // points drive them; everything else is backend-neutral.
    let exempt = ["lib.rs", "testkit", "fuzzing.rs"];
    let shared: Vec<PathBuf> = sources(&src())
        .into_iter()
        .filter(|p| {
            let rel = p.strip_prefix(src()).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            !["embedded", "redis"].contains(&first.as_ref()) && !exempt.contains(&first.as_ref())
        })
        .collect();
    assert!(shared.len() > 10, "found only {shared:?}");
    let found = crossings(&shared, &["embedded", "redis"]);
    assert!(
        found.is_empty(),
        "a shared module depends on a backend:\n{}",
        found.join("\n")
    );
}

/// The check itself: it sees imports across the boundary however they are written, and
/// leaves alone the Redis client crate, comments and strings.
#[test]
fn the_check_sees_crossings_and_nothing_else() {
    for crossing in [
        "use crate::embedded::system_topics::retry_topic;",
        "use crate::{embedded::x, message::M};",
        "use crate::{message::M, embedded};",
        "let t = crate::embedded::system_topics::dlq_topic(g);",
        "use super::super::embedded::store::Outgoing;",
    ] {
        assert!(names_module(crossing, "embedded"), "missed: {crossing}");
    }
    for fine in [
        "use ::redis::streams::StreamRangeReply;",
        "let c = ::redis::cmd(\"PING\");",
        "let embedded_count = 3;",
    ] {
        let code = &code_lines(fine)[0].1;
        assert!(
            !names_module(code, "redis") && !names_module(code, "embedded"),
            "flagged: {fine}"
        );
    }
    let commented = code_lines("let x = 1; // as crate::embedded does\n/* crate::redis */");
    assert!(commented
        .iter()
        .all(|(_, c)| !names_module(c, "embedded") && !names_module(c, "redis")));
}
