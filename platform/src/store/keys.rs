//! API keys: `sk_live_` and 40 random characters, shown once, stored only as
//! a SHA-256 hash (the key has 238 bits of entropy, so a fast hash is safe
//! and lets every request find its key by hash in one indexed lookup).

use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use super::{Store, StoreError, new_id, opt_ts};
use crate::clock::Timestamp;

/// The prefix of every live key.
pub const KEY_PREFIX: &str = "sk_live_";

/// An API key's stored record (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id.
    pub id: String,
    /// The organization it acts for.
    pub org_id: String,
    /// Its name.
    pub name: String,
    /// The key's first 12 characters, to recognise it.
    pub prefix: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// When it last authenticated a request.
    pub last_used_at: Option<Timestamp>,
}

/// The hash a key is stored and found by.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn new_secret_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let body: String = (0..40)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("{KEY_PREFIX}{body}")
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        created_at: Timestamp(row.try_get("created_at")?),
        expires_at: opt_ts(row.try_get("expires_at")?),
        revoked_at: opt_ts(row.try_get("revoked_at")?),
        last_used_at: opt_ts(row.try_get("last_used_at")?),
    })
}

/// Creates a key; returns its record and the key (the only time it exists
/// in the clear).
pub async fn create(
    conn: &mut AnyConnection,
    org_id: &str,
    name: &str,
    expires_at: Option<Timestamp>,
    now: Timestamp,
) -> Result<(ApiKey, String), StoreError> {
    let secret = new_secret_key();
    let record = ApiKey {
        id: new_id(),
        org_id: org_id.to_owned(),
        name: name.to_owned(),
        prefix: secret.chars().take(12).collect(),
        created_at: now,
        expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    sqlx::query(
        "INSERT INTO api_keys (id, org_id, name, prefix, key_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&record.id)
    .bind(&record.org_id)
    .bind(&record.name)
    .bind(&record.prefix)
    .bind(hash_key(&secret))
    .bind(now.0)
    .bind(expires_at.map(|t| t.0))
    .execute(conn)
    .await?;
    Ok((record, secret))
}

/// The key that `secret` is, if it exists, is not revoked and has not
/// expired at `now`.
pub async fn authenticate(
    store: &Store,
    secret: &str,
    now: Timestamp,
) -> Result<Option<ApiKey>, StoreError> {
    let row = sqlx::query(
        "SELECT id, org_id, name, prefix, created_at, expires_at, revoked_at, last_used_at \
         FROM api_keys WHERE key_hash = $1",
    )
    .bind(hash_key(secret))
    .fetch_optional(store.pool())
    .await?;
    let Some(key) = row.as_ref().map(from_row).transpose()? else {
        return Ok(None);
    };
    if key.revoked_at.is_some() || key.expires_at.is_some_and(|at| at <= now) {
        return Ok(None);
    }
    Ok(Some(key))
}

/// Every key of `org_id` (or of all organizations), newest first.
pub async fn list(store: &Store, org_id: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, org_id, name, prefix, created_at, expires_at, revoked_at, last_used_at \
         FROM api_keys WHERE ($1 IS NULL OR org_id = $1) ORDER BY created_at DESC, id DESC",
    )
    .bind(org_id)
    .fetch_all(store.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Revokes the key `id`; false if no such live key. Takes effect on the next request: nothing caches keys.
pub async fn revoke(
    conn: &mut AnyConnection,
    id: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now.0)
            .bind(id)
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}
