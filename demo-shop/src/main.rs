//! The demo shop. Until its HTTP API lands (the demo-shop issue), this binary runs the embedded
//! broker on its default data directory and shows one message going through it.

use std::time::Duration;

use mq_starter::core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_starter::core::{Broker, ConsumeFrom, ConsumerOptions, Message, SendOptions, Subscription};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let data_dir = std::env::var("MQ_DATA_DIR").unwrap_or_else(|_| "data/mq".into());
    let broker = EmbeddedBroker::open(EmbeddedConfig::new(&data_dir)).await?;
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
