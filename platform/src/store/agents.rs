//! Agents: reusable call configurations (persona, instructions, voice,
//! language, `returns`, tools, voicemail action, webhook) and the numbers
//! attached to them.

use serde::Serialize;
use serde_json::Value;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use super::numbers::{self, PhoneNumber};
use super::{Store, StoreError, new_id, opt_ts, parse_json};
use crate::clock::Timestamp;

/// An agent (the API's Agent object).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Agent {
    /// Its id.
    pub id: String,
    /// Its organization.
    pub org_id: String,
    /// Who created it (the API key's id).
    pub user_id: String,
    /// A label.
    pub name: String,
    /// `inbound` or `outbound`, fixed at creation.
    #[serde(rename = "type")]
    pub agent_type: String,
    /// Who the agent is; null for the default persona.
    pub persona: Option<String>,
    /// The task.
    pub instructions: String,
    /// The TTS voice.
    pub voice: String,
    /// BCP-47 language.
    pub language: String,
    /// The extraction schema.
    #[schema(value_type = Object)]
    pub returns: Value,
    /// In-call tools.
    #[schema(value_type = Vec<Object>)]
    pub tools: Value,
    /// Default webhook for this agent's calls.
    pub webhook_url: Option<String>,
    /// `hangup` or `leave_message`.
    pub voicemail_action: String,
    /// Default caller ID (outbound) or the number it owns (inbound).
    pub primary_number_id: Option<String>,
    /// When it was archived.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub archived_at: Option<Timestamp>,
    /// When it was created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Every attached number.
    pub numbers: Vec<PhoneNumber>,
}

impl Agent {
    /// True for inbound agents.
    pub fn is_inbound(&self) -> bool {
        self.agent_type == "inbound"
    }
}

const COLUMNS: &str = "id, org_id, user_id, name, agent_type, persona, instructions, voice, \
    language, returns_schema, tools, webhook_url, voicemail_action, primary_number_id, \
    archived_at, created_at, updated_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<Agent, StoreError> {
    Ok(Agent {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        agent_type: row.try_get("agent_type")?,
        persona: row.try_get("persona")?,
        instructions: row.try_get("instructions")?,
        voice: row.try_get("voice")?,
        language: row.try_get("language")?,
        returns: parse_json("returns", &row.try_get::<String, _>("returns_schema")?)?,
        tools: parse_json("tools", &row.try_get::<String, _>("tools")?)?,
        webhook_url: row.try_get("webhook_url")?,
        voicemail_action: row.try_get("voicemail_action")?,
        primary_number_id: row.try_get("primary_number_id")?,
        archived_at: opt_ts(row.try_get("archived_at")?),
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
        numbers: Vec::new(),
    })
}

/// The stored fields of an agent (all of them; updates rewrite the row).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentFields {
    /// Label.
    pub name: String,
    /// `inbound` / `outbound`.
    pub agent_type: String,
    /// Persona.
    pub persona: Option<String>,
    /// Instructions.
    pub instructions: String,
    /// Voice.
    pub voice: String,
    /// Language.
    pub language: String,
    /// `returns` schema.
    pub returns: Value,
    /// Tools (a JSON array).
    pub tools: Value,
    /// Webhook URL.
    pub webhook_url: Option<String>,
    /// Voicemail action.
    pub voicemail_action: String,
    /// Primary number.
    pub primary_number_id: Option<String>,
}

impl From<&Agent> for AgentFields {
    fn from(agent: &Agent) -> Self {
        AgentFields {
            name: agent.name.clone(),
            agent_type: agent.agent_type.clone(),
            persona: agent.persona.clone(),
            instructions: agent.instructions.clone(),
            voice: agent.voice.clone(),
            language: agent.language.clone(),
            returns: agent.returns.clone(),
            tools: agent.tools.clone(),
            webhook_url: agent.webhook_url.clone(),
            voicemail_action: agent.voicemail_action.clone(),
            primary_number_id: agent.primary_number_id.clone(),
        }
    }
}

/// Inserts an agent (numbers are attached separately).
pub async fn insert(
    conn: &mut AnyConnection,
    org_id: &str,
    user_id: &str,
    fields: &AgentFields,
    now: Timestamp,
) -> Result<String, StoreError> {
    let id = new_id();
    sqlx::query(
        "INSERT INTO agents (id, org_id, user_id, name, agent_type, persona, instructions, voice, \
         language, returns_schema, tools, webhook_url, voicemail_action, primary_number_id, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)",
    )
    .bind(&id)
    .bind(org_id)
    .bind(user_id)
    .bind(&fields.name)
    .bind(&fields.agent_type)
    .bind(&fields.persona)
    .bind(&fields.instructions)
    .bind(&fields.voice)
    .bind(&fields.language)
    .bind(fields.returns.to_string())
    .bind(fields.tools.to_string())
    .bind(&fields.webhook_url)
    .bind(&fields.voicemail_action)
    .bind(&fields.primary_number_id)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Rewrites the agent's fields (`agent_type` never changes).
pub async fn update(
    conn: &mut AnyConnection,
    id: &str,
    fields: &AgentFields,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE agents SET name = $1, persona = $2, instructions = $3, voice = $4, language = $5, \
         returns_schema = $6, tools = $7, webhook_url = $8, voicemail_action = $9, \
         primary_number_id = $10, updated_at = $11 WHERE id = $12",
    )
    .bind(&fields.name)
    .bind(&fields.persona)
    .bind(&fields.instructions)
    .bind(&fields.voice)
    .bind(&fields.language)
    .bind(fields.returns.to_string())
    .bind(fields.tools.to_string())
    .bind(&fields.webhook_url)
    .bind(&fields.voicemail_action)
    .bind(&fields.primary_number_id)
    .bind(now.0)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets `archived_at` and detaches every number (so they can route to
/// another agent); past calls keep their agent id.
pub async fn archive(conn: &mut AnyConnection, id: &str, now: Timestamp) -> Result<(), StoreError> {
    sqlx::query("UPDATE phone_numbers SET inbound_agent_id = NULL, updated_at = $1 WHERE inbound_agent_id = $2")
        .bind(now.0)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM agent_numbers WHERE agent_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE agents SET archived_at = $1, updated_at = $1, primary_number_id = NULL WHERE id = $2",
    )
    .bind(now.0)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an attachment (no-op if already attached). The caller claims
/// inbound routing first for inbound agents.
pub async fn attach(
    conn: &mut AnyConnection,
    agent_id: &str,
    number_id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let exists =
        sqlx::query("SELECT 1 AS one FROM agent_numbers WHERE agent_id = $1 AND number_id = $2")
            .bind(agent_id)
            .bind(number_id)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        sqlx::query(
            "INSERT INTO agent_numbers (agent_id, number_id, attached_at) VALUES ($1, $2, $3)",
        )
        .bind(agent_id)
        .bind(number_id)
        .bind(now.0)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Removes an attachment; false if it was not attached.
pub async fn detach(
    conn: &mut AnyConnection,
    agent_id: &str,
    number_id: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM agent_numbers WHERE agent_id = $1 AND number_id = $2")
        .bind(agent_id)
        .bind(number_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The agent `id` of `org_id`, with its numbers.
pub async fn get(
    conn: &mut AnyConnection,
    org_id: &str,
    id: &str,
) -> Result<Option<Agent>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM agents WHERE id = $1 AND org_id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(org_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(mut agent) = row.as_ref().map(from_row).transpose()? else {
        return Ok(None);
    };
    agent.numbers = attached_numbers(conn, org_id, &agent.id).await?;
    Ok(Some(agent))
}

async fn attached_numbers(
    conn: &mut AnyConnection,
    org_id: &str,
    agent_id: &str,
) -> Result<Vec<PhoneNumber>, StoreError> {
    let rows = sqlx::query(
        "SELECT number_id FROM agent_numbers WHERE agent_id = $1 ORDER BY attached_at, number_id",
    )
    .bind(agent_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut numbers = Vec::with_capacity(rows.len());
    for row in rows {
        let number_id: String = row.try_get("number_id")?;
        if let Some(number) = numbers::get(conn, org_id, &number_id).await? {
            numbers.push(number);
        }
    }
    Ok(numbers)
}

/// `org_id`'s agents, newest first (archived ones only if asked).
pub async fn list(
    store: &Store,
    org_id: &str,
    include_archived: bool,
) -> Result<Vec<Agent>, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM agents WHERE org_id = $1 AND ($2 = 1 OR archived_at IS NULL) \
         ORDER BY created_at DESC, id DESC"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(org_id)
        .bind(i64::from(include_archived))
        .fetch_all(&mut *conn)
        .await?;
    let mut agents = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    for agent in &mut agents {
        agent.numbers = attached_numbers(&mut conn, org_id, &agent.id).await?;
    }
    Ok(agents)
}
