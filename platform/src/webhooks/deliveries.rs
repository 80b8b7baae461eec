//! The outbox: one delivery row per (event, destination), the leases the
//! workers take on due rows, and the record of every attempt.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use super::schedule;
use crate::clock::Timestamp;
use crate::store::{
    Backend, Cursor, Page, Store, StoreError, calls, finish_page, new_id, opt_ts, page_clause,
};

/// Waiting for its next attempt.
pub const PENDING: &str = "pending";
/// A 2xx came back.
pub const DELIVERED: &str = "delivered";
/// Every automatic attempt failed.
pub const EXHAUSTED: &str = "exhausted";
/// The delivery statuses.
pub const STATUSES: [&str; 3] = [PENDING, DELIVERED, EXHAUSTED];

/// A delivery (the API's WebhookDelivery object).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WebhookDelivery {
    /// Its id: the envelope's `id` and the `CallingBox-Event-Id` header.
    pub id: String,
    /// The organization.
    pub org_id: String,
    /// The endpoint; null for an inline delivery (the call's `webhook_url`).
    pub endpoint_id: Option<String>,
    /// The call the event is about.
    pub call_id: Option<String>,
    /// The event type.
    pub event_type: String,
    /// The destination, as it was when the event was emitted.
    pub url: String,
    /// `pending`, `delivered` or `exhausted`.
    pub status: String,
    /// Automatic attempts so far.
    pub attempt_count: i64,
    /// Times `/redeliver` was called.
    pub manual_retry_count: i64,
    /// When the next attempt is due.
    #[schema(value_type = String, format = DateTime)]
    pub next_attempt_at: Timestamp,
    /// A short error from the latest failed attempt.
    pub last_error: Option<String>,
    /// The HTTP status of the latest attempt.
    pub last_response_status: Option<i64>,
    /// The first successful delivery.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<Timestamp>,
    /// When the event was emitted.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

const COLUMNS: &str = "id, org_id, endpoint_id, call_id, event_type, url, status, attempt_count, \
    manual_retry_count, next_attempt_at, last_error, last_response_status, delivered_at, \
    created_at, updated_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<WebhookDelivery, StoreError> {
    Ok(WebhookDelivery {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        call_id: row.try_get("call_id")?,
        event_type: row.try_get("event_type")?,
        url: row.try_get("url")?,
        status: row.try_get("status")?,
        attempt_count: row.try_get("attempt_count")?,
        manual_retry_count: row.try_get("manual_retry_count")?,
        next_attempt_at: Timestamp(row.try_get("next_attempt_at")?),
        last_error: row.try_get("last_error")?,
        last_response_status: row.try_get("last_response_status")?,
        delivered_at: opt_ts(row.try_get("delivered_at")?),
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
    })
}

/// A delivery about to be recorded.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    /// Its id (also inside `payload`).
    pub id: &'a str,
    /// Organization.
    pub org_id: &'a str,
    /// Endpoint, or `None` for inline.
    pub endpoint_id: Option<&'a str>,
    /// The call.
    pub call_id: Option<&'a str>,
    /// Event type.
    pub event_type: &'a str,
    /// Destination.
    pub url: &'a str,
    /// The envelope, exactly as it will be sent.
    pub payload: &'a str,
}

/// Records a delivery due at once (inside the caller's transaction).
pub async fn insert(
    conn: &mut AnyConnection,
    new: &NewDelivery<'_>,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, org_id, endpoint_id, call_id, event_type, url, \
         payload, status, attempt_count, manual_retry_count, manual_pending, next_attempt_at, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, 0, 0, $8, $8, $8)",
    )
    .bind(new.id)
    .bind(new.org_id)
    .bind(new.endpoint_id)
    .bind(new.call_id)
    .bind(new.event_type)
    .bind(new.url)
    .bind(new.payload)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// The delivery `id` of `org_id`.
pub async fn get(
    conn: &mut AnyConnection,
    org_id: &str,
    id: &str,
) -> Result<Option<WebhookDelivery>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM webhook_deliveries WHERE id = $1 AND org_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(org_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The stored body of the delivery `id` (tests, the CLI).
pub async fn payload(store: &Store, id: &str) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT payload FROM webhook_deliveries WHERE id = $1")
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| r.try_get("payload").map_err(StoreError::from))
        .transpose()
}

/// Filters of the delivery list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this endpoint's deliveries.
    pub endpoint_id: Option<String>,
    /// Only this call's deliveries.
    pub call_id: Option<String>,
    /// Only this status.
    pub status: Option<String>,
}

/// A newest-first page of `org_id`'s deliveries.
pub async fn list(
    store: &Store,
    org_id: &str,
    filter: &DeliveryFilter,
    cursor: &Cursor,
    limit: i64,
) -> Result<Page<WebhookDelivery>, StoreError> {
    let (clause, order, at, id) = page_clause(cursor, "created_at");
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_deliveries WHERE org_id = $1 {clause} \
         AND ($4 = '' OR endpoint_id = $4) AND ($5 = '' OR call_id = $5) AND ($6 = '' OR status = $6) \
         ORDER BY created_at {order}, id {order} LIMIT $7"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(at)
        .bind(id)
        .bind(filter.endpoint_id.clone().unwrap_or_default())
        .bind(filter.call_id.clone().unwrap_or_default())
        .bind(filter.status.clone().unwrap_or_default())
        .bind(limit + 1)
        .fetch_all(store.pool())
        .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(finish_page(items, limit, cursor))
}

/// Queues a manual redelivery: back to `pending`, due now, the same id,
/// `manual_retry_count` + 1. `None` if there is no such delivery.
pub async fn redeliver(
    conn: &mut AnyConnection,
    org_id: &str,
    id: &str,
    now: Timestamp,
) -> Result<Option<WebhookDelivery>, StoreError> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', manual_pending = 1, \
         manual_retry_count = manual_retry_count + 1, next_attempt_at = $1, updated_at = $1 \
         WHERE id = $2 AND org_id = $3",
    )
    .bind(now.0)
    .bind(id)
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    get(conn, org_id, id).await
}

/// One attempt at a delivery (extension: `GET
/// /v1/webhook_deliveries/{id}/attempts`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    /// Its id.
    pub id: String,
    /// The delivery.
    pub delivery_id: String,
    /// A manual redelivery (not counted in `attempt_count`).
    pub manual: bool,
    /// The node that made it.
    pub node_id: String,
    /// When it started.
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    /// How long it took, milliseconds.
    pub duration_ms: i64,
    /// The HTTP status, if an answer came.
    pub response_status: Option<i64>,
    /// Why it failed (null on success).
    pub error: Option<String>,
    /// The first bytes of the response body.
    pub response_excerpt: Option<String>,
}

/// Every attempt at the delivery `id`, oldest first.
pub async fn attempts(store: &Store, id: &str) -> Result<Vec<DeliveryAttempt>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, delivery_id, manual, node_id, started_at, duration_ms, response_status, \
         error, response_excerpt FROM webhook_attempts WHERE delivery_id = $1 \
         ORDER BY started_at, id",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeliveryAttempt {
                id: r.try_get("id")?,
                delivery_id: r.try_get("delivery_id")?,
                manual: r.try_get::<i64, _>("manual")? != 0,
                node_id: r.try_get("node_id")?,
                started_at: Timestamp(r.try_get("started_at")?),
                duration_ms: r.try_get("duration_ms")?,
                response_status: r.try_get("response_status")?,
                error: r.try_get("error")?,
                response_excerpt: r.try_get("response_excerpt")?,
            })
        })
        .collect()
}

/// A delivery a worker holds a lease on.
#[derive(Debug, Clone)]
pub struct Leased {
    /// Its id.
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// Endpoint, or `None` for inline.
    pub endpoint_id: Option<String>,
    /// The call.
    pub call_id: Option<String>,
    /// Event type.
    pub event_type: String,
    /// Destination.
    pub url: String,
    /// The body.
    pub payload: String,
    /// Automatic attempts so far.
    pub attempt_count: i64,
    /// This attempt is a manual redelivery.
    pub manual: bool,
}

impl Leased {
    /// What the per-destination concurrency limit counts by: the endpoint,
    /// or the URL of an inline delivery.
    pub fn destination(&self) -> &str {
        self.endpoint_id.as_deref().unwrap_or(&self.url)
    }
}

/// Leases up to `limit` due deliveries to `owner` until `lease_until`,
/// at most `per_destination` per destination counting the `running`
/// ones, and none of disabled endpoints (their deliveries wait).
///
/// Two steps in one transaction: the due candidates are read (oldest due
/// first, and more than needed so one busy destination does not fill the
/// batch), picked per destination, then leased by a write that checks
/// again that each is still due and unleased. On PostgreSQL that write locks the rows
/// `FOR UPDATE SKIP LOCKED`, so nodes sharing the database never lease
/// the same row; on SQLite the write transaction is the lock.
pub async fn lease(
    store: &Store,
    owner: &str,
    now: Timestamp,
    lease_until: Timestamp,
    limit: usize,
    running: &HashMap<String, usize>,
    per_destination: usize,
) -> Result<Vec<Leased>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Both steps in one write transaction: on SQLite its BEGIN IMMEDIATE
    // waits for a transaction that is emitting (and has woken the worker)
    // to commit, so the candidates include its rows.
    let mut tx = store.begin().await?;
    let candidates = sqlx::query(
        "SELECT d.id, COALESCE(d.endpoint_id, d.url) AS destination FROM webhook_deliveries d \
         WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
         AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= $1) \
         AND (d.endpoint_id IS NULL OR d.endpoint_id IN \
              (SELECT e.id FROM webhook_endpoints e WHERE e.status = 'enabled')) \
         ORDER BY d.next_attempt_at, d.id LIMIT $2",
    )
    .bind(now.0)
    .bind(i64::try_from(limit.saturating_mul(4).max(32)).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await?;
    let mut counts = running.clone();
    let mut picked: Vec<String> = Vec::new();
    for row in &candidates {
        let destination: String = row.try_get("destination")?;
        let count = counts.entry(destination).or_default();
        if *count < per_destination {
            *count += 1;
            picked.push(row.try_get("id")?);
            if picked.len() == limit {
                break;
            }
        }
    }
    if picked.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (0..picked.len()).map(|i| format!("${}", i + 4)).collect();
    let lock = match store.backend() {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "UPDATE webhook_deliveries SET lease_owner = $1, lease_expires_at = $2 WHERE id IN (\
         SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $3 \
         AND (lease_expires_at IS NULL OR lease_expires_at <= $3) AND id IN ({}) {lock}) \
         RETURNING id, org_id, endpoint_id, call_id, event_type, url, payload, attempt_count, \
         manual_pending",
        marks.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(owner)
        .bind(lease_until.0)
        .bind(now.0);
    for id in &picked {
        query = query.bind(id);
    }
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            Ok(Leased {
                id: r.try_get("id")?,
                org_id: r.try_get("org_id")?,
                endpoint_id: r.try_get("endpoint_id")?,
                call_id: r.try_get("call_id")?,
                event_type: r.try_get("event_type")?,
                url: r.try_get("url")?,
                payload: r.try_get("payload")?,
                attempt_count: r.try_get("attempt_count")?,
                manual: r.try_get::<i64, _>("manual_pending")? != 0,
            })
        })
        .collect()
}

/// Gives back the leases `owner` holds on `ids` without an attempt (one
/// statement).
pub async fn release(store: &Store, owner: &str, ids: &[String]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "UPDATE webhook_deliveries SET lease_owner = NULL, lease_expires_at = NULL \
         WHERE lease_owner = $1 AND id IN ({})",
        marks.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(owner);
    for id in ids {
        query = query.bind(id);
    }
    query.execute(store.pool()).await?;
    Ok(())
}

/// Gives back every lease `owner` holds: a restarted node's attempts died
/// with the old process, so its rows are due again at once. Returns how
/// many.
pub async fn release_all(store: &Store, owner: &str) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET lease_owner = NULL, lease_expires_at = NULL \
         WHERE lease_owner = $1",
    )
    .bind(owner)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected())
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// When it started.
    pub started_at: Timestamp,
    /// How long it took, milliseconds.
    pub duration_ms: i64,
    /// The HTTP status, if an answer came.
    pub response_status: Option<u16>,
    /// `None` on a 2xx; otherwise why it failed.
    pub error: Option<String>,
    /// The first bytes of the answer.
    pub response_excerpt: Option<String>,
}

/// Where a delivery stands after [`record_attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAttempt {
    /// Delivered.
    Delivered,
    /// Failed; the next attempt is due then.
    Retry(Timestamp),
    /// Failed for the last time.
    Exhausted {
        /// The endpoint was disabled by this exhaustion.
        endpoint_disabled: bool,
    },
    /// The lease was lost (expired and taken by another worker): the
    /// attempt is recorded, the delivery left to its new holder.
    LeaseLost,
}

/// Records an attempt and moves the delivery on, in one transaction:
/// delivered on a 2xx (resetting the endpoint's failure count), otherwise
/// scheduled per the retry schedule (`retry_delay` picks the jittered
/// delay) or exhausted after the last attempt (counting towards the
/// endpoint's auto-disable). Inline deliveries update the call's
/// `webhook_status` and `webhook_error`.
pub async fn record_attempt(
    store: &Store,
    owner: &str,
    leased: &Leased,
    result: &AttemptResult,
    now: Timestamp,
    retry_delay: impl FnOnce(i64) -> Option<i64>,
) -> Result<AfterAttempt, StoreError> {
    let mut tx = store.begin().await?;
    let after = record_in(&mut tx, owner, leased, result, now, retry_delay).await?;
    tx.commit().await?;
    Ok(after)
}

/// Records several attempts as [`record_attempt`] does, in one
/// transaction (the worker batches the attempts that finish together, so
/// SQLite's single writer takes one lock for them).
pub async fn record_attempts(
    store: &Store,
    owner: &str,
    attempts: &[(Leased, AttemptResult)],
    now: Timestamp,
    retry_delay: impl Fn(i64) -> Option<i64>,
) -> Result<Vec<AfterAttempt>, StoreError> {
    let mut tx = store.begin().await?;
    let mut afters = Vec::with_capacity(attempts.len());
    for (leased, result) in attempts {
        afters.push(record_in(&mut tx, owner, leased, result, now, &retry_delay).await?);
    }
    tx.commit().await?;
    Ok(afters)
}

async fn record_in(
    tx: &mut AnyConnection,
    owner: &str,
    leased: &Leased,
    result: &AttemptResult,
    now: Timestamp,
    retry_delay: impl FnOnce(i64) -> Option<i64>,
) -> Result<AfterAttempt, StoreError> {
    sqlx::query(
        "INSERT INTO webhook_attempts (id, delivery_id, manual, node_id, started_at, duration_ms, \
         response_status, error, response_excerpt) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(new_id())
    .bind(&leased.id)
    .bind(i64::from(leased.manual))
    .bind(owner)
    .bind(result.started_at.0)
    .bind(result.duration_ms)
    .bind(result.response_status.map(i64::from))
    .bind(&result.error)
    .bind(&result.response_excerpt)
    .execute(&mut *tx)
    .await?;
    let attempts = leased.attempt_count + i64::from(!leased.manual);
    let status = result.response_status.map(i64::from);
    let after = match &result.error {
        None => AfterAttempt::Delivered,
        Some(_) => {
            // A manual attempt that fails goes back to where the automatic
            // schedule stood.
            match retry_delay(attempts.max(1)) {
                Some(delay) if attempts < schedule::MAX_ATTEMPTS => {
                    AfterAttempt::Retry(now.plus_micros(delay))
                }
                _ => AfterAttempt::Exhausted {
                    endpoint_disabled: false,
                },
            }
        }
    };
    let (new_status, next_at) = match &after {
        AfterAttempt::Delivered => (DELIVERED, now),
        AfterAttempt::Retry(at) => (PENDING, *at),
        _ => (EXHAUSTED, now),
    };
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = $1, attempt_count = $2, manual_pending = 0, \
         next_attempt_at = $3, last_error = $4, last_response_status = $5, \
         delivered_at = CASE WHEN $1 = 'delivered' THEN COALESCE(delivered_at, $6) ELSE delivered_at END, \
         lease_owner = NULL, lease_expires_at = NULL, updated_at = $6 \
         WHERE id = $7 AND lease_owner = $8",
    )
    .bind(new_status)
    .bind(attempts)
    .bind(next_at.0)
    .bind(&result.error)
    .bind(status)
    .bind(now.0)
    .bind(&leased.id)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(AfterAttempt::LeaseLost);
    }
    let mut after = after;
    if let Some(endpoint_id) = &leased.endpoint_id {
        match &mut after {
            AfterAttempt::Delivered => {
                sqlx::query(
                    "UPDATE webhook_endpoints SET consecutive_failures = 0 \
                     WHERE id = $1 AND consecutive_failures <> 0",
                )
                .bind(endpoint_id)
                .execute(&mut *tx)
                .await?;
            }
            AfterAttempt::Exhausted { endpoint_disabled } => {
                sqlx::query(
                    "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1 \
                     WHERE id = $1",
                )
                .bind(endpoint_id)
                .execute(&mut *tx)
                .await?;
                let disabled = sqlx::query(
                    "UPDATE webhook_endpoints SET status = 'disabled', \
                     disabled_reason = 'too_many_failures', disabled_at = $1, updated_at = $1 \
                     WHERE id = $2 AND status = 'enabled' AND consecutive_failures >= $3",
                )
                .bind(now.0)
                .bind(endpoint_id)
                .bind(schedule::DISABLE_AFTER_EXHAUSTED)
                .execute(&mut *tx)
                .await?;
                *endpoint_disabled = disabled.rows_affected() == 1;
            }
            _ => {}
        }
    } else if let Some(call_id) = &leased.call_id {
        let (webhook_status, error) = match &after {
            AfterAttempt::Delivered => ("delivered", None),
            AfterAttempt::Retry(_) => ("pending", result.error.as_deref()),
            _ => ("failed", result.error.as_deref()),
        };
        calls::set_webhook_status(tx, call_id, webhook_status, error, now).await?;
    }
    Ok(after)
}

/// Marks a leased delivery exhausted without an attempt (its endpoint was
/// deleted between the lease and the send).
pub async fn abandon(
    store: &Store,
    owner: &str,
    id: &str,
    reason: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'exhausted', last_error = $1, manual_pending = 0, \
         lease_owner = NULL, lease_expires_at = NULL, updated_at = $2 \
         WHERE id = $3 AND lease_owner = $4",
    )
    .bind(reason)
    .bind(now.0)
    .bind(id)
    .bind(owner)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// How many deliveries are in `status` (all organizations; tests, metrics).
pub async fn count_by_status(store: &Store, status: &str) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status = $1")
        .bind(status)
        .fetch_one(store.pool())
        .await?;
    Ok(row.try_get("n")?)
}
