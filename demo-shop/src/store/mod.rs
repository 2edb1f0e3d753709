//! The shop's database through sqlx's `Any` driver: SQLite (the default, a file under
//! `data/`) or PostgreSQL (when several shop processes share the work), chosen by
//! `shop.database.url` and migrated at start-up. Queries use `$1`-style parameters, which both
//! understand.

mod fees;
mod orders;

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use fees::*;
pub use orders::*;

/// The shop's connection pool.
pub type Db = AnyPool;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn of(url: &str) -> Result<Backend, sqlx::Error> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(sqlx::Error::Configuration(
                format!("shop.database.url {url:?}: expected sqlite:... or postgres://...").into(),
            ))
        }
    }
}

/// Opens (creating a SQLite file if need be) the database at `url` and applies the migrations.
pub async fn open(url: &str) -> Result<Db, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    if backend == Backend::Sqlite {
        if let Some(dir) = sqlite_path(url).and_then(|p| p.parent().map(ToOwned::to_owned)) {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(&dir).map_err(sqlx::Error::Io)?;
            }
        }
    }
    let options: AnyConnectOptions = url.parse()?;
    let pool = match backend {
        // SQLite has one writer: one connection serialises transactions instead of failing
        // them with SQLITE_BUSY.
        Backend::Sqlite => AnyPoolOptions::new().max_connections(1).after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL;",
                )
                .await?;
                Ok(())
            })
        }),
        Backend::Postgres => AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10)),
    }
    .connect_with(options)
    .await?;
    match backend {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
        Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
    }
    Ok(pool)
}

/// The file of a `sqlite:` URL.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.into())
}

/// A business rule refused the change.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing with that id.
    #[error("{0} not found")]
    NotFound(String),
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A local transaction ran out of its time; whether it committed, check-back tells.
    #[error("the database did not answer in time")]
    TimedOut,
}
