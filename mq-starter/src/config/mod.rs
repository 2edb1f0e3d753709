//! Configuration: `config/application.yaml` (or `.yml`), then `application-{profile}.yaml` for
//! each profile in `MQ_PROFILES`, then environment variables: `MQ__BROKER__DATA_DIR` sets
//! `mq.broker.data-dir`, `MQ__SHOP__NAME` the application's `shop.name`. `${key:default}`
//! placeholders in values are resolved from the configuration, then the environment. Every key
//! is listed in `docs/configuration.md`.

mod env;
mod error;
mod loader;
mod placeholders;
mod settings;
mod values;

pub use error::ConfigError;
pub use loader::Configuration;
pub use placeholders::resolve_placeholders;
pub use settings::*;
pub use values::{ConsumeTimestamp, InstanceName};
