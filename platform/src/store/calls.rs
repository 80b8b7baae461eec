//! Calls: the record of every outbound and inbound call, its status
//! lifecycle, failure fields, result and billing.

use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use super::{Cursor, Page, Store, StoreError, finish_page, opt_ts, page_clause, parse_json};
use crate::clock::Timestamp;

/// Call statuses.
pub mod status {
    /// Created, credits held, waiting to go out.
    pub const QUEUED: &str = "queued";
    /// Handed to the carrier.
    pub const INITIATED: &str = "initiated";
    /// The far end rings.
    pub const RINGING: &str = "ringing";
    /// Answered; the conversation is live.
    pub const IN_PROGRESS: &str = "in_progress";
    /// Ended normally.
    pub const COMPLETED: &str = "completed";
    /// Nobody (or only a machine) answered.
    pub const NO_ANSWER: &str = "no_answer";
    /// Busy.
    pub const BUSY: &str = "busy";
    /// Canceled before the answer.
    pub const CANCELED: &str = "canceled";
    /// Failed (see the error fields).
    pub const FAILED: &str = "failed";
    /// Every terminal status.
    pub const TERMINAL: [&str; 5] = [COMPLETED, NO_ANSWER, BUSY, CANCELED, FAILED];

    /// True for the statuses a call ends in.
    pub fn is_terminal(status: &str) -> bool {
        TERMINAL.contains(&status)
    }
}

/// A call (the API's Call object).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Call {
    /// Its id.
    pub id: String,
    /// The agent that handled it (null for prompt-era calls).
    pub agent_id: Option<String>,
    /// `outbound` or `inbound`.
    pub direction: String,
    /// `queued`, `initiated`, `ringing`, `in_progress`, `completed`,
    /// `no_answer`, `busy`, `canceled` or `failed`.
    pub status: String,
    /// Destination, E.164.
    pub to_number: String,
    /// Caller ID, E.164.
    pub from_number: String,
    /// The persona used.
    pub persona: Option<String>,
    /// The instructions used.
    pub instructions: Option<String>,
    /// The rendered system prompt (prompt era: the prompt sent).
    pub prompt: String,
    /// Context the agent could see.
    #[schema(value_type = Object)]
    pub context: Value,
    /// The `returns` schema snapshot.
    #[schema(value_type = Object)]
    pub returns: Value,
    /// The extracted result.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// `pending`, `completed` or `failed`.
    pub result_status: String,
    /// Why extraction failed.
    pub result_error: Option<String>,
    /// Language code.
    pub language: String,
    /// The TTS voice. Extension.
    pub voice: String,
    /// `hangup` or `leave_message`. Extension.
    pub voicemail_action: String,
    /// The effective inline webhook URL.
    pub webhook_url: Option<String>,
    /// `none`, `pending`, `delivered` or `failed`.
    pub webhook_status: String,
    /// Error of the last failed inline delivery.
    pub webhook_error: Option<String>,
    /// Arbitrary metadata (with `language` copied in for SDK 0.1.0).
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Who answered: `human`, `machine` (voicemail; the call is then
    /// `no_answer`) or `unknown` (detection could not tell, or the call
    /// ended first). Outbound calls get it from answering-machine detection
    /// when they end; inbound calls are `human`; null until answered.
    pub answered_by: Option<String>,
    /// Telephony error code.
    pub error_code: Option<String>,
    /// Human-readable error.
    pub error_message: Option<String>,
    /// Telephony hangup reason.
    pub hangup_cause: Option<String>,
    /// `reserved`, `settled` or `released`.
    pub reservation_status: String,
    /// Total duration.
    pub duration_seconds: Option<i64>,
    /// Billable connected time.
    pub billed_duration_seconds: Option<i64>,
    /// Charge, milli-cents.
    pub billing_amount_milli_cents: Option<i64>,
    /// When it was created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it started ringing.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// When it was answered.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub answered_at: Option<Timestamp>,
    /// When it ended.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[serde(skip)]
    #[schema(ignore)]
    pub(crate) org_id: String,
    /// The in-call tools the call ran with.
    #[schema(value_type = Vec<Object>)]
    pub tools: Value,
    #[serde(skip)]
    #[schema(ignore)]
    pub(crate) hold_milli_cents: i64,
    #[serde(skip)]
    #[schema(ignore)]
    pub(crate) request_fingerprint: Option<String>,
}

impl Call {
    /// The organization.
    pub fn org_id(&self) -> &str {
        &self.org_id
    }

    /// The credits held for the call.
    pub fn hold_milli_cents(&self) -> i64 {
        self.hold_milli_cents
    }
}

const COLUMNS: &str = "id, org_id, agent_id, direction, status, to_number, from_number, persona, \
    instructions, prompt, context, returns_schema, result, result_status, result_error, language, \
    voice, tools, voicemail_action, webhook_url, webhook_status, webhook_error, metadata, \
    answered_by, error_code, error_message, hangup_cause, hold_milli_cents, reservation_status, \
    duration_seconds, billed_duration_seconds, billing_amount_milli_cents, request_fingerprint, \
    created_at, started_at, answered_at, ended_at, updated_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<Call, StoreError> {
    let language: String = row.try_get("language")?;
    let mut metadata = parse_json("metadata", &row.try_get::<String, _>("metadata")?)?;
    // SDK 0.1.0 reads the language from metadata.
    if let Value::Object(map) = &mut metadata
        && !map.contains_key("language")
    {
        map.insert("language".into(), Value::String(language.clone()));
    }
    let result: Option<String> = row.try_get("result")?;
    Ok(Call {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        agent_id: row.try_get("agent_id")?,
        direction: row.try_get("direction")?,
        status: row.try_get("status")?,
        to_number: row.try_get("to_number")?,
        from_number: row.try_get("from_number")?,
        persona: row.try_get("persona")?,
        instructions: row.try_get("instructions")?,
        prompt: row.try_get("prompt")?,
        context: parse_json("context", &row.try_get::<String, _>("context")?)?,
        returns: parse_json("returns", &row.try_get::<String, _>("returns_schema")?)?,
        result: result.map(|r| parse_json("result", &r)).transpose()?,
        result_status: row.try_get("result_status")?,
        result_error: row.try_get("result_error")?,
        language,
        voice: row.try_get("voice")?,
        tools: parse_json("tools", &row.try_get::<String, _>("tools")?)?,
        voicemail_action: row.try_get("voicemail_action")?,
        webhook_url: row.try_get("webhook_url")?,
        webhook_status: row.try_get("webhook_status")?,
        webhook_error: row.try_get("webhook_error")?,
        metadata,
        answered_by: row.try_get("answered_by")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        hangup_cause: row.try_get("hangup_cause")?,
        hold_milli_cents: row.try_get("hold_milli_cents")?,
        reservation_status: row.try_get("reservation_status")?,
        duration_seconds: row.try_get("duration_seconds")?,
        billed_duration_seconds: row.try_get("billed_duration_seconds")?,
        billing_amount_milli_cents: row.try_get("billing_amount_milli_cents")?,
        request_fingerprint: row.try_get("request_fingerprint")?,
        created_at: Timestamp(row.try_get("created_at")?),
        started_at: opt_ts(row.try_get("started_at")?),
        answered_at: opt_ts(row.try_get("answered_at")?),
        ended_at: opt_ts(row.try_get("ended_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
    })
}

/// A call about to be recorded.
#[derive(Debug, Clone)]
pub struct NewCall {
    /// Its id (chosen by the caller so the hold can name it).
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// Agent.
    pub agent_id: Option<String>,
    /// `outbound` / `inbound`.
    pub direction: String,
    /// Initial status.
    pub status: String,
    /// Destination.
    pub to_number: String,
    /// Caller ID.
    pub from_number: String,
    /// Persona.
    pub persona: Option<String>,
    /// Instructions.
    pub instructions: Option<String>,
    /// Rendered prompt.
    pub prompt: String,
    /// Context.
    pub context: Map<String, Value>,
    /// `returns`.
    pub returns: Value,
    /// Language.
    pub language: String,
    /// Voice.
    pub voice: String,
    /// Tools.
    pub tools: Value,
    /// Voicemail action.
    pub voicemail_action: String,
    /// Inline webhook URL.
    pub webhook_url: Option<String>,
    /// Metadata.
    pub metadata: Map<String, Value>,
    /// Credits held.
    pub hold_milli_cents: i64,
    /// `Idempotency-Key`, if sent.
    pub idempotency_key: Option<String>,
    /// A hash of the request body (a reused key with another body is refused).
    pub request_fingerprint: Option<String>,
    /// The serve node that will run it.
    pub node_id: Option<String>,
}

/// Records a new call.
pub async fn insert(
    conn: &mut AnyConnection,
    new: &NewCall,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO calls (id, org_id, agent_id, direction, status, to_number, from_number, \
         persona, instructions, prompt, context, returns_schema, result_status, language, voice, \
         tools, voicemail_action, webhook_url, webhook_status, metadata, hold_milli_cents, \
         reservation_status, idempotency_key, request_fingerprint, node_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'pending', $13, $14, $15, $16, \
         $17, $18, $19, $20, 'reserved', $21, $22, $23, $24, $24)",
    )
    .bind(&new.id)
    .bind(&new.org_id)
    .bind(&new.agent_id)
    .bind(&new.direction)
    .bind(&new.status)
    .bind(&new.to_number)
    .bind(&new.from_number)
    .bind(&new.persona)
    .bind(&new.instructions)
    .bind(&new.prompt)
    .bind(Value::Object(new.context.clone()).to_string())
    .bind(new.returns.to_string())
    .bind(&new.language)
    .bind(&new.voice)
    .bind(new.tools.to_string())
    .bind(&new.voicemail_action)
    .bind(&new.webhook_url)
    .bind(if new.webhook_url.is_some() { "pending" } else { "none" })
    .bind(Value::Object(new.metadata.clone()).to_string())
    .bind(new.hold_milli_cents)
    .bind(&new.idempotency_key)
    .bind(&new.request_fingerprint)
    .bind(&new.node_id)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// The call `id` of `org_id`.
pub async fn get(
    conn: &mut AnyConnection,
    org_id: &str,
    id: &str,
) -> Result<Option<Call>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE id = $1 AND org_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(org_id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The call `id`, whatever its organization (the dispatcher's view).
pub async fn get_any_org(conn: &mut AnyConnection, id: &str) -> Result<Option<Call>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The call an `Idempotency-Key` already created.
pub async fn find_by_idempotency_key(
    conn: &mut AnyConnection,
    org_id: &str,
    key: &str,
) -> Result<Option<Call>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE org_id = $1 AND idempotency_key = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(key)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Filters of the call list (extensions beyond the reference).
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    /// Only this agent's calls.
    pub agent_id: Option<String>,
    /// Only `inbound` or `outbound`.
    pub direction: Option<String>,
    /// Only this status.
    pub status: Option<String>,
}

/// A newest-first page of `org_id`'s calls.
pub async fn list(
    store: &Store,
    org_id: &str,
    filter: &CallFilter,
    cursor: &Cursor,
    limit: i64,
) -> Result<Page<Call>, StoreError> {
    let (clause, order, at, id) = page_clause(cursor, "created_at");
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE org_id = $1 {clause} \
         AND ($4 = '' OR agent_id = $4) AND ($5 = '' OR direction = $5) AND ($6 = '' OR status = $6) \
         ORDER BY created_at {order}, id {order} LIMIT $7"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(at)
        .bind(id)
        .bind(filter.agent_id.clone().unwrap_or_default())
        .bind(filter.direction.clone().unwrap_or_default())
        .bind(filter.status.clone().unwrap_or_default())
        .bind(limit + 1)
        .fetch_all(store.pool())
        .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(finish_page(items, limit, cursor))
}

/// Moves a live call to `status` (ringing, initiated, in progress) and
/// stamps the matching time; false if the call already ended.
pub async fn advance(
    conn: &mut AnyConnection,
    id: &str,
    new_status: &str,
    answered_by: Option<&str>,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let sql = match new_status {
        status::RINGING => {
            "UPDATE calls SET status = $1, started_at = COALESCE(started_at, $2), updated_at = $2, \
             answered_by = COALESCE($3, answered_by) WHERE id = $4 AND status IN ('queued', 'initiated')"
        }
        status::IN_PROGRESS => {
            "UPDATE calls SET status = $1, started_at = COALESCE(started_at, $2), \
             answered_at = COALESCE(answered_at, $2), updated_at = $2, \
             answered_by = COALESCE($3, answered_by) \
             WHERE id = $4 AND status IN ('queued', 'initiated', 'ringing')"
        }
        _ => {
            "UPDATE calls SET status = $1, updated_at = $2, answered_by = COALESCE($3, answered_by) \
             WHERE id = $4 AND status IN ('queued', 'initiated', 'ringing', 'in_progress')"
        }
    };
    let done = sqlx::query(sql)
        .bind(new_status)
        .bind(now.0)
        .bind(answered_by)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How a call ended.
#[derive(Debug, Clone, Default)]
pub struct CallEnding {
    /// The terminal status.
    pub status: String,
    /// `human` / `machine`, if known.
    pub answered_by: Option<String>,
    /// Telephony error code.
    pub error_code: Option<String>,
    /// Human-readable error.
    pub error_message: Option<String>,
    /// Hangup reason.
    pub hangup_cause: Option<String>,
    /// Connected seconds billed.
    pub billed_duration_seconds: i64,
    /// Charge.
    pub billing_amount_milli_cents: i64,
    /// `settled` (charged) or `released`.
    pub reservation_status: String,
}

/// Ends a live call; false if it had already ended (nothing written).
pub async fn end(
    conn: &mut AnyConnection,
    id: &str,
    ending: &CallEnding,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE calls SET status = $1, answered_by = COALESCE($2, answered_by), error_code = $3, \
         error_message = $4, hangup_cause = $5, billed_duration_seconds = $6, \
         billing_amount_milli_cents = $7, reservation_status = $8, ended_at = $9, \
         duration_seconds = ($9 - COALESCE(started_at, created_at)) / 1000000, updated_at = $9 \
         WHERE id = $10 AND status NOT IN ('completed', 'no_answer', 'busy', 'canceled', 'failed')",
    )
    .bind(&ending.status)
    .bind(&ending.answered_by)
    .bind(&ending.error_code)
    .bind(&ending.error_message)
    .bind(&ending.hangup_cause)
    .bind(ending.billed_duration_seconds)
    .bind(ending.billing_amount_milli_cents)
    .bind(&ending.reservation_status)
    .bind(now.0)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the extraction's outcome.
pub async fn set_result(
    conn: &mut AnyConnection,
    id: &str,
    result: Option<&Value>,
    result_status: &str,
    result_error: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE calls SET result = $1, result_status = $2, result_error = $3, updated_at = $4 WHERE id = $5",
    )
    .bind(result.map(Value::to_string))
    .bind(result_status)
    .bind(result_error)
    .bind(now.0)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the latest inline webhook delivery's state on the call.
pub async fn set_webhook_status(
    conn: &mut AnyConnection,
    id: &str,
    webhook_status: &str,
    webhook_error: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE calls SET webhook_status = $1, webhook_error = $2, updated_at = $3 WHERE id = $4",
    )
    .bind(webhook_status)
    .bind(webhook_error)
    .bind(now.0)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Live calls (not ended) assigned to `node_id`, oldest first.
pub async fn live_on_node(store: &Store, node_id: &str) -> Result<Vec<Call>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE node_id = $1 \
         AND status IN ('queued', 'initiated', 'ringing', 'in_progress') ORDER BY created_at, id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(node_id)
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(from_row).collect()
}

/// Calls that ended with a conversation but whose result is still pending
/// (extraction interrupted by a restart).
pub async fn awaiting_extraction(store: &Store, node_id: &str) -> Result<Vec<Call>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE node_id = $1 AND status = 'completed' \
         AND result_status = 'pending' ORDER BY created_at, id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(node_id)
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(from_row).collect()
}
