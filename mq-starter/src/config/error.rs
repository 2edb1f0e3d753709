//! Configuration errors: each names the file (or the environment) and the key.

use std::path::PathBuf;

/// A configuration problem. Each names the file (or the environment) and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file exists but cannot be read or parsed.
    #[error("cannot read {file}: {message}")]
    Read {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Both spellings of one file exist (`application.yaml` and `application.yml`): which
    /// one wins would be a guess.
    #[error("both {first} and {second} exist: keep one of them")]
    DuplicateFile {
        /// The `.yaml` file.
        first: PathBuf,
        /// The `.yml` file.
        second: PathBuf,
    },
    /// A key under `mq:` that mq does not know.
    #[error("{origin}: unknown key `{key}`{hint}")]
    UnknownKey {
        /// The file that sets it, or `environment`.
        origin: String,
        /// The full key.
        key: String,
        /// The keys allowed there.
        hint: String,
    },
    /// A value that does not fit its key.
    #[error("{origin}: bad value for `{key}`: {message}")]
    BadValue {
        /// The file that sets it, or `environment`.
        origin: String,
        /// The full key.
        key: String,
        /// Why it does not fit.
        message: String,
    },
    /// A value that selects a part of mq-starter this build does not contain (a backend
    /// behind a cargo feature that is off).
    #[error(
        "{origin}: `{key}: {value}` needs the cargo feature `{feature}` of mq-starter, which is not compiled in (enable `mq-starter/{feature}`)"
    )]
    FeatureNotCompiled {
        /// The file that sets it, or `environment`.
        origin: String,
        /// The full key.
        key: String,
        /// The value that needs the feature.
        value: String,
        /// The cargo feature.
        feature: &'static str,
    },
    /// `mq.listeners.<name>` names no registered listener.
    #[error("{origin}: `{key}` names no listener; the listeners are: {}", list(.known))]
    UnknownListener {
        /// The file that sets it, or `environment`.
        origin: String,
        /// The full key, `mq.listeners.<name>`.
        key: String,
        /// The names of the registered listeners (handler function names), sorted.
        known: Vec<String>,
    },
    /// A `${key}` placeholder without a value and without a default.
    #[error("placeholder `{placeholder}` in {context}: key `{key}` is not set and has no default")]
    MissingPlaceholder {
        /// The placeholder as written.
        placeholder: String,
        /// Where it was found.
        context: String,
        /// The key it names.
        key: String,
    },
    /// A placeholder that is not closed, or names no key.
    #[error("malformed placeholder in {context}: {text:?}")]
    MalformedPlaceholder {
        /// Where it was found.
        context: String,
        /// The text.
        text: String,
    },
    /// Placeholders whose values lead back to themselves.
    #[error("placeholders in {context} refer to each other in a circle: {}", .chain.join(" -> "))]
    PlaceholderCycle {
        /// Where the first was found.
        context: String,
        /// The keys, the first repeated at the end.
        chain: Vec<String>,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}
