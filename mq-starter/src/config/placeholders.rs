//! `${a.b.c}` and `${a.b.c:default}` placeholders, resolved as Spring does: the key's value in
//! the merged configuration, else the environment variable of that name (`a.b.c`, `a_b_c`,
//! then `A_B_C`), else the default; a placeholder without any of them is an error.

use std::collections::BTreeMap;

use super::error::ConfigError;
use super::loader::Configuration;

/// Replaces every placeholder of `text`; `context` says where the text comes from, for errors.
///
/// ```
/// # fn main() -> Result<(), mq_starter::config::ConfigError> {
/// let dir = std::env::temp_dir().join(format!("mq-ph-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).ok();
/// std::fs::write(dir.join("application.yaml"), "shop:\n  topic: orders\n").ok();
/// let config = mq_starter::config::Configuration::load_from(&dir, &[])?;
/// let resolve = mq_starter::config::resolve_placeholders;
/// assert_eq!(resolve(&config, "${shop.topic}", "test")?, "orders");
/// assert_eq!(resolve(&config, "${shop.group:points}-v2", "test")?, "points-v2");
/// # Ok(()) }
/// ```
pub fn resolve_placeholders(
    config: &Configuration,
    text: &str,
    context: &str,
) -> Result<String, ConfigError> {
    let value = |key: &str| config.get_string(key);
    Resolver {
        value: &value,
        env: config.environment(),
    }
    .resolve(text, context, &mut Vec::new())
}

/// Resolves placeholders against a source of values and the environment.
pub(crate) struct Resolver<'a> {
    /// The value of a key in the configuration, as written (it may hold placeholders).
    pub value: &'a dyn Fn(&str) -> Option<String>,
    /// The environment variables placeholders fall back to.
    pub env: &'a BTreeMap<String, String>,
}

impl Resolver<'_> {
    /// Replaces the placeholders of `text`, and those of the values they name. `stack` holds
    /// the keys being resolved, to refuse a circle.
    pub fn resolve(
        &self,
        text: &str,
        context: &str,
        stack: &mut Vec<String>,
    ) -> Result<String, ConfigError> {
        let malformed = || ConfigError::MalformedPlaceholder {
            context: context.into(),
            text: text.into(),
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = closing(after).ok_or_else(malformed)?;
            let inner = &after[..end];
            let (key, default) = match inner.split_once(':') {
                Some((k, d)) => (k.trim(), Some(d)),
                None => (inner.trim(), None),
            };
            if key.is_empty() {
                return Err(malformed());
            }
            if stack.iter().any(|k| k == key) {
                let mut chain = stack.clone();
                chain.push(key.to_owned());
                return Err(ConfigError::PlaceholderCycle {
                    context: context.into(),
                    chain,
                });
            }
            let value = if let Some(v) = (self.value)(key) {
                stack.push(key.to_owned());
                let resolved = self.resolve(&v, context, stack);
                stack.pop();
                resolved?
            } else if let Some(v) = environment(self.env, key) {
                // Taken as it is: the environment is outside the configuration's rules.
                v.to_owned()
            } else if let Some(d) = default {
                self.resolve(d, context, stack)?
            } else {
                return Err(ConfigError::MissingPlaceholder {
                    placeholder: format!("${{{inner}}}"),
                    context: context.into(),
                    key: key.into(),
                });
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Where the `}` that closes a placeholder is in `after` (the text after its `${`), counting
/// placeholders nested in a default.
fn closing(after: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = after.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The environment variable for `key`, by Spring's rule: the name as written, then with `.`
/// and `-` as `_`, then that in upper case (`shop.db-url`: `SHOP_DB_URL`).
fn environment<'e>(env: &'e BTreeMap<String, String>, key: &str) -> Option<&'e str> {
    let underscored: String = key
        .chars()
        .map(|c| if c == '.' || c == '-' { '_' } else { c })
        .collect();
    let upper = underscored.to_uppercase();
    let found = [key, underscored.as_str(), upper.as_str()]
        .into_iter()
        .find_map(|name| env.get(name));
    found.map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver<'a>(
        values: &'a dyn Fn(&str) -> Option<String>,
        env: &'a BTreeMap<String, String>,
    ) -> Resolver<'a> {
        Resolver { value: values, env }
    }

    fn table(key: &str) -> Option<String> {
        match key {
            "shop.topic" => Some("orders".into()),
            "shop.full" => Some("${shop.topic}-v${shop.version:1}".into()),
            "a" => Some("${b}".into()),
            "b" => Some("${a}".into()),
            _ => None,
        }
    }

    #[test]
    fn missing_and_malformed_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = Configuration::load_with_env(dir.path(), &[], &[]).unwrap();
        let err = resolve_placeholders(&c, "${nope.key}", "listener x").unwrap_err();
        assert!(
            matches!(&err, ConfigError::MissingPlaceholder { key, context, .. } if key == "nope.key" && context == "listener x"),
            "{err}"
        );
        assert!(matches!(
            resolve_placeholders(&c, "${open", "x"),
            Err(ConfigError::MalformedPlaceholder { .. })
        ));
        assert!(matches!(
            resolve_placeholders(&c, "${:default}", "x"),
            Err(ConfigError::MalformedPlaceholder { .. })
        ));
        assert_eq!(resolve_placeholders(&c, "plain", "x").unwrap(), "plain");
    }

    #[test]
    fn values_then_environment_then_default() {
        let env = BTreeMap::from([
            ("SHOP_REGION".to_owned(), "eu".to_owned()),
            ("shop.topic".to_owned(), "not this".to_owned()),
            ("HOME".to_owned(), "/home/x".to_owned()),
        ]);
        let r = resolver(&table, &env);
        let go = |t: &str| r.resolve(t, "test", &mut Vec::new()).unwrap();
        assert_eq!(go("${shop.topic}"), "orders");
        assert_eq!(go("${shop.region}"), "eu");
        assert_eq!(go("${HOME}/x"), "/home/x/x");
        assert_eq!(go("${shop.zone:north}"), "north");
        assert_eq!(
            go("${redis.url:redis://127.0.0.1:6379}"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn nested_placeholders_resolve_and_circles_are_refused() {
        let env = BTreeMap::new();
        let r = resolver(&table, &env);
        assert_eq!(
            r.resolve("${shop.full}", "t", &mut Vec::new()).unwrap(),
            "orders-v1"
        );
        assert_eq!(
            r.resolve("${shop.none:${shop.topic}}!", "t", &mut Vec::new())
                .unwrap(),
            "orders!"
        );
        let err = r.resolve("${a}", "t", &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&err, ConfigError::PlaceholderCycle { chain, .. } if chain == &["a", "b", "a"]),
            "{err}"
        );
    }
}
