//! Loading and merging the configuration sources, and errors that name the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::env::{env_key, ENV_PREFIX};
use super::error::ConfigError;
use super::placeholders::Resolver;
use super::settings::MqSettings;

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
#[derive(Clone)]
pub struct Configuration {
    inner: config::Config,
    files: Vec<PathBuf>,
    profiles: Vec<String>,
    /// The environment placeholders fall back to.
    env: Arc<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Configuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the environment: it holds whatever secrets the process was given.
        f.debug_struct("Configuration")
            .field("inner", &self.inner)
            .field("files", &self.files)
            .field("profiles", &self.profiles)
            .finish_non_exhaustive()
    }
}

impl Configuration {
    /// Loads from `$MQ_CONFIG_DIR` (default `config`) with the profiles of `$MQ_PROFILES`
    /// (comma-separated) and the environment.
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

    /// Loads `application.yaml` (or `.yml`) and `application-{p}.yaml` (or `.yml`) of `dir`,
    /// then the `MQ__` environment variables; placeholders fall back to the environment.
    pub fn load_from(dir: &Path, profiles: &[&str]) -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Some(name) = k.to_str() else {
                // Not a name any key or placeholder could mean.
                continue;
            };
            match v.into_string() {
                Ok(value) => vars.push((name.to_owned(), value)),
                Err(_) if name.starts_with(ENV_PREFIX) => {
                    return Err(ConfigError::BadValue {
                        origin: "environment".into(),
                        key: name.to_owned(),
                        message: "the value is not valid UTF-8".into(),
                    })
                }
                // Other variables may hold anything; they are none of mq's business.
                Err(_) => {}
            }
        }
        Self::load_with_env(dir, profiles, &vars)
    }

    /// Like [`load_from`](Self::load_from) with an explicit environment (tests): its `MQ__`
    /// variables override keys, and all of it is what placeholders fall back to.
    pub fn load_with_env(
        dir: &Path,
        profiles: &[&str],
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        let mut present = Vec::new();
        let names = std::iter::once("application".to_owned())
            .chain(profiles.iter().map(|p| format!("application-{p}")));
        for name in names {
            let Some(file) = find_file(dir, &name)? else {
                continue;
            };
            std::fs::read_to_string(&file).map_err(|e| ConfigError::Read {
                file: file.clone(),
                message: e.to_string(),
            })?;
            builder = builder
                .add_source(config::File::from(file.as_path()).format(config::FileFormat::Yaml));
            present.push(file);
        }
        let files_only = builder.build_cloned().map_err(|e| ConfigError::Read {
            file: dir.to_owned(),
            message: e.to_string(),
        })?;
        let listeners: Vec<&str> = crate::registry::listeners().map(|l| l.name).collect();
        let existing = |parent: &str| child_keys(&files_only, parent);
        let mut overrides: Vec<(super::env::EnvKey, &str, &str)> = env
            .iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                Some((
                    env_key(rest, &existing, &listeners),
                    name.as_str(),
                    value.as_str(),
                ))
            })
            .collect();
        // The deprecated spelling first, so that the current one wins where both are set.
        overrides.sort_by_key(|(key, name, _)| (key.replacement.is_none(), *name));
        for (target, name, value) in overrides {
            if let Some(replacement) = &target.replacement {
                tracing::warn!(
                    variable = name,
                    key = %target.key,
                    "{name} is deprecated: use {replacement}"
                );
            }
            builder = builder
                .set_override(target.key.clone(), value.to_owned())
                .map_err(|e| ConfigError::BadValue {
                    origin: "environment".into(),
                    key: target.key,
                    message: e.to_string(),
                })?;
        }
        let mut inner = builder.build().map_err(|e| ConfigError::Read {
            file: dir.to_owned(),
            message: e.to_string(),
        })?;
        let env: BTreeMap<String, String> = env.iter().cloned().collect();
        resolve_values(&mut inner, &env)?;
        tracing::info!(
            files = ?present.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            profiles = ?profiles,
            "configuration loaded"
        );
        Ok(Configuration {
            inner,
            files: present,
            profiles: profiles.iter().map(|p| (*p).to_owned()).collect(),
            env: Arc::new(env),
        })
    }

    /// The files that were read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The active profiles, in order (a profile without a file counts too).
    pub fn profiles(&self) -> &[String] {
        &self.profiles
    }

    /// The environment placeholders fall back to.
    pub(crate) fn environment(&self) -> &BTreeMap<String, String> {
        &self.env
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
    pub(crate) fn origin_of(&self, key: &str) -> String {
        // Walk the merged tree: values fetched through `get` lose their origin.
        let mut value = Some(&self.inner.cache);
        for segment in key.split('.') {
            value = value.and_then(|v| match &v.kind {
                config::ValueKind::Table(t) => t.get(segment),
                _ => None,
            });
        }
        match value {
            Some(v) => origin_in(v).unwrap_or_else(|| "environment".into()),
            None => self
                .files
                .last()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "configuration".into()),
        }
    }
}

/// The file a value comes from; for a table, which files do not mark, that of a value in it.
fn origin_in(value: &config::Value) -> Option<String> {
    if let Some(origin) = value.origin() {
        return Some(origin.to_owned());
    }
    match &value.kind {
        config::ValueKind::Table(t) => t.values().find_map(origin_in),
        config::ValueKind::Array(items) => items.iter().find_map(origin_in),
        _ => None,
    }
}

/// The field named by serde's "unknown field `x`" message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// `name.yaml` or `name.yml` in `dir`, if one exists; both is an error.
fn find_file(dir: &Path, name: &str) -> Result<Option<PathBuf>, ConfigError> {
    let yaml = dir.join(format!("{name}.yaml"));
    let yml = dir.join(format!("{name}.yml"));
    match (yaml.exists(), yml.exists()) {
        (true, true) => Err(ConfigError::DuplicateFile {
            first: yaml,
            second: yml,
        }),
        (true, false) => Ok(Some(yaml)),
        (false, true) => Ok(Some(yml)),
        (false, false) => Ok(None),
    }
}

/// The keys under `parent` (`""`: the top) in `config`.
fn child_keys(config: &config::Config, parent: &str) -> Vec<String> {
    let table = if parent.is_empty() {
        config.cache.clone().into_table().ok()
    } else {
        config.get_table(parent).ok()
    };
    table.map(|t| t.into_keys().collect()).unwrap_or_default()
}

/// Resolves the placeholders of every string value in `config`, keeping each value's origin.
fn resolve_values(
    config: &mut config::Config,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let raw = config.clone();
    let value = |key: &str| raw.get_string(key).ok();
    let resolver = Resolver { value: &value, env };
    resolve_tree(&mut config.cache, String::new(), &resolver)
}

fn resolve_tree(
    value: &mut config::Value,
    key: String,
    resolver: &Resolver<'_>,
) -> Result<(), ConfigError> {
    let origin = value.origin().unwrap_or("environment").to_owned();
    match &mut value.kind {
        config::ValueKind::String(text) if text.contains("${") => {
            let context = format!("{origin}, key `{key}`");
            *text = resolver.resolve(text, &context, &mut vec![key])?;
        }
        config::ValueKind::Table(table) => {
            for (name, child) in table.iter_mut() {
                let child_key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                resolve_tree(child, child_key, resolver)?;
            }
        }
        config::ValueKind::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                resolve_tree(child, format!("{key}[{i}]"), resolver)?;
            }
        }
        _ => {}
    }
    Ok(())
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
    fn mq_keys_from_the_environment_without_the_doubled_prefix() {
        let dir = dir_with(&[("application.yaml", "mq:\n  broker:\n    data-dir: a\n")]);
        let env = vec![
            ("MQ__BROKER__DATA_DIR".to_string(), "b".to_string()),
            ("MQ__SHUTDOWN_TIMEOUT".to_string(), "7s".to_string()),
            ("MQ__SHOP__NAME".to_string(), "env-shop".to_string()),
        ];
        let c = Configuration::load_with_env(dir.path(), &[], &env).unwrap();
        let mq = c.mq().unwrap();
        assert_eq!(mq.broker.data_dir, std::path::PathBuf::from("b"));
        assert_eq!(mq.shutdown_timeout, std::time::Duration::from_secs(7));
        assert_eq!(c.get::<String>("shop.name").unwrap(), "env-shop");
    }

    /// Log lines written while `f` runs (and any other test's meanwhile). One global
    /// subscriber: a scoped one can miss events whose interest another thread cached first.
    fn logged(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex, OnceLock};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        static LOG: OnceLock<Buf> = OnceLock::new();
        let buf = LOG.get_or_init(|| {
            let buf = Buf::default();
            let out = buf.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            buf
        });
        let from = buf.0.lock().unwrap().len();
        f();
        let bytes = buf.0.lock().unwrap()[from..].to_vec();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_doubled_form_still_works_with_a_warning_and_loses_to_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            ("MQ__MQ__BROKER__DATA_DIR".to_string(), "old".to_string()),
            ("MQ__MQ__CONSUMER__CONCURRENCY".to_string(), "9".to_string()),
            ("MQ__BROKER__DATA_DIR".to_string(), "new".to_string()),
        ];
        let mut c = None;
        let log = logged(|| c = Some(Configuration::load_with_env(dir.path(), &[], &env)));
        let mq = c.unwrap().unwrap().mq().unwrap();
        assert_eq!(mq.consumer.concurrency, 9);
        assert_eq!(mq.broker.data_dir, std::path::PathBuf::from("new"));
        assert!(log.contains("WARN"), "{log}");
        assert!(
            log.contains(
                "MQ__MQ__CONSUMER__CONCURRENCY is deprecated: use MQ__CONSUMER__CONCURRENCY"
            ),
            "{log}"
        );
    }

    #[test]
    fn files_and_profiles_are_logged() {
        let dir = dir_with(&[
            ("application.yaml", "a: 1\n"),
            ("application-x.yml", "b: 2\n"),
        ]);
        let log = logged(|| {
            let c = Configuration::load_with_env(dir.path(), &["x", "y"], &[]).unwrap();
            assert_eq!(c.profiles(), ["x", "y"]);
        });
        assert!(log.contains("configuration loaded"), "{log}");
        assert!(log.contains("application.yaml"), "{log}");
        assert!(log.contains("application-x.yml"), "{log}");
        assert!(log.contains(r#"profiles=["x", "y"]"#), "{log}");
    }

    #[test]
    fn yml_files_are_read_and_two_spellings_of_one_are_refused() {
        let dir = dir_with(&[
            ("application.yml", "shop:\n  name: base\n"),
            ("application-p.yml", "shop:\n  region: eu\n"),
        ]);
        let c = Configuration::load_with_env(dir.path(), &["p"], &[]).unwrap();
        assert_eq!(c.get::<String>("shop.name").unwrap(), "base");
        assert_eq!(c.get::<String>("shop.region").unwrap(), "eu");
        assert_eq!(c.files().len(), 2);

        std::fs::write(dir.path().join("application-p.yaml"), "shop: {}\n").unwrap();
        let err = Configuration::load_with_env(dir.path(), &["p"], &[]).unwrap_err();
        match &err {
            ConfigError::DuplicateFile { first, second } => {
                assert!(first.ends_with("application-p.yaml"), "{err}");
                assert!(second.ends_with("application-p.yml"), "{err}");
            }
            other => panic!("expected DuplicateFile, got {other}"),
        }
    }

    #[test]
    fn placeholders_in_values_resolve_from_configuration_then_environment() {
        let dir = dir_with(&[(
            "application.yaml",
            "shop:\n  name: demo\n  title: ${shop.name} shop\n  home: ${HOME_DIR}/shop\n  region: ${shop.zone:eu}\nmq:\n  broker:\n    data-dir: ${shop.home}/mq\n  consumer:\n    concurrency: ${WORKERS:3}\n",
        )]);
        let env = vec![
            ("HOME_DIR".to_string(), "/srv".to_string()),
            ("MQ__SHOP__NAME".to_string(), "env".to_string()),
        ];
        let c = Configuration::load_with_env(dir.path(), &[], &env).unwrap();
        assert_eq!(c.get::<String>("shop.title").unwrap(), "env shop");
        assert_eq!(c.get::<String>("shop.region").unwrap(), "eu");
        let mq = c.mq().unwrap();
        assert_eq!(mq.broker.data_dir, std::path::PathBuf::from("/srv/shop/mq"));
        assert_eq!(mq.consumer.concurrency, 3);
        // A resolved value keeps its file: errors about it still name it.
        assert!(c.origin_of("shop.title").ends_with("application.yaml"));
    }

    #[test]
    fn a_missing_placeholder_names_file_and_key() {
        let dir = dir_with(&[(
            "application.yaml",
            "mq:\n  broker:\n    data-dir: ${nowhere}\n",
        )]);
        let err = Configuration::load_with_env(dir.path(), &[], &[]).unwrap_err();
        match &err {
            ConfigError::MissingPlaceholder { key, context, .. } => {
                assert_eq!(key, "nowhere");
                assert!(context.contains("application.yaml"), "{err}");
                assert!(context.contains("mq.broker.data-dir"), "{err}");
            }
            other => panic!("expected MissingPlaceholder, got {other}"),
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_defaults_are_mq_cores() {
        let r = crate::config::RedisSettings::default();
        assert_eq!(r.poll_interval, mq_core::redis::DEFAULT_POLL_INTERVAL);
        assert_eq!(
            r.heartbeat_interval,
            mq_core::redis::DEFAULT_HEARTBEAT_INTERVAL
        );
        assert_eq!(
            r.broadcast_reserve,
            mq_core::redis::DEFAULT_BROADCAST_RESERVE
        );
        assert_eq!(r.trim_interval, mq_core::redis::DEFAULT_TRIM_INTERVAL);
    }

    #[test]
    fn the_mq_sections_of_environment_names_are_the_fields_of_mq_settings() {
        let dir = dir_with(&[("application.yaml", "mq:\n  no-such-section: 1\n")]);
        let c = Configuration::load_with_env(dir.path(), &[], &[]).unwrap();
        let ConfigError::UnknownKey { hint, .. } = c.mq().unwrap_err() else {
            panic!("expected UnknownKey");
        };
        let mut fields: Vec<&str> = hint.split('`').skip(1).step_by(2).collect();
        fields.sort_unstable();
        let mut sections = super::super::env::MQ_SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(fields, sections, "{hint}");
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
