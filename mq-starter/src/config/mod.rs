//! Configuration: `config/application.yaml`, then `application-{profile}.yaml` for each profile
//! in `MQ_PROFILES`, then environment variables `MQ__A__B` overriding key `a.b`.

mod loader;
mod placeholders;
mod settings;
mod values;

pub use loader::{ConfigError, Configuration};
pub use placeholders::resolve_placeholders;
pub use settings::*;
pub use values::{ConsumeTimestamp, InstanceName};
