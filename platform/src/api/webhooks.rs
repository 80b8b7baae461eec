//! `/v1/webhook_endpoints`, `/v1/webhook_deliveries`, the event types and
//! the organization's default signing secret.
//!
//! Decisions where the reference is open:
//! * create answers 201 with `signing_secret` (`whsec_` + 32 hex), which
//!   only create and `rotate_secret` ever show; rotation takes effect at
//!   once (attempts sign with the secret current when they are made);
//! * `url` must be an absolute http(s) URL (at most 2048 characters);
//!   whether it may point at private addresses is checked at delivery
//!   time, after DNS, by the operator setting `allow_private_webhooks`;
//! * `enabled_events` must be a non-empty list of the eight types or
//!   `["*"]` (unknown names are a 400); the default is `["*"]`;
//! * `PATCH` changes only the fields sent (`description: null` clears it;
//!   unknown fields are a 400); `status: "enabled"` re-enables and zeroes
//!   `consecutive_failures`, `status: "disabled"` disables by hand
//!   (`disabled_reason: "manual"`). A disabled endpoint gets no new
//!   deliveries and its pending ones wait until it is re-enabled;
//! * `DELETE` answers `{"id", "deleted": true}`; the endpoint's pending
//!   deliveries become `exhausted` with `last_error: "endpoint deleted"`
//!   and cannot be redelivered (409);
//! * lists are `{"data", "has_more"}`, newest first, with `limit`,
//!   `starting_after`, `ending_before` (endpoints: 1-100, default 100, so
//!   SDK 0.1.0, which does not page, sees them all; deliveries: 1-200,
//!   default 50);
//! * any delivery can be redelivered (`delivered` and `exhausted` too): it
//!   keeps its id, goes back to `pending`, due at once, and
//!   `manual_retry_count` goes up; the manual attempt does not count in
//!   `attempt_count`, and if it fails an exhausted delivery is exhausted
//!   again;
//! * `GET /v1/webhook_event_types` lists the eight types with what each
//!   means (beside `/v1/webhook_endpoints`, like the other resources);
//! * extensions: `GET /v1/webhook_deliveries/{id}/attempts` (every attempt:
//!   status, error, duration), and the default signing secret of agent and
//!   per-call `webhook_url`s: `GET /v1/webhook_signing_secret` and
//!   `POST /v1/webhook_signing_secret/rotate`, for any key of the
//!   organization (the dashboard's "Default signing secret").

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::pagination::PageParams;
use crate::store::{Listing, is_uuid, orgs};
use crate::validate;
use crate::webhooks::deliveries::{self, DeliveryAttempt, DeliveryFilter, WebhookDelivery};
use crate::webhooks::endpoints::{self, EndpointFields, WebhookEndpoint};
use crate::webhooks::{self, EVENT_DESCRIPTIONS, EVENT_TYPES};

/// Longest endpoint URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 500;
/// Endpoint list: default and largest page.
pub const ENDPOINTS_MAX_LIMIT: i64 = 100;
/// Delivery list: default page.
pub const DELIVERIES_DEFAULT_LIMIT: i64 = 50;
/// Delivery list: largest page.
pub const DELIVERIES_MAX_LIMIT: i64 = 200;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_endpoints, create_endpoint))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
        .routes(routes!(rotate_endpoint_secret))
        .routes(routes!(list_event_types))
        .routes(routes!(get_signing_secret))
        .routes(routes!(rotate_signing_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(get_delivery))
        .routes(routes!(list_attempts))
        .routes(routes!(redeliver))
}

/// A page of endpoints.
#[derive(Debug, Serialize, ToSchema)]
struct EndpointList {
    data: Vec<WebhookEndpoint>,
    has_more: bool,
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
struct DeliveryList {
    data: Vec<WebhookDelivery>,
    has_more: bool,
}

fn check_url(url: &str) -> Result<(), ApiError> {
    validate::max_len("url", url, MAX_URL_LEN).map_err(ApiError::bad_request)?;
    validate::http_url("url", url).map_err(ApiError::bad_request)
}

fn check_description(description: Option<&str>) -> Result<(), ApiError> {
    match description {
        Some(d) => {
            validate::max_len("description", d, MAX_DESCRIPTION_LEN).map_err(ApiError::bad_request)
        }
        None => Ok(()),
    }
}

/// Checks and normalizes `enabled_events` (order kept, duplicates dropped).
fn check_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "enabled_events must not be empty: list event types, or [\"*\"] for all",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for event in events {
        if event != "*" && !EVENT_TYPES.contains(&event.as_str()) {
            return Err(ApiError::bad_request(format!(
                "enabled_events: unknown event type {event:?}; use \"*\" or any of {}",
                EVENT_TYPES.join(", ")
            )));
        }
        if !out.contains(event) {
            out.push(event.clone());
        }
    }
    if out.iter().any(|e| e == "*") {
        return Ok(vec!["*".into()]);
    }
    Ok(out)
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("webhook endpoint {id} not found"))
}

fn delivery_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("webhook delivery {id} not found"))
}

/// The body of an endpoint creation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateEndpoint {
    /// Where events are POSTed (http or https).
    url: String,
    /// A note.
    description: Option<String>,
    /// Event types to receive; default `["*"]` (all).
    enabled_events: Option<Vec<String>>,
}

/// Create an endpoint; the answer carries its `signing_secret`, shown only
/// here and on rotation.
#[utoipa::path(post, path = "/v1/webhook_endpoints", tag = "webhooks", request_body = CreateEndpoint,
    responses((status = 201, body = WebhookEndpoint), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> ApiResult<(StatusCode, Json<WebhookEndpoint>)> {
    check_url(&body.url)?;
    check_description(body.description.as_deref())?;
    let enabled_events = check_events(&body.enabled_events.unwrap_or_else(|| vec!["*".into()]))?;
    let fields = EndpointFields {
        url: body.url,
        description: body.description,
        enabled_events,
    };
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let endpoint = endpoints::insert(&mut tx, &caller.org_id, &fields, now).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(endpoint)))
}

/// Parameters of the endpoint list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EndpointListParams {
    /// Items per page, 1-100 (default 100).
    limit: Option<i64>,
    /// Return endpoints older than this id.
    starting_after: Option<String>,
    /// Return endpoints newer than this id.
    ending_before: Option<String>,
}

fn limit_in(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {max}, got {limit}"
        )));
    }
    Ok(limit)
}

/// List endpoints, newest first.
#[utoipa::path(get, path = "/v1/webhook_endpoints", tag = "webhooks", params(EndpointListParams),
    responses((status = 200, body = EndpointList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_endpoints(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<EndpointListParams>,
) -> ApiResult<Json<EndpointList>> {
    let limit = limit_in(params.limit, ENDPOINTS_MAX_LIMIT, ENDPOINTS_MAX_LIMIT)?;
    let paging = PageParams {
        limit: Some(limit),
        starting_after: params.starting_after,
        ending_before: params.ending_before,
    };
    let cursor = paging
        .cursor(&state.store, Listing::WebhookEndpoints, &caller.org_id)
        .await?;
    let page = endpoints::list(&state.store, &caller.org_id, &cursor, limit).await?;
    Ok(Json(EndpointList {
        data: page.items,
        has_more: page.has_more,
    }))
}

async fn load_endpoint(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<WebhookEndpoint, ApiError> {
    if !is_uuid(id) {
        return Err(not_found(id));
    }
    let mut conn = state.store.pool().acquire().await?;
    endpoints::get(&mut conn, org_id, id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// Get an endpoint (without its secret).
#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = WebhookEndpoint), (status = 404, body = ErrorBody)))]
async fn get_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookEndpoint>> {
    load_endpoint(&state, &caller.org_id, &id).await.map(Json)
}

/// Update an endpoint: any of `url`, `description` (null clears),
/// `enabled_events`, `status` (`enabled` re-enables and zeroes the failure
/// count; `disabled` disables by hand).
#[utoipa::path(patch, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    request_body(content = Object, description = "Any of url, description, enabled_events, status"),
    responses((status = 200, body = WebhookEndpoint), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<Json<WebhookEndpoint>> {
    if !is_uuid(&id) {
        return Err(not_found(&id));
    }
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let endpoint = endpoints::get(&mut tx, &caller.org_id, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let mut fields = EndpointFields {
        url: endpoint.url.clone(),
        description: endpoint.description.clone(),
        enabled_events: endpoint.enabled_events.clone(),
    };
    let mut new_status = None;
    for (key, value) in &body {
        let string = || {
            value
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::bad_request(format!("{key} must be a string")))
        };
        match key.as_str() {
            "url" => {
                fields.url = string()?;
                check_url(&fields.url)?;
            }
            "description" => {
                fields.description = if value.is_null() {
                    None
                } else {
                    Some(string()?)
                };
                check_description(fields.description.as_deref())?;
            }
            "enabled_events" => {
                let events: Vec<String> = serde_json::from_value(value.clone()).map_err(|_| {
                    ApiError::bad_request("enabled_events must be a list of strings")
                })?;
                fields.enabled_events = check_events(&events)?;
            }
            "status" => {
                let status = string()?;
                validate::one_of(
                    "status",
                    &status,
                    &[endpoints::ENABLED, endpoints::DISABLED],
                )
                .map_err(ApiError::bad_request)?;
                new_status = Some(status);
            }
            other => return Err(ApiError::bad_request(format!("unknown field {other:?}"))),
        }
    }
    endpoints::update(&mut tx, &id, &fields, now).await?;
    if let Some(status) = new_status {
        let enable = status == endpoints::ENABLED;
        endpoints::set_enabled(&mut tx, &id, enable, now).await?;
    }
    let endpoint = endpoints::get(&mut tx, &caller.org_id, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if endpoint.status == endpoints::ENABLED {
        // Deliveries that waited while it was disabled are due.
        webhooks::notify_workers(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(Json(endpoint))
}

/// The answer to a deletion.
#[derive(Debug, Serialize, ToSchema)]
struct Deleted {
    /// The endpoint's id.
    id: String,
    /// Always true.
    deleted: bool,
}

/// Delete an endpoint. Its pending deliveries become `exhausted`
/// ("endpoint deleted") and stay listed.
#[utoipa::path(delete, path = "/v1/webhook_endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
async fn delete_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Deleted>> {
    if !is_uuid(&id) {
        return Err(not_found(&id));
    }
    let mut tx = state.store.begin().await?;
    if !endpoints::delete(&mut tx, &caller.org_id, &id, state.clock.now()).await? {
        return Err(not_found(&id));
    }
    tx.commit().await?;
    Ok(Json(Deleted { id, deleted: true }))
}

/// Rotate an endpoint's signing secret: the answer carries the new one;
/// the old one stops verifying at once.
#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/rotate_secret", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = WebhookEndpoint), (status = 404, body = ErrorBody)))]
async fn rotate_endpoint_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookEndpoint>> {
    if !is_uuid(&id) {
        return Err(not_found(&id));
    }
    let mut tx = state.store.begin().await?;
    let endpoint = endpoints::rotate_secret(&mut tx, &caller.org_id, &id, state.clock.now())
        .await?
        .ok_or_else(|| not_found(&id))?;
    tx.commit().await?;
    Ok(Json(endpoint))
}

/// An event type.
#[derive(Debug, Serialize, ToSchema)]
struct EventType {
    /// Its name, e.g. `call.completed`.
    #[serde(rename = "type")]
    event_type: String,
    /// When it fires.
    description: String,
}

/// The event types.
#[derive(Debug, Serialize, ToSchema)]
struct EventTypeList {
    data: Vec<EventType>,
    has_more: bool,
}

/// The event types an endpoint can subscribe to (`"*"` is all of them).
#[utoipa::path(get, path = "/v1/webhook_event_types", tag = "webhooks",
    responses((status = 200, body = EventTypeList), (status = 401, body = ErrorBody)))]
async fn list_event_types(_caller: Caller) -> Json<EventTypeList> {
    Json(EventTypeList {
        data: EVENT_DESCRIPTIONS
            .iter()
            .map(|(t, d)| EventType {
                event_type: (*t).to_owned(),
                description: (*d).to_owned(),
            })
            .collect(),
        has_more: false,
    })
}

/// The organization's default signing secret.
#[derive(Debug, Serialize, ToSchema)]
struct SigningSecret {
    /// `whsec_...`: signs deliveries to agent-level and per-call
    /// `webhook_url`s.
    signing_secret: String,
}

/// The default signing secret of agent-level and per-call `webhook_url`
/// deliveries (extension).
#[utoipa::path(get, path = "/v1/webhook_signing_secret", tag = "webhooks",
    responses((status = 200, body = SigningSecret), (status = 401, body = ErrorBody)))]
async fn get_signing_secret(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SigningSecret>> {
    let mut conn = state.store.pool().acquire().await?;
    let org = orgs::get(&mut conn, &caller.org_id)
        .await?
        .ok_or_else(|| ApiError::internal(&"org vanished"))?;
    Ok(Json(SigningSecret {
        signing_secret: org.default_webhook_secret,
    }))
}

/// Rotate the default signing secret (extension); every inline webhook of
/// the organization is signed with the new one from now on.
#[utoipa::path(post, path = "/v1/webhook_signing_secret/rotate", tag = "webhooks",
    responses((status = 200, body = SigningSecret), (status = 401, body = ErrorBody)))]
async fn rotate_signing_secret(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SigningSecret>> {
    let mut tx = state.store.begin().await?;
    let secret = orgs::rotate_default_webhook_secret(&mut tx, &caller.org_id)
        .await?
        .ok_or_else(|| ApiError::internal(&"org vanished"))?;
    tx.commit().await?;
    Ok(Json(SigningSecret {
        signing_secret: secret,
    }))
}

/// Parameters of the delivery list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeliveryListParams {
    /// Only this endpoint's deliveries.
    endpoint_id: Option<String>,
    /// Only this call's deliveries.
    call_id: Option<String>,
    /// `pending`, `delivered` or `exhausted`.
    status: Option<String>,
    /// Items per page, 1-200 (default 50).
    limit: Option<i64>,
    /// Return deliveries older than this id.
    starting_after: Option<String>,
    /// Return deliveries newer than this id.
    ending_before: Option<String>,
}

/// List deliveries, newest first.
#[utoipa::path(get, path = "/v1/webhook_deliveries", tag = "webhooks", params(DeliveryListParams),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<DeliveryListParams>,
) -> ApiResult<Json<DeliveryList>> {
    let limit = limit_in(params.limit, DELIVERIES_DEFAULT_LIMIT, DELIVERIES_MAX_LIMIT)?;
    for (name, value) in [
        ("endpoint_id", &params.endpoint_id),
        ("call_id", &params.call_id),
    ] {
        if let Some(value) = value
            && !is_uuid(value)
        {
            return Err(ApiError::bad_request(format!(
                "{name} {value:?} is not an id"
            )));
        }
    }
    if let Some(status) = &params.status {
        validate::one_of("status", status, &deliveries::STATUSES).map_err(ApiError::bad_request)?;
    }
    let paging = PageParams {
        limit: Some(limit),
        starting_after: params.starting_after,
        ending_before: params.ending_before,
    };
    let cursor = paging
        .cursor(&state.store, Listing::WebhookDeliveries, &caller.org_id)
        .await?;
    let filter = DeliveryFilter {
        endpoint_id: params.endpoint_id,
        call_id: params.call_id,
        status: params.status,
    };
    let page = deliveries::list(&state.store, &caller.org_id, &filter, &cursor, limit).await?;
    Ok(Json(DeliveryList {
        data: page.items,
        has_more: page.has_more,
    }))
}

async fn load_delivery(
    state: &AppState,
    org_id: &str,
    id: &str,
) -> Result<WebhookDelivery, ApiError> {
    if !is_uuid(id) {
        return Err(delivery_not_found(id));
    }
    let mut conn = state.store.pool().acquire().await?;
    deliveries::get(&mut conn, org_id, id)
        .await?
        .ok_or_else(|| delivery_not_found(id))
}

/// Get a delivery.
#[utoipa::path(get, path = "/v1/webhook_deliveries/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Delivery id (= event id)")),
    responses((status = 200, body = WebhookDelivery), (status = 404, body = ErrorBody)))]
async fn get_delivery(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookDelivery>> {
    load_delivery(&state, &caller.org_id, &id).await.map(Json)
}

/// A delivery's attempts.
#[derive(Debug, Serialize, ToSchema)]
struct AttemptList {
    data: Vec<DeliveryAttempt>,
    has_more: bool,
}

/// Every attempt at a delivery, oldest first (extension).
#[utoipa::path(get, path = "/v1/webhook_deliveries/{id}/attempts", tag = "webhooks",
    params(("id" = String, Path, description = "Delivery id")),
    responses((status = 200, body = AttemptList), (status = 404, body = ErrorBody)))]
async fn list_attempts(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<AttemptList>> {
    let delivery = load_delivery(&state, &caller.org_id, &id).await?;
    let data = deliveries::attempts(&state.store, &delivery.id).await?;
    Ok(Json(AttemptList {
        data,
        has_more: false,
    }))
}

/// Redeliver: the same event id goes back to `pending`, due at once;
/// `manual_retry_count` goes up.
#[utoipa::path(post, path = "/v1/webhook_deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = String, Path, description = "Delivery id")),
    responses((status = 200, body = WebhookDelivery), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<WebhookDelivery>> {
    if !is_uuid(&id) {
        return Err(delivery_not_found(&id));
    }
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let delivery = deliveries::get(&mut tx, &caller.org_id, &id)
        .await?
        .ok_or_else(|| delivery_not_found(&id))?;
    if let Some(endpoint_id) = &delivery.endpoint_id
        && endpoints::get(&mut tx, &caller.org_id, endpoint_id)
            .await?
            .is_none()
    {
        return Err(ApiError::conflict(format!(
            "webhook endpoint {endpoint_id} was deleted; its deliveries cannot be redelivered"
        )));
    }
    let delivery = deliveries::redeliver(&mut tx, &caller.org_id, &id, now)
        .await?
        .ok_or_else(|| delivery_not_found(&id))?;
    webhooks::notify_workers(&mut tx).await?;
    tx.commit().await?;
    Ok(Json(delivery))
}
