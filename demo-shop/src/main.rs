//! The demo shop. Until its HTTP API lands (the demo-shop issue), this binary runs the embedded
//! broker on its default data directory and shows one message going through it.

use std::time::Duration;

use mq_starter::core::embedded::{EmbeddedBroker, EmbeddedConfig, FlushPolicy};
use mq_starter::core::{Broker, ConsumeFrom, ConsumerOptions, Message, SendOptions, Subscription};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = load_settings()?;
    tracing::info!(data_dir = %settings.data_dir, flush = %settings.flush, "embedded broker");
    let flush = match settings.flush.as_str() {
        "sync" => FlushPolicy::Sync,
        "async" => FlushPolicy::default(),
        other => {
            return Err(format!("mq.broker.flush: expected async or sync, got {other:?}").into())
        }
    };
    let broker = EmbeddedBroker::open(EmbeddedConfig::new(&settings.data_dir).flush(flush)).await?;
    let consumer = broker
        .subscribe(
            Subscription::new("order-created", "demo-shop"),
            ConsumerOptions::new()
                .instance("demo-shop")
                .consume_from(ConsumeFrom::Last),
        )
        .await?;
    let sent = broker
        .send(
            Message::new("order-created", r#"{"order_id":1}"#).with_key("order-1"),
            SendOptions::new(),
        )
        .await?;
    tracing::info!(id = %sent.message_id, queue = sent.queue_id, offset = sent.queue_offset, "sent");
    for delivery in consumer.receive(16, Duration::from_secs(5)).await? {
        tracing::info!(
            id = %delivery.message.id,
            body = %String::from_utf8_lossy(&delivery.message.body),
            "received"
        );
        consumer.ack(&[delivery.receipt]).await?;
    }
    consumer.close().await?;
    broker.shutdown().await?;
    tracing::info!("the HTTP shop arrives with the demo-shop issue; the embedded broker works");
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct BrokerSettings {
    data_dir: String,
    #[serde(default = "default_flush")]
    flush: String,
}

fn default_flush() -> String {
    "async".into()
}

/// `config/application.yaml` (or `$MQ_CONFIG_DIR/application.yaml`), then `MQ__A__B` variables.
fn load_settings() -> Result<BrokerSettings, config::ConfigError> {
    let dir = std::env::var("MQ_CONFIG_DIR").unwrap_or_else(|_| "config".into());
    config::Config::builder()
        .set_default("mq.broker.data-dir", "data/mq")?
        .add_source(config::File::with_name(&format!("{dir}/application")).required(false))
        .add_source(
            config::Environment::with_prefix("MQ")
                .prefix_separator("__")
                .separator("__"),
        )
        .build()?
        .get::<BrokerSettings>("mq.broker")
}
