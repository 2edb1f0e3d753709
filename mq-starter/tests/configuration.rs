//! Configuration problems found at start-up: listener overrides that name no listener, and
//! backends this build does not contain (a clear error, not a panic).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mq_starter::config::{ConfigError, Configuration};
use mq_starter::prelude::*;
use mq_starter::StartError;

#[mq_listener(
    topic = "cfg-orders",
    group = "cfg-audit",
    enabled = "${test.audit:false}"
)]
async fn audit_orders(msg: MessageView) {
    let _ = msg;
}

#[mq_listener(
    topic = "cfg-payments",
    group = "cfg-billing",
    idempotent = key,
    enabled = "${test.billing:false}"
)]
async fn bill_payments(msg: MessageView) {
    let _ = msg;
}

/// Loads `yaml` as `application.yaml` of a fresh directory, with `env` as the environment.
fn load(yaml: &str, env: &[(&str, &str)]) -> (Configuration, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml.replace("DIR", &dir.path().join("mq").display().to_string());
    std::fs::write(dir.path().join("application.yaml"), yaml).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let config = Configuration::load_with_env(dir.path(), &[], &env).unwrap();
    (config, dir)
}

async fn start_error(yaml: &str, env: &[(&str, &str)]) -> ConfigError {
    let (config, _dir) = load(yaml, env);
    match MqApplication::new(config).unwrap().start().await {
        Err(StartError::Config(e)) => e,
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(running) => {
            running.shutdown().await.unwrap();
            panic!("the application started")
        }
    }
}

#[tokio::test]
async fn an_override_of_no_listener_is_refused_with_the_known_names() {
    let err = start_error(
        "mq:\n  broker:\n    data-dir: DIR\n  listeners:\n    audit_order:\n      concurrency: 2\n",
        &[],
    )
    .await;
    let text = err.to_string();
    match err {
        ConfigError::UnknownListener { origin, key, known } => {
            assert_eq!(key, "mq.listeners.audit_order");
            assert!(origin.ends_with("application.yaml"), "{text}");
            assert_eq!(known, ["audit_orders", "bill_payments"]);
        }
        other => panic!("expected UnknownListener, got {other}"),
    }
    assert!(text.contains("audit_orders, bill_payments"), "{text}");
}

#[tokio::test]
async fn an_override_from_the_environment_is_checked_too() {
    let err = start_error(
        "mq:\n  broker:\n    data-dir: DIR\n",
        &[("MQ__LISTENERS__NOBODY__ENABLED", "false")],
    )
    .await;
    assert!(
        matches!(&err, ConfigError::UnknownListener { key, origin, .. } if key == "mq.listeners.nobody" && origin == "environment"),
        "{err}"
    );
}

#[cfg(feature = "embedded")]
#[tokio::test]
async fn listener_overrides_and_placeholders_reach_the_listener() {
    // `MQ__LISTENERS__AUDIT_ORDERS__...` matches the listener's name; its topic comes from a
    // placeholder in the YAML, resolved from an environment variable.
    let (config, _dir) = load(
        "mq:\n  broker:\n    data-dir: DIR\n  listeners:\n    audit_orders:\n      enabled: ${AUDIT_ON:false}\n",
        &[
            ("AUDIT_ON", "true"),
            ("MQ__LISTENERS__AUDIT_ORDERS__CONCURRENCY", "3"),
        ],
    );
    let app = MqApplication::new(config).unwrap();
    let audit = &app.settings().listeners["audit_orders"];
    assert_eq!(audit.enabled, Some(true));
    assert_eq!(audit.concurrency, Some(3));
    let running = app.start().await.unwrap();
    running.shutdown().await.unwrap();
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn the_redis_broker_without_the_feature_is_a_clear_error() {
    let err = start_error("mq:\n  broker:\n    kind: redis\n", &[]).await;
    let text = err.to_string();
    match err {
        ConfigError::FeatureNotCompiled {
            origin,
            key,
            value,
            feature,
        } => {
            assert_eq!(
                (key.as_str(), value.as_str(), feature),
                ("mq.broker.kind", "redis", "redis")
            );
            assert!(origin.ends_with("application.yaml"), "{text}");
        }
        other => panic!("expected FeatureNotCompiled, got {other}"),
    }
    assert!(text.contains("not compiled in"), "{text}");
}

#[cfg(all(feature = "embedded", not(feature = "redis")))]
#[tokio::test]
async fn the_redis_idempotency_store_without_the_feature_is_a_clear_error() {
    let err = start_error(
        "mq:\n  broker:\n    data-dir: DIR\n  idempotency:\n    store: redis\n",
        &[],
    )
    .await;
    assert!(
        matches!(&err, ConfigError::FeatureNotCompiled { key, feature: "redis", .. } if key == "mq.idempotency.store"),
        "{err}"
    );
}

#[cfg(not(feature = "embedded"))]
#[tokio::test]
async fn the_embedded_broker_without_the_feature_is_a_clear_error() {
    let err = start_error("mq:\n  broker:\n    kind: embedded\n", &[]).await;
    assert!(
        matches!(&err, ConfigError::FeatureNotCompiled { key, feature: "embedded", .. } if key == "mq.broker.kind"),
        "{err}"
    );
}
