//! `docs/configuration.md` and the settings agree: every key of its tables is one the `mq:`
//! section accepts and every accepted key is in a table; a single-value default in the table
//! loads and equals the code's default; and every full `mq.` key either document names is one
//! that exists.
//!
//! The accepted keys come from the settings structs themselves: a probing deserializer walks
//! `MqSettings` one path at a time and records the fields serde asks for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use mq_starter::config::{Configuration, MqSettings};
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;

/// How a listener's name is written in the document's keys.
const NAME: &str = "<name>";

// --- the keys the settings accept ------------------------------------------------------------

/// What the probe found at the end of its path.
#[derive(Debug, Clone, PartialEq)]
enum Found {
    Struct(Vec<&'static str>),
    Map,
    Leaf,
}

#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

/// Follows `path` into the value being deserialized, then records what is there and stops.
struct Probe<'a> {
    path: &'a [String],
    found: &'a RefCell<Option<Found>>,
}

impl<'a> Probe<'a> {
    fn at_end(&self) -> bool {
        self.path.is_empty()
    }

    fn stop(&self, found: Found) -> Stop {
        *self.found.borrow_mut() = Some(found);
        Stop("probe stopped".into())
    }

    fn next(&self) -> OneEntry<'a> {
        OneEntry {
            key: Some(self.path[0].clone()),
            value: Probe {
                path: &self.path[1..],
                found: self.found,
            },
        }
    }
}

/// A map of one entry: the next segment of the path, and a probe for the rest.
struct OneEntry<'a> {
    key: Option<String>,
    value: Probe<'a>,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        match self.key.take() {
            Some(k) => seed.deserialize(k.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        seed.deserialize(Probe {
            path: self.value.path,
            found: self.value.found,
        })
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        if self.at_end() {
            Err(self.stop(Found::Leaf))
        } else {
            Err(Stop(format!("{:?} goes past a value", self.path)))
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        if self.at_end() {
            return Err(self.stop(Found::Struct(fields.to_vec())));
        }
        visitor.visit_map(self.next())
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.at_end() {
            return Err(self.stop(Found::Map));
        }
        visitor.visit_map(self.next())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct enum identifier ignored_any
    }
}

/// What lies at `path` inside `MqSettings`.
fn probe(path: &[String]) -> Found {
    let found = RefCell::new(None);
    let result = MqSettings::deserialize(Probe {
        path,
        found: &found,
    });
    match (found.into_inner(), result) {
        (Some(f), _) => f,
        (None, Err(e)) => panic!("probing {path:?}: {e}"),
        (None, Ok(_)) => panic!("probing {path:?} found nothing"),
    }
}

/// Every key `mq:` accepts, as `mq.broker.data-dir` and `mq.listeners.<name>.enabled`.
fn accepted_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut paths: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = paths.pop() {
        match probe(&path) {
            Found::Struct(fields) => {
                for field in fields {
                    let mut next = path.clone();
                    next.push(field.to_owned());
                    paths.push(next);
                }
            }
            Found::Map => {
                let mut next = path.clone();
                next.push(NAME.to_owned());
                paths.push(next);
            }
            Found::Leaf => {
                keys.insert(format!("mq.{}", path.join(".")));
            }
        }
    }
    keys
}

// --- the keys the documents name -------------------------------------------------------------

fn doc(name: &str) -> String {
    let path = format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of the first code span of `cell`, if the cell is exactly one code span.
fn only_code(cell: &str) -> Option<&str> {
    let inner = cell.trim().strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

/// A row of a key table: the full key and its default cell.
struct Row {
    key: String,
    default: String,
}

/// The rows of the key tables of `docs/configuration.md`: a `## `mq.x`` heading, then a
/// table whose first column is `key`.
fn documented_rows() -> Vec<Row> {
    let text = doc("configuration.md");
    let mut rows = Vec::new();
    let mut section: Option<String> = None;
    let mut in_table = false;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading
                .split('`')
                .nth(1)
                .filter(|s| *s == "mq" || s.starts_with("mq."))
                .map(str::to_owned);
            in_table = false;
            continue;
        }
        let Some(prefix) = &section else { continue };
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        if cells.first() == Some(&"key") {
            in_table = true;
            continue;
        }
        if !in_table || cells[0].starts_with("---") {
            continue;
        }
        let key = only_code(cells[0])
            .unwrap_or_else(|| panic!("a key cell that is not one code span: {line}"));
        rows.push(Row {
            key: format!("{prefix}.{key}"),
            default: cells.get(1).copied().unwrap_or_default().to_owned(),
        });
    }
    rows
}

/// Every `mq.`-key written as a code span in `name` (with or without a value after `: `).
fn named_keys(name: &str) -> BTreeSet<String> {
    let text = doc(name);
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|span| {
            let key = span.split(": ").next()?.trim();
            let plausible = key.starts_with("mq.")
                && key.len() > 3
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_<>".contains(c));
            plausible.then(|| key.to_owned())
        })
        .collect()
}

/// Whether `key` is one of `accepted` or a section of them (`mq.broker.redis`).
fn exists(key: &str, accepted: &BTreeSet<String>) -> bool {
    let key = listener_form(key);
    accepted.contains(&key) || accepted.iter().any(|k| k.starts_with(&format!("{key}.")))
}

/// `mq.listeners.on_paid.x` as the tables write it, `mq.listeners.<name>.x`.
fn listener_form(key: &str) -> String {
    match key.strip_prefix("mq.listeners.") {
        Some(rest) if !rest.starts_with(NAME) => match rest.split_once('.') {
            Some((_, tail)) => format!("mq.listeners.{NAME}.{tail}"),
            None => format!("mq.listeners.{NAME}"),
        },
        _ => key.to_owned(),
    }
}

// --- the tests -------------------------------------------------------------------------------

#[test]
fn the_key_tables_and_the_settings_list_the_same_keys() {
    let accepted = accepted_keys();
    assert!(accepted.contains("mq.broker.data-dir"), "{accepted:?}");
    assert!(
        accepted.contains("mq.listeners.<name>.enabled"),
        "{accepted:?}"
    );
    let rows = documented_rows();
    let documented: BTreeSet<String> = rows.iter().map(|r| r.key.clone()).collect();
    assert_eq!(rows.len(), documented.len(), "a key is documented twice");
    let undocumented: Vec<&String> = accepted.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md and the settings differ:\n  accepted but not documented: {undocumented:?}\n  documented but not accepted: {unknown:?}"
    );
}

/// Loads `mq:` with `key: value` (YAML) set.
fn load_with(key: &str, value: &str) -> Result<MqSettings, String> {
    let dir = tempfile::tempdir().unwrap();
    let segments: Vec<&str> = key.split('.').collect();
    let mut yaml = String::new();
    for (depth, segment) in segments.iter().enumerate() {
        yaml.push_str(&"  ".repeat(depth));
        yaml.push_str(segment);
        yaml.push(':');
        yaml.push(if depth + 1 == segments.len() {
            ' '
        } else {
            '\n'
        });
    }
    yaml.push_str(&format!("'{}'\n", value.replace('\'', "''")));
    std::fs::write(dir.path().join("application.yaml"), &yaml).unwrap();
    let config = Configuration::load_with_env(dir.path(), &[], &[]).map_err(|e| e.to_string())?;
    config.mq().map_err(|e| e.to_string())
}

#[test]
fn documented_defaults_load_and_are_the_defaults() {
    // Defaults the code keeps as "not set" and resolves later, as the table explains.
    let resolved_later = ["mq.consumer.consume-timestamp"];
    let defaults = format!("{:?}", MqSettings::default());
    let mut problems = Vec::new();
    for row in documented_rows() {
        // A default that names another key (`mq.consumer.consume-from`) is not a value.
        let Some(value) = only_code(&row.default).filter(|v| !v.starts_with("mq.")) else {
            continue;
        };
        match load_with(&row.key, value) {
            Err(e) => problems.push(format!("{} = {value:?} does not load: {e}", row.key)),
            Ok(settings) if !resolved_later.contains(&row.key.as_str()) => {
                if format!("{settings:?}") != defaults {
                    problems.push(format!("{} = {value:?} is not the default", row.key));
                }
            }
            Ok(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_mq_key_the_documents_name_exists() {
    let accepted = accepted_keys();
    let mut problems = Vec::new();
    for name in ["configuration.md", "redis-backend.md"] {
        for key in named_keys(name) {
            if !exists(&key, &accepted) {
                problems.push(format!("docs/{name}: `{key}`"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "keys the loader does not accept:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_yaml_examples_of_the_documents_load() {
    for name in ["configuration.md", "redis-backend.md"] {
        let text = doc(name);
        let blocks: Vec<&str> = text
            .split("```yaml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .collect();
        assert!(!blocks.is_empty(), "docs/{name} has no YAML example");
        for block in blocks {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("application.yaml"), block).unwrap();
            let loaded = Configuration::load_with_env(dir.path(), &[], &[]).and_then(|c| c.mq());
            assert!(loaded.is_ok(), "docs/{name}:\n{block}\n{:?}", loaded.err());
        }
    }
}
