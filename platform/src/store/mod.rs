//! Storage: one set of migrations and one code path for SQLite (the
//! embedded default, a file under `./data`) and PostgreSQL (`DATABASE_URL`),
//! through sqlx's Any driver with runtime queries.
//!
//! Conventions: ids are UUID strings, times are unix microseconds
//! ([`Timestamp`]), JSON values are TEXT. Every API request that writes does
//! so in one transaction ([`Store::begin`]), so a failed request leaves
//! nothing half-written.

pub mod agents;
pub mod calls;
pub mod keys;
pub mod ledger;
pub mod numbers;
pub mod orgs;
pub mod transcripts;

use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};
use thiserror::Error;

use crate::clock::Timestamp;

/// A write transaction (SQLite: `BEGIN IMMEDIATE`, so it never fails to
/// upgrade a read lock half-way).
pub type Tx = Transaction<'static, Any>;

/// What went wrong in storage.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database answered with an error (or could not be reached).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back (bad JSON, unknown enum value).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database URL is not one we support.
    #[error("unsupported DATABASE_URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// Creating the SQLite file's folder failed.
    #[error("cannot create the database folder {path}: {source}")]
    Folder {
        /// The folder.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl StoreError {
    /// True when a unique constraint refused the write (a conflict).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                db.kind() == sqlx::error::ErrorKind::UniqueViolation
            }
            _ => false,
        }
    }
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Connects to `url` (`sqlite://path` creating the file and its folder,
    /// `sqlite::memory:`, or `postgres://...`) and applies the migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let mut url = url.to_owned();
        let mut max_connections = 16;
        if backend == Backend::Sqlite {
            if url.contains(":memory:") {
                // Each in-memory connection would be its own database.
                max_connections = 1;
            } else {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or(path);
                if let Some(folder) = Path::new(path).parent()
                    && !folder.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(folder).map_err(|source| StoreError::Folder {
                        path: folder.display().to_string(),
                        source,
                    })?;
                }
                if !url.contains("mode=") {
                    url.push_str(if url.contains('?') { "&" } else { "?" });
                    url.push_str("mode=rwc");
                }
            }
        }
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers never block the writer; the busy
                        // timeout queues writers instead of failing them.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    /// The database behind the pool.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool (reads).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A new random id (UUID v4, as the API's `string<uuid>` ids).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// True when `text` is a UUID (ids that cannot exist answer 404 without a query).
pub fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok()
}

/// A JSON column's text as a value.
pub(crate) fn parse_json(column: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt(format!("{column}: {err}")))
}

/// An optional timestamp column.
pub(crate) fn opt_ts(value: Option<i64>) -> Option<Timestamp> {
    value.map(Timestamp)
}

/// A page of a newest-first list, and whether more follow.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items, newest first.
    pub items: Vec<T>,
    /// More items exist past this page (in the direction it was read).
    pub has_more: bool,
}

/// Where a newest-first page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// The newest items.
    Start,
    /// Items older than the one with this `(created_at, id)`.
    After(Timestamp, String),
    /// Items newer than the one with this `(created_at, id)`.
    Before(Timestamp, String),
}

/// The WHERE clause, sort order and anchor of a newest-first page over
/// `column` (a time) and `id`. The anchor binds as `$2` (time) and `$3` (id);
/// at the start they are bound but compare to themselves.
pub(crate) fn page_clause(cursor: &Cursor, column: &str) -> (String, &'static str, i64, String) {
    match cursor {
        Cursor::Start => (
            "AND $2 = $2 AND $3 = $3".to_owned(),
            "DESC",
            0,
            String::new(),
        ),
        Cursor::After(at, id) => (
            format!("AND ({column} < $2 OR ({column} = $2 AND id < $3))"),
            "DESC",
            at.0,
            id.clone(),
        ),
        Cursor::Before(at, id) => (
            format!("AND ({column} > $2 OR ({column} = $2 AND id > $3))"),
            "ASC",
            at.0,
            id.clone(),
        ),
    }
}

/// The lists read newest first with cursors, and the time they sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `calls` by `created_at`.
    Calls,
    /// `phone_numbers` by `purchased_at`.
    PhoneNumbers,
    /// `webhook_deliveries` by `created_at`.
    WebhookDeliveries,
    /// `webhook_endpoints` by `created_at`.
    WebhookEndpoints,
}

impl Listing {
    /// The anchor query: the `(time, id)` of one row of an organization.
    fn anchor_sql(self) -> &'static str {
        match self {
            Listing::Calls => {
                "SELECT created_at AS at, id FROM calls WHERE id = $1 AND org_id = $2"
            }
            Listing::PhoneNumbers => {
                "SELECT purchased_at AS at, id FROM phone_numbers WHERE id = $1 AND org_id = $2"
            }
            Listing::WebhookDeliveries => {
                "SELECT created_at AS at, id FROM webhook_deliveries WHERE id = $1 AND org_id = $2"
            }
            Listing::WebhookEndpoints => {
                "SELECT created_at AS at, id FROM webhook_endpoints WHERE id = $1 AND org_id = $2"
            }
        }
    }
}

/// The `(time, id)` of the row `id` of `org_id` in `listing` (a cursor's anchor).
pub async fn cursor_anchor(
    store: &Store,
    listing: Listing,
    org_id: &str,
    id: &str,
) -> Result<Option<(Timestamp, String)>, StoreError> {
    use sqlx::Row;
    let row = sqlx::query(listing.anchor_sql())
        .bind(id)
        .bind(org_id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| Ok((Timestamp(r.try_get("at")?), r.try_get("id")?)))
        .transpose()
}

/// Makes a page of the `limit + 1` rows read for it: whether more follow,
/// and newest first again when it was read backwards (`ending_before`).
pub(crate) fn finish_page<T>(mut items: Vec<T>, limit: i64, cursor: &Cursor) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(0);
    let has_more = items.len() > limit;
    items.truncate(limit);
    if matches!(cursor, Cursor::Before(..)) {
        items.reverse();
    }
    Page { items, has_more }
}
