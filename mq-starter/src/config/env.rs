//! Which key an `MQ__` environment variable sets.
//!
//! `MQ__` + the path of the key below `mq.`, `__` between segments: `MQ__BROKER__DATA_DIR`
//! sets `mq.broker.data-dir`. A first segment that is not one of `mq:`'s own sections is an
//! application key, from the top: `MQ__SHOP__ORDER__CANCEL_AFTER` sets
//! `shop.order.cancel-after`. The doubled form `MQ__MQ__BROKER__DATA_DIR` of earlier releases
//! still sets `mq.broker.data-dir`, with a deprecation warning.

/// Prefix of environment variables that override keys.
pub(crate) const ENV_PREFIX: &str = "MQ__";

/// The top-level keys of `mq:` (the fields of `MqSettings`): `MQ__<one of these>__...` sets a
/// key under `mq.`. An application section of one of these names cannot be set from the
/// environment.
pub(crate) const MQ_SECTIONS: &[&str] = &[
    "broker",
    "producer",
    "consumer",
    "idempotency",
    "listeners",
    "trace",
    "admin",
    "shutdown-timeout",
    "instance-name",
];

/// The key an environment variable sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvKey {
    /// The key, spelt as the files spell it (`shop.order.cancel-after`).
    pub key: String,
    /// For the deprecated `MQ__MQ__...` form, the variable to use instead.
    pub replacement: Option<String>,
}

/// Maps `rest` (the name after `MQ__`) to a key. `existing` lists, for a dotted parent key
/// (`""` for the top), the child keys the files have, so that a segment takes the files'
/// spelling; `listeners` are the registered listener names, which keep their `_`.
pub(crate) fn env_key(
    rest: &str,
    existing: &dyn Fn(&str) -> Vec<String>,
    listeners: &[&str],
) -> EnvKey {
    let segments: Vec<&str> = rest.split("__").collect();
    let (segments, replacement) = match segments.split_first() {
        Some((first, tail)) if !tail.is_empty() && norm(first) == "mq" => {
            let mut path = vec!["mq"];
            path.extend_from_slice(tail);
            (path, Some(format!("{ENV_PREFIX}{}", tail.join("__"))))
        }
        Some((first, _)) if MQ_SECTIONS.iter().any(|s| norm(s) == norm(first)) => {
            let mut path = vec!["mq"];
            path.extend_from_slice(&segments);
            (path, None)
        }
        _ => (segments, None),
    };
    let mut path: Vec<String> = Vec::new();
    for segment in segments {
        let parent = path.join(".");
        let mut candidates = existing(&parent);
        let is_listener = parent == "mq.listeners";
        if is_listener {
            candidates.extend(listeners.iter().map(|l| (*l).to_owned()));
        }
        let found = candidates.into_iter().find(|k| norm(k) == norm(segment));
        path.push(found.unwrap_or_else(|| {
            // A listener name is a function name: `_` is part of it. Elsewhere keys are
            // kebab-case.
            if is_listener {
                segment.to_lowercase()
            } else {
                segment.to_lowercase().replace('_', "-")
            }
        }));
    }
    EnvKey {
        key: path.join("."),
        replacement,
    }
}

/// A name compared as Spring's relaxed binding does: without case, `-` or `_`.
fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Vec<String> {
        Vec::new()
    }

    fn key(rest: &str) -> EnvKey {
        env_key(rest, &none, &["on_paid"])
    }

    #[test]
    fn mq_keys_go_under_mq() {
        assert_eq!(key("BROKER__DATA_DIR").key, "mq.broker.data-dir");
        assert_eq!(key("SHUTDOWN_TIMEOUT").key, "mq.shutdown-timeout");
        assert_eq!(key("INSTANCE_NAME").key, "mq.instance-name");
        assert_eq!(
            key("BROKER__REDIS__HEARTBEAT_INTERVAL").key,
            "mq.broker.redis.heartbeat-interval"
        );
        assert_eq!(key("BROKER__DATA_DIR").replacement, None);
    }

    #[test]
    fn the_doubled_form_is_deprecated_and_names_its_replacement() {
        let k = key("MQ__BROKER__DATA_DIR");
        assert_eq!(k.key, "mq.broker.data-dir");
        assert_eq!(k.replacement.as_deref(), Some("MQ__BROKER__DATA_DIR"));
    }

    #[test]
    fn other_first_segments_are_application_keys() {
        assert_eq!(
            key("SHOP__ORDER__CANCEL_AFTER").key,
            "shop.order.cancel-after"
        );
        assert_eq!(key("SERVER__ADDR").key, "server.addr");
        assert_eq!(key("SHOP__NAME").replacement, None);
    }

    #[test]
    fn segments_take_the_spelling_of_the_files_and_listener_names_keep_underscores() {
        let existing = |parent: &str| match parent {
            "" => vec!["shop".to_owned()],
            "shop" => vec!["max_items".to_owned()],
            _ => Vec::new(),
        };
        assert_eq!(
            env_key("SHOP__MAX_ITEMS", &existing, &[]).key,
            "shop.max_items"
        );
        assert_eq!(
            key("LISTENERS__ON_PAID__CONSUME_TIMEOUT").key,
            "mq.listeners.on_paid.consume-timeout"
        );
        assert_eq!(
            key("LISTENERS__ONPAID__ENABLED").key,
            "mq.listeners.on_paid.enabled"
        );
        assert_eq!(
            key("LISTENERS__UNKNOWN_ONE__ENABLED").key,
            "mq.listeners.unknown_one.enabled"
        );
    }
}
