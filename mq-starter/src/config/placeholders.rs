//! `${a.b.c}` and `${a.b.c:default}` placeholders, resolved from the configuration as Spring
//! does.

use super::loader::{ConfigError, Configuration};

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
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::MalformedPlaceholder {
                context: context.into(),
                text: text.into(),
            });
        };
        let inner = &after[..end];
        let (key, default) = match inner.split_once(':') {
            Some((k, d)) => (k.trim(), Some(d)),
            None => (inner.trim(), None),
        };
        match (config.get_string(key), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(ConfigError::MissingPlaceholder {
                    placeholder: format!("${{{inner}}}"),
                    context: context.into(),
                    key: key.into(),
                })
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = Configuration::load_with_env(dir.path(), &[], &[]).unwrap();
        let err = resolve_placeholders(&c, "${nope.key}", "listener x").unwrap_err();
        assert!(err.to_string().contains("nope.key"), "{err}");
        assert!(err.to_string().contains("listener x"), "{err}");
        assert!(resolve_placeholders(&c, "${open", "x").is_err());
        assert_eq!(resolve_placeholders(&c, "plain", "x").unwrap(), "plain");
    }
}
