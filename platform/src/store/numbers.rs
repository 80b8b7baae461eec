//! Phone numbers an organization owns.

use serde::Serialize;
use serde_json::Value;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use super::{Cursor, Page, Store, StoreError, finish_page, new_id, opt_ts, page_clause};
use crate::clock::Timestamp;

/// A phone number (the API's PhoneNumber object).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PhoneNumber {
    /// Its id.
    pub id: String,
    /// The number, E.164.
    pub e164: String,
    /// A display label.
    pub friendly_name: Option<String>,
    /// ISO country code.
    pub country_code: String,
    /// `local` or `toll_free`.
    pub number_type: String,
    /// `active` or `released`.
    pub status: String,
    /// What it costs a month.
    pub monthly_cost_cents: i64,
    /// When it was bought.
    #[schema(value_type = String, format = DateTime)]
    pub purchased_at: Timestamp,
    /// The inbound agent answering it.
    pub inbound_agent_id: Option<String>,
    /// Outbound agents that use it as caller ID.
    pub outbound_agent_ids: Vec<String>,
    /// Prompt era: the number answers inbound calls with `inbound_prompt`.
    pub inbound_enabled: bool,
    /// Prompt era: the inbound prompt.
    pub inbound_prompt: Option<String>,
    /// Prompt era: the inbound `returns` schema.
    #[schema(value_type = Option<Object>)]
    pub inbound_returns: Option<Value>,
    /// Prompt era: the inbound webhook URL.
    pub inbound_webhook_url: Option<String>,
    /// Prompt era: the inbound language.
    pub inbound_language: Option<String>,
    /// Prompt era: the inbound tools.
    #[schema(value_type = Vec<Object>)]
    pub inbound_tools: Vec<Value>,
    /// Prompt era: the inbound voicemail action.
    pub inbound_voicemail_action: String,
    /// Which carrier serves it (`local` or `sip_trunk`). Extension.
    pub carrier: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub(crate) org_id: String,
    #[serde(skip)]
    #[schema(ignore)]
    pub(crate) released_at: Option<Timestamp>,
}

/// The prompt-era inbound configuration of a number (`PUT /v1/numbers/{id}/inbound`).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, Default)]
pub struct InboundConfig {
    /// Answer inbound calls.
    pub enabled: bool,
    /// The prompt.
    pub prompt: Option<String>,
    /// The `returns` schema.
    pub returns: Option<Value>,
    /// The webhook URL.
    pub webhook_url: Option<String>,
    /// The language.
    pub language: Option<String>,
    /// The tools.
    pub tools: Option<Vec<Value>>,
    /// The voicemail action.
    pub voicemail_action: Option<String>,
}

const COLUMNS: &str = "id, org_id, e164, friendly_name, country_code, number_type, status, \
    monthly_cost_cents, carrier, inbound_agent_id, inbound_config, purchased_at, released_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<PhoneNumber, StoreError> {
    let inbound: Option<String> = row.try_get("inbound_config")?;
    let inbound: InboundConfig = match inbound {
        Some(text) => serde_json::from_str(&text)
            .map_err(|err| StoreError::Corrupt(format!("inbound_config: {err}")))?,
        None => InboundConfig::default(),
    };
    Ok(PhoneNumber {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        e164: row.try_get("e164")?,
        friendly_name: row.try_get("friendly_name")?,
        country_code: row.try_get("country_code")?,
        number_type: row.try_get("number_type")?,
        status: row.try_get("status")?,
        monthly_cost_cents: row.try_get("monthly_cost_cents")?,
        carrier: row.try_get("carrier")?,
        purchased_at: Timestamp(row.try_get("purchased_at")?),
        released_at: opt_ts(row.try_get("released_at")?),
        inbound_agent_id: row.try_get("inbound_agent_id")?,
        outbound_agent_ids: Vec::new(),
        inbound_enabled: inbound.enabled,
        inbound_prompt: inbound.prompt,
        inbound_returns: inbound.returns,
        inbound_webhook_url: inbound.webhook_url,
        inbound_language: inbound.language,
        inbound_tools: inbound.tools.unwrap_or_default(),
        inbound_voicemail_action: inbound.voicemail_action.unwrap_or_else(|| "hangup".into()),
    })
}

/// Fills `outbound_agent_ids` of `numbers` (one query for all of them).
async fn fill_outbound_agents(
    conn: &mut AnyConnection,
    org_id: &str,
    numbers: &mut [PhoneNumber],
) -> Result<(), StoreError> {
    if numbers.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT an.number_id, an.agent_id FROM agent_numbers an JOIN agents a ON a.id = an.agent_id \
         WHERE a.org_id = $1 AND a.agent_type = 'outbound' AND a.archived_at IS NULL \
         ORDER BY an.attached_at, an.agent_id",
    )
    .bind(org_id)
    .fetch_all(conn)
    .await?;
    for row in rows {
        let number_id: String = row.try_get("number_id")?;
        let agent_id: String = row.try_get("agent_id")?;
        if let Some(number) = numbers.iter_mut().find(|n| n.id == number_id) {
            number.outbound_agent_ids.push(agent_id);
        }
    }
    Ok(())
}

/// What a purchase records.
#[derive(Debug, Clone)]
pub struct NewNumber<'a> {
    /// The number.
    pub e164: &'a str,
    /// Country.
    pub country_code: &'a str,
    /// `local` or `toll_free`.
    pub number_type: &'a str,
    /// Monthly cost.
    pub monthly_cost_cents: i64,
    /// Upfront cost.
    pub upfront_cost_cents: i64,
    /// The carrier.
    pub carrier: &'a str,
}

/// Records a purchased number (the caller charges for it in the same
/// transaction). A number already active elsewhere is a unique violation.
pub async fn insert(
    conn: &mut AnyConnection,
    org_id: &str,
    new: &NewNumber<'_>,
    now: Timestamp,
) -> Result<PhoneNumber, StoreError> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO phone_numbers (id, org_id, e164, country_code, number_type, status, \
         monthly_cost_cents, upfront_cost_cents, carrier, purchased_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $9)",
    )
    .bind(&id)
    .bind(org_id)
    .bind(new.e164)
    .bind(new.country_code)
    .bind(new.number_type)
    .bind(new.monthly_cost_cents)
    .bind(new.upfront_cost_cents)
    .bind(new.carrier)
    .bind(now.0)
    .execute(&mut *conn)
    .await?;
    get(conn, org_id, &id)
        .await?
        .ok_or_else(|| StoreError::Corrupt("number vanished".into()))
}

/// The number `id` of `org_id`.
pub async fn get(
    conn: &mut AnyConnection,
    org_id: &str,
    id: &str,
) -> Result<Option<PhoneNumber>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM phone_numbers WHERE id = $1 AND org_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(org_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(mut number) = row.as_ref().map(from_row).transpose()? else {
        return Ok(None);
    };
    fill_outbound_agents(conn, org_id, std::slice::from_mut(&mut number)).await?;
    Ok(Some(number))
}

/// The active number `e164` of `org_id`.
pub async fn find_active(
    conn: &mut AnyConnection,
    org_id: &str,
    e164: &str,
) -> Result<Option<PhoneNumber>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM phone_numbers WHERE e164 = $1 AND org_id = $2 AND status = 'active'"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(e164)
        .bind(org_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(mut number) = row.as_ref().map(from_row).transpose()? else {
        return Ok(None);
    };
    fill_outbound_agents(conn, org_id, std::slice::from_mut(&mut number)).await?;
    Ok(Some(number))
}

/// The active number `e164`, whoever owns it (inbound routing).
pub async fn find_active_any_org(
    store: &Store,
    e164: &str,
) -> Result<Option<PhoneNumber>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM phone_numbers WHERE e164 = $1 AND status = 'active'");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(e164)
        .fetch_optional(store.pool())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The oldest active number of `org_id` (the prompt era's default caller ID).
pub async fn oldest_active(
    conn: &mut AnyConnection,
    org_id: &str,
) -> Result<Option<PhoneNumber>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM phone_numbers WHERE org_id = $1 AND status = 'active' \
         ORDER BY purchased_at, id LIMIT 1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// A newest-first page of `org_id`'s active numbers.
pub async fn list(
    store: &Store,
    org_id: &str,
    cursor: &Cursor,
    limit: i64,
) -> Result<Page<PhoneNumber>, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let (filter, order, at, id) = page_clause(cursor, "purchased_at");
    let sql = format!(
        "SELECT {COLUMNS} FROM phone_numbers WHERE org_id = $1 AND status = 'active' {filter} \
         ORDER BY purchased_at {order}, id {order} LIMIT $4"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(at)
        .bind(id)
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let mut page = finish_page(items, limit, cursor);
    fill_outbound_agents(&mut conn, org_id, &mut page.items).await?;
    Ok(page)
}

/// Replaces the prompt-era inbound configuration.
pub async fn set_inbound_config(
    conn: &mut AnyConnection,
    org_id: &str,
    id: &str,
    config: &InboundConfig,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let text = serde_json::to_string(config)
        .map_err(|err| StoreError::Corrupt(format!("inbound_config: {err}")))?;
    let done = sqlx::query(
        "UPDATE phone_numbers SET inbound_config = $1, updated_at = $2 \
         WHERE id = $3 AND org_id = $4 AND status = 'active'",
    )
    .bind(text)
    .bind(now.0)
    .bind(id)
    .bind(org_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Points the number's inbound routing at `agent_id` if it has no other
/// inbound agent; false if another inbound agent holds it.
pub async fn claim_inbound(
    conn: &mut AnyConnection,
    number_id: &str,
    agent_id: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE phone_numbers SET inbound_agent_id = $1, updated_at = $2 \
         WHERE id = $3 AND (inbound_agent_id IS NULL OR inbound_agent_id = $1)",
    )
    .bind(agent_id)
    .bind(now.0)
    .bind(number_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Clears the number's inbound routing if `agent_id` holds it.
pub async fn release_inbound(
    conn: &mut AnyConnection,
    number_id: &str,
    agent_id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE phone_numbers SET inbound_agent_id = NULL, updated_at = $1 \
         WHERE id = $2 AND inbound_agent_id = $3",
    )
    .bind(now.0)
    .bind(number_id)
    .bind(agent_id)
    .execute(conn)
    .await?;
    Ok(())
}
