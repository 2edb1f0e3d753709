//! The README's example: one listener, one message, on the embedded broker.
//!
//! Run with `cargo run -p mq-starter --example quickstart` (data goes to `data/mq`, settings
//! come from `config/` when present).

use std::time::Duration;

use mq_starter::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone)]
struct Shop {
    name: String,
}

#[derive(Serialize, Deserialize)]
struct OrderCreated {
    order_id: u64,
    total_cents: u64,
}

#[mq_listener(topic = "order", group = "points", tag = "created")]
async fn credit_points(
    State(shop): State<Shop>,
    Json(order): Json<OrderCreated>,
    msg: MessageView,
) -> Result<(), String> {
    println!(
        "{}: order {} ({} cents), attempt {}",
        shop.name,
        order.order_id,
        order.total_cents,
        msg.attempt()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let running = MqApplication::from_config()?
        .with_state(Shop {
            name: "demo".into(),
        })
        .start()
        .await?;
    running
        .template()
        .send(
            "order:created",
            &OrderCreated {
                order_id: 1,
                total_cents: 4200,
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.shutdown().await?;
    Ok(())
}
