//! Organizations: the tenants. Every other row belongs to one.

use sqlx::{AnyConnection, Row};

use super::{Store, StoreError, new_id};
use crate::clock::Timestamp;

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Credits, in milli-cents (holds not yet deducted).
    pub balance_milli_cents: i64,
    /// Credits held for live calls, in milli-cents.
    pub held_milli_cents: i64,
    /// The secret signing agent-level and per-call webhook deliveries.
    pub default_webhook_secret: String,
    /// When it was created.
    pub created_at: Timestamp,
}

impl Organization {
    /// Credits that can be held or spent: balance minus holds.
    pub fn available_milli_cents(&self) -> i64 {
        self.balance_milli_cents - self.held_milli_cents
    }
}

/// A new webhook signing secret: `whsec_` and 32 hex characters.
pub fn new_webhook_secret() -> String {
    let bytes: [u8; 16] = rand::random();
    format!("whsec_{}", hex::encode(bytes))
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<Organization, StoreError> {
    Ok(Organization {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        balance_milli_cents: row.try_get("balance_milli_cents")?,
        held_milli_cents: row.try_get("held_milli_cents")?,
        default_webhook_secret: row.try_get("default_webhook_secret")?,
        created_at: Timestamp(row.try_get("created_at")?),
    })
}

const COLUMNS: &str =
    "id, name, balance_milli_cents, held_milli_cents, default_webhook_secret, created_at";

/// Creates an organization with `starting_credit_milli_cents` (recorded in
/// the ledger as a grant).
pub async fn create(
    conn: &mut AnyConnection,
    name: &str,
    starting_credit_milli_cents: i64,
    now: Timestamp,
) -> Result<Organization, StoreError> {
    let org = Organization {
        id: new_id(),
        name: name.to_owned(),
        balance_milli_cents: 0,
        held_milli_cents: 0,
        default_webhook_secret: new_webhook_secret(),
        created_at: now,
    };
    sqlx::query(
        "INSERT INTO organizations (id, name, balance_milli_cents, held_milli_cents, \
         default_webhook_secret, created_at) VALUES ($1, $2, 0, 0, $3, $4)",
    )
    .bind(&org.id)
    .bind(&org.name)
    .bind(&org.default_webhook_secret)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    if starting_credit_milli_cents > 0 {
        super::ledger::add_credits(
            conn,
            &org.id,
            starting_credit_milli_cents,
            "free starting credit",
            now,
        )
        .await?;
    }
    get(conn, &org.id)
        .await?
        .ok_or_else(|| StoreError::Corrupt("organization vanished".into()))
}

/// The organization `id`.
pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<Organization>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM organizations WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The organization named `name`, if one exists (the oldest, if several).
pub async fn find_by_name(store: &Store, name: &str) -> Result<Option<Organization>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM organizations WHERE name = $1 ORDER BY created_at, id LIMIT 1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every organization, oldest first.
pub async fn list(store: &Store) -> Result<Vec<Organization>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM organizations ORDER BY created_at, id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(from_row).collect()
}

/// Replaces the default webhook signing secret; returns the new one.
pub async fn rotate_default_webhook_secret(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<String>, StoreError> {
    let secret = new_webhook_secret();
    let done = sqlx::query("UPDATE organizations SET default_webhook_secret = $1 WHERE id = $2")
        .bind(&secret)
        .bind(id)
        .execute(conn)
        .await?;
    Ok((done.rows_affected() == 1).then_some(secret))
}
