//! Loading and merging the configuration sources, and errors that name the file and the key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::settings::MqSettings;

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
    /// A placeholder that is not closed.
    #[error("malformed placeholder in {context}: {text:?}")]
    MalformedPlaceholder {
        /// Where it was found.
        context: String,
        /// The text.
        text: String,
    },
}

/// The merged configuration of an application.
///
/// ```
/// # fn main() -> Result<(), mq_starter::config::ConfigError> {
/// let dir = std::env::temp_dir().join(format!("mq-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).ok();
/// std::fs::write(dir.join("application.yaml"), "shop:\n  name: demo\nmq:\n  consumer:\n    concurrency: 8\n").ok();
/// let config = mq_starter::config::Configuration::load_from(&dir, &[])?;
/// assert_eq!(config.get::<String>("shop.name")?, "demo");
/// assert_eq!(config.mq()?.consumer.concurrency, 8);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Configuration {
    inner: config::Config,
    files: Vec<PathBuf>,
}

/// Prefix of environment variables that override keys.
const ENV_PREFIX: &str = "MQ__";

impl Configuration {
    /// Loads from `$MQ_CONFIG_DIR` (default `config`) with the profiles of `$MQ_PROFILES`
    /// (comma-separated) and the `MQ__` environment variables.
    pub fn load() -> Result<Self, ConfigError> {
        let dir = std::env::var("MQ_CONFIG_DIR").unwrap_or_else(|_| "config".into());
        let profiles = std::env::var("MQ_PROFILES").unwrap_or_default();
        let profiles: Vec<&str> = profiles
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        Self::load_from(Path::new(&dir), &profiles)
    }

    /// Loads `application.yaml` and `application-{p}.yaml` of `dir`, then the `MQ__`
    /// environment variables.
    pub fn load_from(dir: &Path, profiles: &[&str]) -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(name) = k.to_str().filter(|k| k.starts_with(ENV_PREFIX)) else {
                // Other variables may hold anything; they are none of mq's business.
                continue;
            };
            let value = v.into_string().map_err(|_| ConfigError::BadValue {
                origin: "environment".into(),
                key: name.to_owned(),
                message: "the value is not valid UTF-8".into(),
            })?;
            vars.push((name.to_owned(), value));
        }
        Self::load_with_env(dir, profiles, &vars)
    }

    /// Like [`load_from`](Self::load_from) with explicit environment overrides (tests).
    pub fn load_with_env(
        dir: &Path,
        profiles: &[&str],
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut files = vec![dir.join("application.yaml")];
        files.extend(
            profiles
                .iter()
                .map(|p| dir.join(format!("application-{p}.yaml"))),
        );
        let mut builder = config::Config::builder();
        let mut present = Vec::new();
        for file in &files {
            if file.exists() {
                std::fs::read_to_string(file).map_err(|e| ConfigError::Read {
                    file: file.clone(),
                    message: e.to_string(),
                })?;
                builder = builder.add_source(
                    config::File::from(file.as_path()).format(config::FileFormat::Yaml),
                );
                present.push(file.clone());
            }
        }
        let files_only = builder.build_cloned().map_err(|e| ConfigError::Read {
            file: dir.to_owned(),
            message: e.to_string(),
        })?;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = relaxed_key(&files_only, rest);
            builder = builder
                .set_override(key.clone(), value.clone())
                .map_err(|e| ConfigError::BadValue {
                    origin: "environment".into(),
                    key,
                    message: e.to_string(),
                })?;
        }
        let inner = builder.build().map_err(|e| ConfigError::Read {
            file: dir.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Configuration {
            inner,
            files: present,
        })
    }

    /// The files that were read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The typed `mq:` section; unknown keys and bad values are errors naming file and key.
    pub fn mq(&self) -> Result<MqSettings, ConfigError> {
        match self.inner.get::<config::Value>("mq") {
            Ok(value) => self.deserialize_at("mq", value),
            Err(config::ConfigError::NotFound(_)) => Ok(MqSettings::default()),
            Err(e) => Err(ConfigError::BadValue {
                origin: self.origin_of("mq"),
                key: "mq".into(),
                message: e.to_string(),
            }),
        }
    }

    /// An application section, e.g. `config.get::<ShopSettings>("shop")`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, ConfigError> {
        let value = self
            .inner
            .get::<config::Value>(key)
            .map_err(|e| ConfigError::BadValue {
                origin: self.origin_of(key),
                key: key.into(),
                message: e.to_string(),
            })?;
        self.deserialize_at(key, value)
    }

    /// An application section that may be absent: `Ok(None)` when `key` is not set at all,
    /// an error naming file and key when it is set but does not fit `T`.
    pub fn get_opt<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.inner.get::<config::Value>(key) {
            Ok(value) => self.deserialize_at(key, value).map(Some),
            Err(config::ConfigError::NotFound(_)) => Ok(None),
            Err(e) => Err(ConfigError::BadValue {
                origin: self.origin_of(key),
                key: key.into(),
                message: e.to_string(),
            }),
        }
    }

    /// A string value, if the key is set.
    pub fn get_string(&self, key: &str) -> Option<String> {
        self.inner.get_string(key).ok()
    }

    fn deserialize_at<T: DeserializeOwned>(
        &self,
        root: &str,
        value: config::Value,
    ) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            let mut key = if path == "." || path.is_empty() {
                root.to_owned()
            } else {
                format!("{root}.{path}")
            };
            if let Some(field) = unknown_field(&inner) {
                key = format!("{key}.{field}");
                let hint = inner
                    .split_once(", expected ")
                    .map(|(_, rest)| format!(" (expected {rest})"))
                    .unwrap_or_default();
                return ConfigError::UnknownKey {
                    origin: self.origin_of(&key),
                    key,
                    hint,
                };
            }
            ConfigError::BadValue {
                origin: self.origin_of(&key),
                key,
                message: inner,
            }
        })
    }

    /// The file that set `key`, or `environment`.
    fn origin_of(&self, key: &str) -> String {
        // Walk the merged tree: values fetched through `get` lose their origin.
        let mut value = Some(self.inner.cache.clone());
        for segment in key.split('.') {
            value = value
                .and_then(|v| v.into_table().ok())
                .and_then(|mut t| t.remove(segment));
        }
        match value {
            Some(v) => v
                .origin()
                .map(str::to_owned)
                .unwrap_or_else(|| "environment".into()),
            None => self
                .files
                .last()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "configuration".into()),
        }
    }
}

/// The field named by serde's "unknown field `x`" message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Maps `SHOP__ORDER__CANCEL_AFTER` to the key the files use (`shop.order.cancel-after`),
/// comparing names without case, `-` and `_`, as Spring's relaxed binding does; a segment no
/// file has becomes kebab-case.
fn relaxed_key(files: &config::Config, env_rest: &str) -> String {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let mut path: Vec<String> = Vec::new();
    for segment in env_rest.split("__") {
        let parent = path.join(".");
        let table = if parent.is_empty() {
            files.cache.clone().into_table().ok()
        } else {
            files.get_table(&parent).ok()
        };
        let found = table.and_then(|t| t.keys().find(|k| norm(k) == norm(segment)).cloned());
        path.push(found.unwrap_or_else(|| segment.to_lowercase().replace('_', "-")));
    }
    path.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn profiles_then_environment_override() {
        let dir = dir_with(&[
            (
                "application.yaml",
                "shop:\n  order:\n    cancel-after: 30m\n  name: base\nmq:\n  consumer:\n    concurrency: 4\n",
            ),
            ("application-redis.yaml", "shop:\n  name: redis\n"),
        ]);
        let env = vec![(
            "MQ__SHOP__ORDER__CANCEL_AFTER".to_string(),
            "2s".to_string(),
        )];
        let c = Configuration::load_with_env(dir.path(), &["redis"], &env).unwrap();
        assert_eq!(c.get::<String>("shop.name").unwrap(), "redis");
        assert_eq!(c.get::<String>("shop.order.cancel-after").unwrap(), "2s");
        assert_eq!(c.mq().unwrap().consumer.concurrency, 4);
        assert_eq!(c.files().len(), 2);
    }

    #[test]
    fn an_absent_section_is_none_and_a_bad_one_an_error() {
        let dir = dir_with(&[("application.yaml", "shop:\n  port: many\n")]);
        let c = Configuration::load_with_env(dir.path(), &[], &[]).unwrap();
        #[derive(Debug, serde::Deserialize)]
        struct Server {
            #[allow(dead_code)]
            addr: String,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Shop {
            #[allow(dead_code)]
            port: u16,
        }
        assert!(c.get_opt::<Server>("server").unwrap().is_none());
        assert!(c.get::<Server>("server").is_err());
        let err = c.get_opt::<Shop>("shop").unwrap_err();
        assert!(
            matches!(&err, ConfigError::BadValue { key, .. } if key == "shop.port"),
            "{err}"
        );
        assert!(err.to_string().contains("application.yaml"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = dir_with(&[("application.yaml", "mq:\n  broker:\n    flsh: sync\n")]);
        let c = Configuration::load_with_env(dir.path(), &[], &[]).unwrap();
        let err = c.mq().unwrap_err().to_string();
        assert!(err.contains("application.yaml"), "{err}");
        assert!(err.contains("mq.broker.flsh"), "{err}");
        assert!(err.contains("data-dir"), "{err}");
    }

    #[test]
    fn bad_value_names_file_and_key() {
        let dir = dir_with(&[(
            "application.yaml",
            "mq:\n  consumer:\n    consume-timeout: soon\n",
        )]);
        let c = Configuration::load_with_env(dir.path(), &[], &[]).unwrap();
        let err = c.mq().unwrap_err().to_string();
        assert!(err.contains("application.yaml"), "{err}");
        assert!(err.contains("mq.consumer.consume-timeout"), "{err}");
    }

    #[test]
    fn environment_value_errors_say_environment() {
        let dir = dir_with(&[("application.yaml", "mq:\n  consumer:\n    concurrency: 3\n")]);
        let env = vec![(
            "MQ__MQ__CONSUMER__CONCURRENCY".to_string(),
            "many".to_string(),
        )];
        let c = Configuration::load_with_env(dir.path(), &[], &env).unwrap();
        let err = c.mq().unwrap_err().to_string();
        assert!(err.contains("mq.consumer.concurrency"), "{err}");
        assert!(err.contains("environment"), "{err}");
    }

    #[test]
    fn unreadable_yaml_names_the_file() {
        let dir = dir_with(&[("application.yaml", "mq: [unclosed\n")]);
        let err = Configuration::load_with_env(dir.path(), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("application.yaml"), "{err}");
    }

    #[test]
    fn defaults_without_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = Configuration::load_with_env(dir.path(), &[], &[]).unwrap();
        let mq = c.mq().unwrap();
        assert_eq!(mq.consumer.concurrency, 20);
        assert_eq!(mq.consumer.max_reconsume_times, 16);
    }
}
