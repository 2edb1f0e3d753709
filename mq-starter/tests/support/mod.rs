//! Shared by the starter's behaviour tests: an application in a temporary directory with only
//! the listeners a test names switched on.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod redis;
pub mod wrapped;

use std::time::Duration;

use mq_starter::config::Configuration;
use mq_starter::{MqApplication, Running};

/// A started application and the directory it lives in.
pub struct TestApp {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

/// Writes `application.yaml` with the broker under a temporary directory, short back-off, the
/// listeners in `enable` switched on (`test.<name>: true`), plus `extra` YAML.
pub fn config(enable: &[&str], extra: &str) -> (Configuration, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = format!(
        "mq:\n  broker:\n    data-dir: {}\n  consumer:\n    backoff: 100ms 200ms 300ms\n    consume-from: first\n    suspend-current-queue-time: 100ms\n  shutdown-timeout: 5s\n",
        dir.path().join("mq").display()
    );
    yaml.push_str("test:\n");
    for name in enable {
        yaml.push_str(&format!("  {name}: true\n"));
    }
    std::fs::write(dir.path().join("application.yaml"), yaml).unwrap();
    // The test's own settings come as a profile, merged over the base file.
    std::fs::write(dir.path().join("application-test.yaml"), extra).unwrap();
    let config = Configuration::load_with_env(dir.path(), &["test"], &[]).unwrap();
    (config, dir)
}

/// Waits until `check` holds, or fails after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts an application with the listeners in `enable`, state from `with`.
pub async fn start(
    enable: &[&str],
    extra: &str,
    with: impl FnOnce(MqApplication) -> MqApplication,
) -> TestApp {
    let (config, dir) = config(enable, extra);
    let app = with(MqApplication::new(config).unwrap());
    TestApp {
        running: app.start().await.unwrap(),
        dir,
    }
}
