//! The demo shop. Until its HTTP API lands (the demo-shop issue), this binary starts mq on the
//! embedded defaults of `config/application.yaml`, sends one order event through a listener,
//! and stops.

use std::time::Duration;

use mq_starter::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderCreated {
    order_id: u64,
}

#[mq_listener(topic = "order-created", group = "demo-shop")]
async fn on_order_created(Json(order): Json<OrderCreated>, msg: MessageView) {
    tracing::info!(order = order.order_id, id = %msg.id, attempt = msg.attempt(), "order received");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let running = MqApplication::from_config()?.start().await?;
    let sent = running
        .template()
        .message("order-created")
        .key("order-1")
        .json(&OrderCreated { order_id: 1 })?
        .send()
        .await?;
    tracing::info!(id = %sent.message_id, queue = sent.queue_id, offset = sent.queue_offset, "order sent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.shutdown().await?;
    tracing::info!("the HTTP shop arrives with the demo-shop issue");
    Ok(())
}
