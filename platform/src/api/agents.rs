//! `/v1/agents`: create, list, get, update, archive, and the numbers
//! attached to an agent.
//!
//! Decisions where the reference is open: create answers 201; `PATCH`
//! changes only the fields sent, `null` clears the nullable ones
//! (`persona`, `webhook_url`, `primary_number_id`) and unknown fields are a
//! 400; archived agents are left out of the list unless
//! `include_archived=true`, cannot be changed or dispatched, and give up
//! their numbers; the first number attached becomes the primary unless one
//! is named; detaching the primary promotes the next attached number.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiQuery, Caller};
use crate::clock::Timestamp;
use crate::store::agents::{self, Agent, AgentFields};
use crate::store::{Tx, is_uuid, numbers};
use crate::validate;

/// The voice used when an agent names none: the provider's default voice.
pub const DEFAULT_VOICE: &str = "default";

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(get_agent, update_agent, archive_agent))
        .routes(routes!(attach_number))
        .routes(routes!(detach_number))
        .routes(routes!(set_primary_number))
}

/// A list of agents.
#[derive(Debug, serde::Serialize, ToSchema)]
struct AgentList {
    data: Vec<Agent>,
    has_more: bool,
}

/// Parameters of the agent list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Include archived agents (extension; default false).
    include_archived: Option<bool>,
}

/// List agents, newest first.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(ListParams),
    responses((status = 200, body = AgentList), (status = 401, body = ErrorBody)))]
async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> ApiResult<Json<AgentList>> {
    let data = agents::list(
        &state.store,
        &caller.org_id,
        params.include_archived.unwrap_or(false),
    )
    .await?;
    Ok(Json(AgentList {
        data,
        has_more: false,
    }))
}

/// The body of an agent creation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateAgent {
    /// A label.
    name: String,
    /// `inbound` or `outbound`.
    #[serde(rename = "type")]
    agent_type: String,
    persona: Option<String>,
    instructions: Option<String>,
    voice: Option<String>,
    /// BCP-47 (`en`, `es`; default `en`).
    language: Option<String>,
    #[schema(value_type = Option<Object>)]
    returns: Option<Value>,
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Value>,
    webhook_url: Option<String>,
    /// `hangup` (default) or `leave_message`.
    voicemail_action: Option<String>,
    /// Numbers to attach at creation.
    number_ids: Option<Vec<String>>,
    /// The primary number (must be among `number_ids`).
    primary_number_id: Option<String>,
}

fn check_fields(fields: &AgentFields) -> Result<(), ApiError> {
    let bad = ApiError::bad_request;
    validate::text("name", &fields.name, 200).map_err(bad)?;
    validate::one_of("type", &fields.agent_type, &["inbound", "outbound"]).map_err(bad)?;
    if let Some(persona) = &fields.persona {
        validate::max_len("persona", persona, 20_000).map_err(bad)?;
    }
    validate::max_len("instructions", &fields.instructions, 50_000).map_err(bad)?;
    validate::text("voice", &fields.voice, 100).map_err(bad)?;
    validate::language("language", &fields.language).map_err(bad)?;
    validate::returns("returns", &fields.returns).map_err(bad)?;
    validate::tools("tools", &fields.tools).map_err(bad)?;
    if let Some(url) = &fields.webhook_url {
        validate::http_url("webhook_url", url).map_err(bad)?;
    }
    validate::one_of(
        "voicemail_action",
        &fields.voicemail_action,
        &validate::VOICEMAIL_ACTIONS,
    )
    .map_err(bad)?;
    Ok(())
}

/// Create an agent, optionally attaching numbers.
#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = CreateAgent,
    responses((status = 201, body = Agent), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_agent(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateAgent>,
) -> ApiResult<(StatusCode, Json<Agent>)> {
    let fields = AgentFields {
        name: body.name,
        agent_type: body.agent_type,
        persona: body.persona,
        instructions: body.instructions.unwrap_or_default(),
        voice: body.voice.unwrap_or_else(|| DEFAULT_VOICE.into()),
        language: body.language.unwrap_or_else(|| "en".into()),
        returns: body.returns.unwrap_or_else(|| Value::Object(Map::new())),
        tools: body.tools.unwrap_or_else(|| Value::Array(Vec::new())),
        webhook_url: body.webhook_url,
        voicemail_action: body.voicemail_action.unwrap_or_else(|| "hangup".into()),
        primary_number_id: None,
    };
    check_fields(&fields)?;
    let number_ids = body.number_ids.unwrap_or_default();
    if let Some(primary) = &body.primary_number_id
        && !number_ids.contains(primary)
    {
        return Err(ApiError::bad_request(
            "primary_number_id must be one of number_ids",
        ));
    }
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let id = agents::insert(&mut tx, &caller.org_id, &caller.key_id, &fields, now).await?;
    let mut agent = agents::get(&mut tx, &caller.org_id, &id)
        .await?
        .ok_or_else(|| ApiError::internal(&"agent vanished"))?;
    for number_id in &number_ids {
        attach(&mut tx, &caller.org_id, &mut agent, number_id, now).await?;
    }
    if let Some(primary) = body.primary_number_id {
        agent.primary_number_id = Some(primary);
        agents::update(&mut tx, &id, &AgentFields::from(&agent), now).await?;
    }
    let agent = reload(&mut tx, &caller.org_id, &id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(agent)))
}

/// Attaches `number_id` to `agent` inside `tx`, claiming inbound routing for
/// inbound agents; the first number becomes the primary.
async fn attach(
    tx: &mut Tx,
    org_id: &str,
    agent: &mut Agent,
    number_id: &str,
    now: Timestamp,
) -> Result<(), ApiError> {
    let missing = || ApiError::bad_request(format!("number {number_id} not found"));
    if !is_uuid(number_id) {
        return Err(missing());
    }
    let number = numbers::get(tx, org_id, number_id)
        .await?
        .ok_or_else(missing)?;
    if number.status != "active" {
        return Err(ApiError::bad_request(format!(
            "number {number_id} is {}",
            number.status
        )));
    }
    if agent.is_inbound() && !numbers::claim_inbound(tx, number_id, &agent.id, now).await? {
        return Err(ApiError::conflict(format!(
            "number {} is already attached to inbound agent {}; a number has at most one inbound agent",
            number.e164,
            number.inbound_agent_id.unwrap_or_default()
        )));
    }
    agents::attach(tx, &agent.id, number_id, now).await?;
    if agent.primary_number_id.is_none() {
        agent.primary_number_id = Some(number_id.to_owned());
        agents::update(tx, &agent.id, &AgentFields::from(&*agent), now).await?;
    }
    Ok(())
}

async fn reload(tx: &mut Tx, org_id: &str, id: &str) -> Result<Agent, ApiError> {
    agents::get(tx, org_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent {id} not found")))
}

/// Loads a live (not archived) agent for a change.
async fn load_for_change(tx: &mut Tx, org_id: &str, id: &str) -> Result<Agent, ApiError> {
    if !is_uuid(id) {
        return Err(ApiError::not_found(format!("agent {id} not found")));
    }
    let agent = reload(tx, org_id, id).await?;
    if agent.archived_at.is_some() {
        return Err(ApiError::bad_request(format!("agent {id} is archived")));
    }
    Ok(agent)
}

/// Get an agent.
#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Agent>> {
    let mut conn = state.store.pool().acquire().await?;
    let agent = if is_uuid(&id) {
        agents::get(&mut conn, &caller.org_id, &id).await?
    } else {
        None
    };
    agent
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("agent {id} not found")))
}

/// Update an agent: only the fields sent change; `null` clears nullable ones.
/// Calls in progress keep the configuration they started with.
#[utoipa::path(patch, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    request_body(content = Object, description = "Any of the agent's writable fields"),
    responses((status = 200, body = Agent), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<Agent>> {
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let agent = load_for_change(&mut tx, &caller.org_id, &id).await?;
    let mut fields = AgentFields::from(&agent);
    for (key, value) in &body {
        apply_patch(&mut fields, key, value)?;
    }
    if let Some(primary) = &fields.primary_number_id
        && agent.primary_number_id.as_ref() != Some(primary)
        && !agent.numbers.iter().any(|n| &n.id == primary)
    {
        return Err(ApiError::bad_request(
            "primary_number_id must be a number attached to the agent",
        ));
    }
    check_fields(&fields)?;
    agents::update(&mut tx, &id, &fields, now).await?;
    let agent = reload(&mut tx, &caller.org_id, &id).await?;
    tx.commit().await?;
    Ok(Json(agent))
}

fn apply_patch(fields: &mut AgentFields, key: &str, value: &Value) -> Result<(), ApiError> {
    let string = |value: &Value| -> Result<String, ApiError> {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::bad_request(format!("{key} must be a string")))
    };
    let nullable = |value: &Value| -> Result<Option<String>, ApiError> {
        if value.is_null() {
            Ok(None)
        } else {
            string(value).map(Some)
        }
    };
    let not_null = || ApiError::bad_request(format!("{key} cannot be null"));
    match key {
        "name" if !value.is_null() => fields.name = string(value)?,
        "instructions" if !value.is_null() => fields.instructions = string(value)?,
        "voice" if !value.is_null() => fields.voice = string(value)?,
        "language" if !value.is_null() => fields.language = string(value)?,
        "voicemail_action" if !value.is_null() => fields.voicemail_action = string(value)?,
        "returns" => {
            fields.returns = if value.is_null() {
                Value::Object(Map::new())
            } else {
                value.clone()
            }
        }
        "tools" => {
            fields.tools = if value.is_null() {
                Value::Array(Vec::new())
            } else {
                value.clone()
            }
        }
        "name" | "instructions" | "voice" | "language" | "voicemail_action" => {
            return Err(not_null());
        }
        "persona" => fields.persona = nullable(value)?,
        "webhook_url" => fields.webhook_url = nullable(value)?,
        "primary_number_id" => fields.primary_number_id = nullable(value)?,
        "type" => {
            if value.as_str() != Some(fields.agent_type.as_str()) {
                return Err(ApiError::bad_request("type cannot change after creation"));
            }
        }
        "number_ids" => {
            return Err(ApiError::bad_request(
                "number_ids cannot be patched: use POST /v1/agents/{id}/numbers and DELETE /v1/agents/{id}/numbers/{number_id}",
            ));
        }
        other => return Err(ApiError::bad_request(format!("unknown field {other:?}"))),
    }
    Ok(())
}

/// Archive an agent (soft delete): it stops answering and cannot be
/// dispatched; its numbers are detached; its calls are kept.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
async fn archive_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Agent>> {
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    if !is_uuid(&id) {
        return Err(ApiError::not_found(format!("agent {id} not found")));
    }
    let agent = reload(&mut tx, &caller.org_id, &id).await?;
    if agent.archived_at.is_none() {
        agents::archive(&mut tx, &id, now).await?;
    }
    let agent = reload(&mut tx, &caller.org_id, &id).await?;
    tx.commit().await?;
    Ok(Json(agent))
}

/// The body of an attachment.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AttachRequest {
    /// The number to attach.
    number_id: String,
    /// Make it the agent's primary number.
    #[serde(default)]
    set_as_primary: bool,
}

/// Attach a number to an agent. A number has at most one inbound agent;
/// outbound agents may share numbers as caller ID.
#[utoipa::path(post, path = "/v1/agents/{id}/numbers", tag = "agents",
    params(("id" = String, Path, description = "Agent id")), request_body = AttachRequest,
    responses((status = 200, body = Agent), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn attach_number(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AttachRequest>,
) -> ApiResult<Json<Agent>> {
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let mut agent = load_for_change(&mut tx, &caller.org_id, &id).await?;
    attach(&mut tx, &caller.org_id, &mut agent, &body.number_id, now).await?;
    if body.set_as_primary {
        agent.primary_number_id = Some(body.number_id.clone());
        agents::update(&mut tx, &id, &AgentFields::from(&agent), now).await?;
    }
    let agent = reload(&mut tx, &caller.org_id, &id).await?;
    tx.commit().await?;
    Ok(Json(agent))
}

/// Detach a number from an agent.
#[utoipa::path(delete, path = "/v1/agents/{id}/numbers/{number_id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id"), ("number_id" = String, Path, description = "Number id")),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
async fn detach_number(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, number_id)): Path<(String, String)>,
) -> ApiResult<Json<Agent>> {
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let mut agent = load_for_change(&mut tx, &caller.org_id, &id).await?;
    if !agents::detach(&mut tx, &id, &number_id).await? {
        return Err(ApiError::not_found(format!(
            "number {number_id} is not attached to agent {id}"
        )));
    }
    numbers::release_inbound(&mut tx, &number_id, &id, now).await?;
    if agent.primary_number_id.as_deref() == Some(number_id.as_str()) {
        agent.primary_number_id = agent
            .numbers
            .iter()
            .map(|n| n.id.clone())
            .find(|n| *n != number_id);
        agents::update(&mut tx, &id, &AgentFields::from(&agent), now).await?;
    }
    let agent = reload(&mut tx, &caller.org_id, &id).await?;
    tx.commit().await?;
    Ok(Json(agent))
}

/// The body naming the primary number.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PrimaryRequest {
    /// An attached number.
    number_id: String,
}

/// Set the agent's primary number (it must be attached).
#[utoipa::path(put, path = "/v1/agents/{id}/primary-number", tag = "agents",
    params(("id" = String, Path, description = "Agent id")), request_body = PrimaryRequest,
    responses((status = 200, body = Agent), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_primary_number(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PrimaryRequest>,
) -> ApiResult<Json<Agent>> {
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let mut agent = load_for_change(&mut tx, &caller.org_id, &id).await?;
    if !agent.numbers.iter().any(|n| n.id == body.number_id) {
        return Err(ApiError::bad_request(format!(
            "number {} is not attached to agent {id}: attach it first",
            body.number_id
        )));
    }
    agent.primary_number_id = Some(body.number_id);
    agents::update(&mut tx, &id, &AgentFields::from(&agent), now).await?;
    let agent = reload(&mut tx, &caller.org_id, &id).await?;
    tx.commit().await?;
    Ok(Json(agent))
}
