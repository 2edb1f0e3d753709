//! The demo shop: an axum HTTP API for orders, payments, property fees and delayed cancellation
//! of unpaid orders, running on mq. Start it with `cargo run -p demo-shop`.

mod api;
mod domain;
mod listeners;
mod store;
mod transactions;

use std::time::Duration;

use mq_starter::{shutdown_signal, MqApplication};
use serde::Deserialize;

/// The shop's state, shared by listeners and the API.
#[derive(Clone)]
pub struct Shop {
    /// The shop's database.
    pub db: store::Db,
    /// How long an order may stay unpaid.
    pub cancel_after: Duration,
}

/// `shop:` in the configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ShopSettings {
    #[serde(default)]
    order: OrderSettings,
    #[serde(default)]
    database: DatabaseSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct DatabaseSettings {
    /// `sqlite://path` or `postgres://...`; by default `shop.db` beside the broker's data.
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct OrderSettings {
    #[serde(with = "humantime_serde", default = "default_cancel_after")]
    cancel_after: Duration,
}

impl Default for OrderSettings {
    fn default() -> Self {
        OrderSettings {
            cancel_after: default_cancel_after(),
        }
    }
}

fn default_cancel_after() -> Duration {
    Duration::from_secs(30 * 60)
}

/// `server:` in the configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSettings {
    addr: String,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        // Colours only on a terminal, not in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    if let Err(e) = run().await {
        tracing::error!("{e}");
        eprintln!("demo-shop: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let app = MqApplication::from_config()?;
    let shop_settings: ShopSettings = app.config().get_opt("shop")?.unwrap_or_default();
    let server: ServerSettings =
        app.config()
            .get_opt("server")?
            .unwrap_or_else(|| ServerSettings {
                addr: "127.0.0.1:8080".into(),
            });
    let url = match shop_settings.database.url {
        Some(url) => url,
        None => {
            let data_dir = &app.settings().broker.data_dir;
            let dir = data_dir.parent().unwrap_or(std::path::Path::new("."));
            format!("sqlite://{}?mode=rwc", dir.join("shop.db").display())
        }
    };
    let db = store::open(&url).await?;
    tracing::info!(database = %redact(&url), cancel_after = ?shop_settings.order.cancel_after, "shop database open");
    let shop_db = db.clone();
    let shop = Shop {
        db: db.clone(),
        cancel_after: shop_settings.order.cancel_after,
    };
    let running = app
        .with_state(shop.clone())
        .with_state(transactions::OrderCreatedTx { db: db.clone() })
        .with_state(transactions::OrderPaidTx { db: db.clone() })
        .with_state(transactions::FeePaidTx { db })
        .start()
        .await?;
    let state = api::ApiState {
        shop,
        template: running.template(),
        broker: running.broker(),
        metrics: running.metrics(),
    };
    let listener = tokio::net::TcpListener::bind(&server.addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "demo-shop listening");
    println!("listening on http://{addr}");
    // The admin API (/mq/api, console at /mq/) serves loopback clients by their address when
    // no mq.admin.token is set, so the connection's address goes with each request.
    axum::serve(
        listener,
        api::router(state, running.admin_router())
            .into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    tracing::info!("HTTP server stopped; stopping mq");
    running.shutdown().await?;
    // Checkpoints SQLite's write-ahead log into the database file.
    shop_db.close().await;
    Ok(())
}

/// A database URL without its password, for the log.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
