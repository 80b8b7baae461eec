//! `/v1/calls`: dispatch (agent era and the prompt era SDK 0.1.0 speaks),
//! get, list, transcript, and cancel (extension).
//!
//! Decisions where the reference is open: a dispatch answers 201 with the
//! call `queued`; the carrier's answer arrives as status changes (webhooks,
//! polling), never as a failed request; not enough credits for the hold is
//! 402; per-call `persona`, `voice`, `language`, `returns`, `tools` and
//! `voicemail_action` with `agent_id` are a 400 (they live on the agent);
//! `Idempotency-Key` replays the first call for the same body and is a 409
//! for another body.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::pagination::{ListPage, PageParams};
use crate::billing::calls_paused_message;
use crate::lifecycle;
use crate::store::calls::{self, Call, CallFilter, NewCall, status};
use crate::store::transcripts::{self, Segment};
use crate::store::{Listing, agents, is_uuid, ledger, new_id, numbers, orgs};
use crate::validate;

/// The prompt-era default prompt.
pub const DEFAULT_PROMPT: &str = "Hello from CallingBox.";

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_calls, create_call))
        .routes(routes!(get_call))
        .routes(routes!(get_transcript))
        .routes(routes!(cancel_call))
}

/// The agent-era dispatch body (the prompt era's body is also accepted:
/// `to`, `prompt`, `context`, `returns`, `language`, `from_number`,
/// `webhook_url`, `voicemail_action`, `tools`).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
struct DispatchRequest {
    /// An outbound agent.
    agent_id: Option<String>,
    /// Who to call, E.164.
    to: String,
    /// Caller ID: a number attached to the agent (default: its primary).
    from_number: Option<String>,
    /// Replaces the agent's instructions for this call.
    instructions: Option<String>,
    /// JSON the agent can see during the call.
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    /// Overrides the agent's webhook for this call.
    webhook_url: Option<String>,
    /// Key/value pairs kept on the call.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// Prompt era: the instructions.
    prompt: Option<String>,
}

struct Body {
    fields: Map<String, Value>,
}

impl Body {
    fn take_string(&mut self, key: &str) -> Result<Option<String>, ApiError> {
        match self.fields.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
        }
    }

    fn take_object(&mut self, key: &str) -> Result<Map<String, Value>, ApiError> {
        match self.fields.remove(key) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(map)) => Ok(map),
            Some(_) => Err(ApiError::bad_request(format!(
                "{key} must be a JSON object"
            ))),
        }
    }

    fn reject_rest(self) -> Result<(), ApiError> {
        match self.fields.keys().next() {
            Some(key) => Err(ApiError::bad_request(format!("unknown field {key:?}"))),
            None => Ok(()),
        }
    }
}

/// Dispatch an outbound call.
#[utoipa::path(post, path = "/v1/calls", tag = "calls", request_body = DispatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first call made with this key")),
    responses((status = 201, body = Call), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_call(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(fields): ApiJson<Map<String, Value>>,
) -> ApiResult<(StatusCode, Json<Call>)> {
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be text"))?
                .trim()
                .to_owned();
            if key.is_empty() || key.len() > 255 {
                return Err(ApiError::bad_request(
                    "Idempotency-Key must be 1-255 characters",
                ));
            }
            Some(key)
        }
    };
    let fingerprint = hex::encode(Sha256::digest(Value::Object(fields.clone()).to_string()));
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    if let Some(key) = &idempotency_key
        && let Some(existing) = calls::find_by_idempotency_key(&mut tx, &caller.org_id, key).await?
    {
        return replay(existing, &fingerprint);
    }
    let mut body = Body { fields };
    let call_id = new_id();
    let mut new = if body.fields.contains_key("agent_id") {
        agent_call(&mut tx, &caller, &mut body).await?
    } else {
        prompt_call(&mut tx, &caller, &mut body).await?
    };
    body.reject_rest()?;
    new.id = call_id.clone();
    new.org_id = caller.org_id.clone();
    new.idempotency_key = idempotency_key.clone();
    new.request_fingerprint = Some(fingerprint.clone());
    new.node_id = Some(state.node_id.clone());
    new.hold_milli_cents = state.pricing.call_hold();

    if !ledger::try_hold(&mut tx, &caller.org_id, &call_id, new.hold_milli_cents, now).await? {
        let org = orgs::get(&mut tx, &caller.org_id)
            .await?
            .ok_or_else(|| ApiError::internal(&"org vanished"))?;
        return Err(ApiError::payment_required(calls_paused_message(
            org.available_milli_cents(),
            new.hold_milli_cents,
        )));
    }
    match calls::insert(&mut tx, &new, now).await {
        Ok(()) => {}
        Err(err) if err.is_unique_violation() && idempotency_key.is_some() => {
            // A concurrent request with the same key won the race.
            drop(tx);
            let mut conn = state.store.pool().acquire().await?;
            let key = idempotency_key.unwrap_or_default();
            let existing = calls::find_by_idempotency_key(&mut conn, &caller.org_id, &key)
                .await?
                .ok_or_else(|| ApiError::internal(&"idempotent call vanished"))?;
            return replay(existing, &fingerprint);
        }
        Err(err) => return Err(err.into()),
    }
    let call = lifecycle::queued(&mut tx, &call_id, now).await?;
    tx.commit().await?;
    state.launcher.launch(&call.id);
    Ok((StatusCode::CREATED, Json(call)))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

fn replay(existing: Call, fingerprint: &str) -> ApiResult<(StatusCode, Json<Call>)> {
    if existing.request_fingerprint.as_deref() != Some(fingerprint) {
        return Err(ApiError::conflict(
            "this Idempotency-Key was used with a different request body",
        ));
    }
    Ok((StatusCode::CREATED, Json(existing)))
}

const AGENT_OWNED: [&str; 6] = [
    "persona",
    "voice",
    "language",
    "returns",
    "tools",
    "voicemail_action",
];

async fn agent_call(
    tx: &mut crate::store::Tx,
    caller: &Caller,
    body: &mut Body,
) -> Result<NewCall, ApiError> {
    for key in AGENT_OWNED {
        if body.fields.contains_key(key) {
            return Err(bad(format!(
                "{key} is set on the agent, not per call: update the agent instead"
            )));
        }
    }
    if body.fields.contains_key("prompt") {
        return Err(bad("send agent_id or prompt, not both"));
    }
    let agent_id = body
        .take_string("agent_id")?
        .ok_or_else(|| bad("agent_id is required"))?;
    let to = body
        .take_string("to")?
        .ok_or_else(|| bad("to is required"))?;
    validate::e164("to", &to).map_err(bad)?;
    let not_found = || bad(format!("agent {agent_id} not found"));
    if !is_uuid(&agent_id) {
        return Err(not_found());
    }
    let agent = agents::get(tx, &caller.org_id, &agent_id)
        .await?
        .ok_or_else(not_found)?;
    if agent.archived_at.is_some() {
        return Err(bad(format!("agent {agent_id} is archived")));
    }
    if agent.is_inbound() {
        return Err(bad(format!(
            "agent {agent_id} is an inbound agent: dispatch needs an outbound agent"
        )));
    }
    let from_number = match body.take_string("from_number")? {
        Some(from) => {
            validate::e164("from_number", &from).map_err(bad)?;
            if !agent.numbers.iter().any(|n| n.e164 == from) {
                return Err(bad(format!(
                    "from_number {from} is not attached to agent {agent_id}"
                )));
            }
            from
        }
        None => {
            let primary = agent
                .primary_number_id
                .as_ref()
                .and_then(|id| agent.numbers.iter().find(|n| &n.id == id))
                .or_else(|| agent.numbers.first())
                .ok_or_else(|| bad(format!(
                    "agent {agent_id} has no phone number: attach one (POST /v1/agents/{agent_id}/numbers)"
                )))?;
            primary.e164.clone()
        }
    };
    let instructions = match body.take_string("instructions")? {
        Some(text) => {
            validate::max_len("instructions", &text, 50_000).map_err(bad)?;
            text
        }
        None => agent.instructions.clone(),
    };
    let context = body.take_object("context")?;
    let metadata = body.take_object("metadata")?;
    let webhook_url = match body.take_string("webhook_url")? {
        Some(url) => {
            validate::http_url("webhook_url", &url).map_err(bad)?;
            Some(url)
        }
        None => agent.webhook_url.clone(),
    };
    let prompt = lifecycle::render_prompt(agent.persona.as_deref(), &instructions);
    Ok(NewCall {
        id: String::new(),
        org_id: String::new(),
        agent_id: Some(agent.id.clone()),
        direction: "outbound".into(),
        status: status::QUEUED.into(),
        to_number: to,
        from_number,
        persona: Some(
            agent
                .persona
                .clone()
                .unwrap_or_else(|| lifecycle::DEFAULT_PERSONA.into()),
        ),
        instructions: Some(instructions),
        prompt,
        context,
        returns: agent.returns.clone(),
        language: agent.language.clone(),
        voice: agent.voice.clone(),
        tools: agent.tools.clone(),
        voicemail_action: agent.voicemail_action.clone(),
        webhook_url,
        metadata,
        hold_milli_cents: 0,
        idempotency_key: None,
        request_fingerprint: None,
        node_id: None,
    })
}

async fn prompt_call(
    tx: &mut crate::store::Tx,
    caller: &Caller,
    body: &mut Body,
) -> Result<NewCall, ApiError> {
    let to = body
        .take_string("to")?
        .ok_or_else(|| bad("to is required (and agent_id, or a prompt)"))?;
    validate::e164("to", &to).map_err(bad)?;
    let prompt = body
        .take_string("prompt")?
        .unwrap_or_else(|| DEFAULT_PROMPT.into());
    validate::text("prompt", &prompt, 50_000).map_err(bad)?;
    let context = body.take_object("context")?;
    let metadata = body.take_object("metadata")?;
    let returns = Value::Object(body.take_object("returns")?);
    validate::returns("returns", &returns).map_err(bad)?;
    let language = body.take_string("language")?.unwrap_or_else(|| "en".into());
    validate::language("language", &language).map_err(bad)?;
    let voicemail_action = body
        .take_string("voicemail_action")?
        .unwrap_or_else(|| "hangup".into());
    validate::one_of(
        "voicemail_action",
        &voicemail_action,
        &validate::VOICEMAIL_ACTIONS,
    )
    .map_err(bad)?;
    let tools = match body.fields.remove("tools") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(tools) => tools,
    };
    validate::tools("tools", &tools).map_err(bad)?;
    let webhook_url = body.take_string("webhook_url")?;
    if let Some(url) = &webhook_url {
        validate::http_url("webhook_url", url).map_err(bad)?;
    }
    let from_number = match body.take_string("from_number")? {
        Some(from) => {
            validate::e164("from_number", &from).map_err(bad)?;
            if numbers::find_active(tx, &caller.org_id, &from)
                .await?
                .is_none()
            {
                return Err(bad(format!(
                    "from_number {from} is not an active number of this organization"
                )));
            }
            from
        }
        None => numbers::oldest_active(tx, &caller.org_id)
            .await?
            .map(|n| n.e164)
            .ok_or_else(|| {
                bad("this organization has no phone number to call from: buy one first")
            })?,
    };
    Ok(NewCall {
        id: String::new(),
        org_id: String::new(),
        agent_id: None,
        direction: "outbound".into(),
        status: status::QUEUED.into(),
        to_number: to,
        from_number,
        persona: None,
        instructions: None,
        prompt,
        context,
        returns,
        language,
        voice: super::agents::DEFAULT_VOICE.into(),
        tools,
        voicemail_action,
        webhook_url,
        metadata,
        hold_milli_cents: 0,
        idempotency_key: None,
        request_fingerprint: None,
        node_id: None,
    })
}

/// Filters of the call list (extensions).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CallListParams {
    /// Items per page, 1-100 (default 10).
    limit: Option<i64>,
    /// Calls older than this id.
    starting_after: Option<String>,
    /// Calls newer than this id.
    ending_before: Option<String>,
    /// Only this agent's calls.
    agent_id: Option<String>,
    /// `inbound` or `outbound`.
    direction: Option<String>,
    /// Only calls in this status.
    status: Option<String>,
}

/// List calls (inbound and outbound), newest first.
#[utoipa::path(get, path = "/v1/calls", tag = "calls", params(CallListParams),
    responses((status = 200, body = ListPage<Call>), (status = 400, body = ErrorBody)))]
async fn list_calls(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<CallListParams>,
) -> ApiResult<Json<ListPage<Call>>> {
    let page = PageParams {
        limit: params.limit,
        starting_after: params.starting_after,
        ending_before: params.ending_before,
    };
    let limit = page.limit()?;
    if let Some(direction) = &params.direction {
        validate::one_of("direction", direction, &["inbound", "outbound"])
            .map_err(ApiError::bad_request)?;
    }
    if let Some(status) = &params.status {
        let all = [
            status::QUEUED,
            status::INITIATED,
            status::RINGING,
            status::IN_PROGRESS,
        ];
        if !all.contains(&status.as_str()) && !status::is_terminal(status) {
            return Err(ApiError::bad_request(format!(
                "status {status:?} is not a call status"
            )));
        }
    }
    let cursor = page
        .cursor(&state.store, Listing::Calls, &caller.org_id)
        .await?;
    let filter = CallFilter {
        agent_id: params.agent_id,
        direction: params.direction,
        status: params.status,
    };
    let page = calls::list(&state.store, &caller.org_id, &filter, &cursor, limit).await?;
    Ok(Json(ListPage {
        data: page.items,
        has_more: page.has_more,
    }))
}

async fn load_call(state: &AppState, caller: &Caller, id: &str) -> Result<Call, ApiError> {
    let not_found = || ApiError::not_found(format!("call {id} not found"));
    if !is_uuid(id) {
        return Err(not_found());
    }
    let mut conn = state.store.pool().acquire().await?;
    calls::get(&mut conn, &caller.org_id, id)
        .await?
        .ok_or_else(not_found)
}

/// Get a call (poll it for status and result).
#[utoipa::path(get, path = "/v1/calls/{id}", tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    responses((status = 200, body = Call), (status = 404, body = ErrorBody)))]
async fn get_call(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Call>> {
    load_call(&state, &caller, &id).await.map(Json)
}

/// A call's transcript.
#[derive(Debug, Serialize, ToSchema)]
struct Transcript {
    call_id: String,
    segments: Vec<Segment>,
}

/// Get a call's transcript segments, in order.
#[utoipa::path(get, path = "/v1/calls/{id}/transcript", tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    responses((status = 200, body = Transcript), (status = 404, body = ErrorBody)))]
async fn get_transcript(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Transcript>> {
    let call = load_call(&state, &caller, &id).await?;
    let mut conn = state.store.pool().acquire().await?;
    let segments = transcripts::list(&mut conn, &call.id).await?;
    Ok(Json(Transcript {
        call_id: call.id,
        segments,
    }))
}

/// Cancel a call that has not been answered (queued, initiated or ringing).
/// Extension.
#[utoipa::path(post, path = "/v1/calls/{id}/cancel", tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    responses((status = 200, body = Call), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_call(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Call>> {
    let call = load_call(&state, &caller, &id).await?;
    match call.status.as_str() {
        status::QUEUED | status::INITIATED | status::RINGING => {}
        status::IN_PROGRESS => {
            return Err(ApiError::conflict(format!(
                "call {id} was answered; it can no longer be canceled"
            )));
        }
        other => {
            return Err(ApiError::conflict(format!(
                "call {id} already ended ({other})"
            )));
        }
    }
    // A call the engine runs is canceled there (SIP CANCEL) and ends through
    // the event stream; one it does not know is ended here.
    if !state.launcher.cancel(&call.id) {
        lifecycle::finish(
            &state.store,
            &state.pricing,
            &call.id,
            lifecycle::Outcome::canceled("canceled by API request"),
            state.clock.now(),
        )
        .await?;
    }
    load_call(&state, &caller, &id).await.map(Json)
}
