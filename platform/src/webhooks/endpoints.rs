//! Account webhook endpoints: every call event of the organization fans out
//! to each enabled endpoint whose `enabled_events` match, signed with the
//! endpoint's own secret.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use crate::clock::Timestamp;
use crate::store::orgs::new_webhook_secret;
use crate::store::{
    Cursor, Page, Store, StoreError, finish_page, new_id, opt_ts, page_clause, parse_json,
};

/// `status` of an endpoint receiving events.
pub const ENABLED: &str = "enabled";
/// `status` of an endpoint receiving nothing (its deliveries wait).
pub const DISABLED: &str = "disabled";
/// `disabled_reason` set by the worker after too many exhausted deliveries.
pub const TOO_MANY_FAILURES: &str = "too_many_failures";
/// `disabled_reason` set by `PATCH {"status": "disabled"}`.
pub const MANUAL: &str = "manual";

/// A webhook endpoint (the API's WebhookEndpoint object).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WebhookEndpoint {
    /// Its id.
    pub id: String,
    /// The organization.
    pub org_id: String,
    /// Where events are POSTed.
    pub url: String,
    /// A note.
    pub description: Option<String>,
    /// The event types it receives; `["*"]` for all.
    pub enabled_events: Vec<String>,
    /// `enabled` or `disabled`.
    pub status: String,
    /// `too_many_failures` (automatic) or `manual`.
    pub disabled_reason: Option<String>,
    /// When it was disabled.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub disabled_at: Option<Timestamp>,
    /// Exhausted deliveries in a row (reset by any 2xx).
    pub consecutive_failures: i64,
    /// When it was created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// The signing secret: only in the answers to create and rotate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

impl WebhookEndpoint {
    /// True if it receives `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        wants(&self.enabled_events, event_type)
    }
}

fn wants(enabled_events: &[String], event_type: &str) -> bool {
    enabled_events.iter().any(|e| e == "*" || e == event_type)
}

const COLUMNS: &str = "id, org_id, url, description, enabled_events, status, disabled_reason, \
    disabled_at, consecutive_failures, created_at, updated_at";

fn events_from_text(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_value(parse_json("enabled_events", text)?)
        .map_err(|err| StoreError::Corrupt(format!("enabled_events: {err}")))
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<WebhookEndpoint, StoreError> {
    Ok(WebhookEndpoint {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        enabled_events: events_from_text(&row.try_get::<String, _>("enabled_events")?)?,
        status: row.try_get("status")?,
        disabled_reason: row.try_get("disabled_reason")?,
        disabled_at: opt_ts(row.try_get("disabled_at")?),
        consecutive_failures: row.try_get("consecutive_failures")?,
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
        signing_secret: None,
    })
}

/// The writable fields of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFields {
    /// Destination.
    pub url: String,
    /// A note.
    pub description: Option<String>,
    /// Event types, or `["*"]`.
    pub enabled_events: Vec<String>,
}

fn events_text(events: &[String]) -> String {
    serde_json::Value::from(events.to_vec()).to_string()
}

/// Creates an enabled endpoint with a fresh secret; the answer carries the
/// secret (the only time besides a rotation).
pub async fn insert(
    conn: &mut AnyConnection,
    org_id: &str,
    fields: &EndpointFields,
    now: Timestamp,
) -> Result<WebhookEndpoint, StoreError> {
    let id = new_id();
    let secret = new_webhook_secret();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, org_id, url, description, enabled_events, \
         signing_secret, status, consecutive_failures, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'enabled', 0, $7, $7)",
    )
    .bind(&id)
    .bind(org_id)
    .bind(&fields.url)
    .bind(&fields.description)
    .bind(events_text(&fields.enabled_events))
    .bind(&secret)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    let mut endpoint = get(conn, org_id, &id)
        .await?
        .ok_or_else(|| StoreError::Corrupt("webhook endpoint vanished".into()))?;
    endpoint.signing_secret = Some(secret);
    Ok(endpoint)
}

/// The endpoint `id` of `org_id`.
pub async fn get(
    conn: &mut AnyConnection,
    org_id: &str,
    id: &str,
) -> Result<Option<WebhookEndpoint>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1 AND org_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(org_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// A newest-first page of `org_id`'s endpoints.
pub async fn list(
    store: &Store,
    org_id: &str,
    cursor: &Cursor,
    limit: i64,
) -> Result<Page<WebhookEndpoint>, StoreError> {
    let (clause, order, at, id) = page_clause(cursor, "created_at");
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE org_id = $1 {clause} \
         ORDER BY created_at {order}, id {order} LIMIT $4"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(at)
        .bind(id)
        .bind(limit + 1)
        .fetch_all(store.pool())
        .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(finish_page(items, limit, cursor))
}

/// Replaces the writable fields.
pub async fn update(
    conn: &mut AnyConnection,
    id: &str,
    fields: &EndpointFields,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_endpoints SET url = $1, description = $2, enabled_events = $3, \
         updated_at = $4 WHERE id = $5",
    )
    .bind(&fields.url)
    .bind(&fields.description)
    .bind(events_text(&fields.enabled_events))
    .bind(now.0)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Enables the endpoint (zeroing its failure count and clearing the
/// reason), or disables it by hand.
pub async fn set_enabled(
    conn: &mut AnyConnection,
    id: &str,
    enabled: bool,
    now: Timestamp,
) -> Result<(), StoreError> {
    let sql = if enabled {
        "UPDATE webhook_endpoints SET status = 'enabled', disabled_reason = NULL, \
         disabled_at = NULL, consecutive_failures = 0, updated_at = $1 WHERE id = $2"
    } else {
        "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = 'manual', \
         disabled_at = $1, updated_at = $1 WHERE id = $2 AND status = 'enabled'"
    };
    sqlx::query(sql).bind(now.0).bind(id).execute(conn).await?;
    Ok(())
}

/// Replaces the secret; returns the endpoint with the new secret, or
/// `None` if there is no such endpoint. Old signatures stop verifying at
/// once: attempts sign with the secret current when they are made.
pub async fn rotate_secret(
    conn: &mut AnyConnection,
    org_id: &str,
    id: &str,
    now: Timestamp,
) -> Result<Option<WebhookEndpoint>, StoreError> {
    let secret = new_webhook_secret();
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET signing_secret = $1, updated_at = $2 \
         WHERE id = $3 AND org_id = $4",
    )
    .bind(&secret)
    .bind(now.0)
    .bind(id)
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    let mut endpoint = get(conn, org_id, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt("webhook endpoint vanished".into()))?;
    endpoint.signing_secret = Some(secret);
    Ok(Some(endpoint))
}

/// Deletes the endpoint; its pending deliveries are exhausted with
/// `last_error` "endpoint deleted" (they stay listed). False if absent.
pub async fn delete(
    conn: &mut AnyConnection,
    org_id: &str,
    id: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND org_id = $2")
        .bind(id)
        .bind(org_id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'exhausted', last_error = 'endpoint deleted', \
         manual_pending = 0, lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 \
         WHERE endpoint_id = $2 AND status = 'pending'",
    )
    .bind(now.0)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(true)
}

/// The `(id, url)` of every enabled endpoint of `org_id` that receives
/// `event_type`.
pub async fn matching(
    conn: &mut AnyConnection,
    org_id: &str,
    event_type: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, url, enabled_events FROM webhook_endpoints \
         WHERE org_id = $1 AND status = 'enabled' ORDER BY created_at, id",
    )
    .bind(org_id)
    .fetch_all(conn)
    .await?;
    let mut found = Vec::new();
    for row in rows {
        let events = events_from_text(&row.try_get::<String, _>("enabled_events")?)?;
        if wants(&events, event_type) {
            found.push((row.try_get("id")?, row.try_get("url")?));
        }
    }
    Ok(found)
}

/// The `(status, signing secret)` of each endpoint in `ids` that still
/// exists, whatever its organization (the worker's view, read once per
/// lease so a rotation applies to every attempt made after it).
pub async fn signing_states(
    store: &Store,
    ids: &[&str],
) -> Result<HashMap<String, (String, String)>, StoreError> {
    let mut found = HashMap::new();
    if ids.is_empty() {
        return Ok(found);
    }
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT id, status, signing_secret FROM webhook_endpoints WHERE id IN ({})",
        marks.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        query = query.bind(*id);
    }
    for row in query.fetch_all(store.pool()).await? {
        found.insert(
            row.try_get("id")?,
            (row.try_get("status")?, row.try_get("signing_secret")?),
        );
    }
    Ok(found)
}

/// The default signing secret of each organization in `org_ids` (inline
/// deliveries).
pub async fn default_secrets(
    store: &Store,
    org_ids: &[&str],
) -> Result<HashMap<String, String>, StoreError> {
    let mut found = HashMap::new();
    if org_ids.is_empty() {
        return Ok(found);
    }
    let marks: Vec<String> = (1..=org_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT id, default_webhook_secret FROM organizations WHERE id IN ({})",
        marks.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in org_ids {
        query = query.bind(*id);
    }
    for row in query.fetch_all(store.pool()).await? {
        found.insert(row.try_get("id")?, row.try_get("default_webhook_secret")?);
    }
    Ok(found)
}
