//! The PostgreSQL backend, for production and for several trackers sharing one database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{Backend, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Storage in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    const BACKEND: Backend = Backend::Postgres;

    /// Connects and runs the migrations (under PostgreSQL's migration lock, so several trackers
    /// may start at once).
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        Self::connect_in_schema(url, max_connections, None).await
    }

    /// Like [`PgStore::connect`], but keeps every table in `schema` (created if missing). Tests use
    /// this to run side by side in one database.
    pub async fn connect_in_schema(
        url: &str,
        max_connections: u32,
        schema: Option<&str>,
    ) -> StoreResult<Self> {
        let mut options = PgConnectOptions::from_str(url)?;
        if let Some(schema) = schema {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            // The schema name is ours (tests), never user input; quote it anyway.
            let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
                .execute(&admin)
                .await?;
            admin.close().await;
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// Drops a schema made by [`PgStore::connect_in_schema`] (tests clean up with it).
    pub async fn drop_schema(&self, schema: &str) -> StoreResult<()> {
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {quoted} CASCADE"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }
}

super::sql_store_impl!(PgStore);
