//! `/v1/numbers`: search, purchase, list, and the prompt era's inbound
//! configuration.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::pagination::{ListPage, PageParams};
use crate::billing::dollars;
use crate::carrier::{AvailableNumber, NumberQuery};
use crate::store::numbers::{self, InboundConfig, NewNumber, PhoneNumber};
use crate::store::{Listing, is_uuid, ledger};
use crate::validate;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_numbers))
        .routes(routes!(search_available))
        .routes(routes!(purchase))
        .routes(routes!(get_number))
        .routes(routes!(update_inbound))
}

/// List the organization's active numbers, newest first.
#[utoipa::path(get, path = "/v1/numbers", tag = "numbers", params(PageParams),
    responses((status = 200, body = ListPage<PhoneNumber>), (status = 401, body = ErrorBody)))]
async fn list_numbers(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<PageParams>,
) -> ApiResult<Json<ListPage<PhoneNumber>>> {
    let limit = params.limit()?;
    let cursor = params
        .cursor(&state.store, Listing::PhoneNumbers, &caller.org_id)
        .await?;
    let page = numbers::list(&state.store, &caller.org_id, &cursor, limit).await?;
    Ok(Json(ListPage {
        data: page.items,
        has_more: page.has_more,
    }))
}

/// Parameters of a number search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchParams {
    /// ISO country code (default `US`; only `US` is served).
    country_code: Option<String>,
    /// Area code, for local numbers.
    area_code: Option<String>,
    /// `local` or `toll_free`.
    number_type: Option<String>,
    /// Most results, 1-100 (default 10).
    limit: Option<i64>,
}

/// Search numbers that can be bought.
#[utoipa::path(get, path = "/v1/numbers/available", tag = "numbers", params(SearchParams),
    responses((status = 200, body = Vec<AvailableNumber>), (status = 400, body = ErrorBody)))]
async fn search_available(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> ApiResult<Json<Vec<AvailableNumber>>> {
    let _ = caller;
    let country_code = params
        .country_code
        .unwrap_or_else(|| "US".into())
        .to_ascii_uppercase();
    if country_code != "US" {
        return Err(ApiError::bad_request(format!(
            "country_code {country_code:?} is not served yet: only US numbers are available"
        )));
    }
    if let Some(kind) = &params.number_type {
        validate::one_of("number_type", kind, &["local", "toll_free"])
            .map_err(ApiError::bad_request)?;
    }
    if let Some(area) = &params.area_code {
        let ok = area.len() == 3
            && area.bytes().all(|b| b.is_ascii_digit())
            && !area.starts_with(['0', '1']);
        if !ok {
            return Err(ApiError::bad_request(format!(
                "area_code must be 3 digits like 415, got {area:?}"
            )));
        }
    }
    let limit = params.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 100, got {limit}"
        )));
    }
    let query = NumberQuery {
        country_code,
        area_code: params.area_code,
        number_type: params.number_type,
        limit: usize::try_from(limit).unwrap_or(10),
    };
    // Taken numbers are looked up once: the search covers at most 100.
    let taken: Vec<String> =
        sqlx::query_scalar("SELECT e164 FROM phone_numbers WHERE status = 'active'")
            .fetch_all(state.store.pool())
            .await?;
    let found = state
        .carrier
        .search(&query, &|n| taken.iter().any(|t| t == n));
    Ok(Json(found))
}

/// The body of a purchase.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PurchaseRequest {
    /// The number to buy, E.164 (from a search).
    phone_number: String,
}

/// Buy a number. Credits are charged at once (first month plus upfront cost).
#[utoipa::path(post, path = "/v1/numbers/purchase", tag = "numbers", request_body = PurchaseRequest,
    responses((status = 201, body = PhoneNumber), (status = 400, body = ErrorBody),
        (status = 402, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn purchase(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PurchaseRequest>,
) -> ApiResult<(StatusCode, Json<PhoneNumber>)> {
    validate::e164("phone_number", &body.phone_number).map_err(ApiError::bad_request)?;
    let offer = state.carrier.offer(&body.phone_number).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{} is not available from this carrier: search /v1/numbers/available first",
            body.phone_number
        ))
    })?;
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let new = NewNumber {
        e164: &offer.phone_number,
        country_code: &offer.country_code,
        number_type: &offer.number_type,
        monthly_cost_cents: offer.monthly_cost_cents,
        upfront_cost_cents: offer.upfront_cost_cents,
        carrier: state.carrier.name(),
    };
    let number = match numbers::insert(&mut tx, &caller.org_id, &new, now).await {
        Ok(number) => number,
        Err(err) if err.is_unique_violation() => {
            return Err(ApiError::conflict(format!(
                "{} is already taken",
                body.phone_number
            )));
        }
        Err(err) => return Err(err.into()),
    };
    let price = (offer.monthly_cost_cents + offer.upfront_cost_cents) * 1_000;
    let description = format!("number {} (first month)", offer.phone_number);
    if !ledger::try_charge_number(
        &mut tx,
        &caller.org_id,
        &number.id,
        price,
        &description,
        now,
    )
    .await?
    {
        return Err(ApiError::payment_required(format!(
            "not enough credits: buying {} costs {}; add credits and retry",
            offer.phone_number,
            dollars(price)
        )));
    }
    tx.commit().await?;
    state.carrier.provision(&number.e164);
    Ok((StatusCode::CREATED, Json(number)))
}

/// Get one number. Extension.
#[utoipa::path(get, path = "/v1/numbers/{id}", tag = "numbers",
    params(("id" = String, Path, description = "Number id")),
    responses((status = 200, body = PhoneNumber), (status = 404, body = ErrorBody)))]
async fn get_number(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PhoneNumber>> {
    let mut conn = state.store.pool().acquire().await?;
    let number = if is_uuid(&id) {
        numbers::get(&mut conn, &caller.org_id, &id).await?
    } else {
        None
    };
    number
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("number {id} not found")))
}

/// The prompt era's inbound configuration (every key sent; null clears).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InboundRequest {
    enabled: bool,
    prompt: Option<String>,
    #[schema(value_type = Option<Object>)]
    returns: Option<Value>,
    webhook_url: Option<String>,
    language: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Value>,
    voicemail_action: Option<String>,
}

/// Replace a number's inbound configuration (prompt era; SDK 0.1.0).
#[utoipa::path(put, path = "/v1/numbers/{id}/inbound", tag = "numbers",
    params(("id" = String, Path, description = "Number id")), request_body = InboundRequest,
    responses((status = 200, body = PhoneNumber), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_inbound(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<InboundRequest>,
) -> ApiResult<Json<PhoneNumber>> {
    if let Some(prompt) = &body.prompt {
        validate::max_len("prompt", prompt, 50_000).map_err(ApiError::bad_request)?;
    }
    if body.enabled && body.prompt.as_deref().is_none_or(|p| p.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "prompt is required when enabled is true",
        ));
    }
    if let Some(returns) = &body.returns {
        validate::returns("returns", returns).map_err(ApiError::bad_request)?;
    }
    if let Some(url) = &body.webhook_url {
        validate::http_url("webhook_url", url).map_err(ApiError::bad_request)?;
    }
    if let Some(language) = &body.language {
        validate::language("language", language).map_err(ApiError::bad_request)?;
    }
    if let Some(tools) = &body.tools {
        validate::tools("tools", tools).map_err(ApiError::bad_request)?;
    }
    if let Some(action) = &body.voicemail_action {
        validate::one_of("voicemail_action", action, &validate::VOICEMAIL_ACTIONS)
            .map_err(ApiError::bad_request)?;
    }
    let not_found = || ApiError::not_found(format!("number {id} not found"));
    if !is_uuid(&id) {
        return Err(not_found());
    }
    let now = state.clock.now();
    let mut tx = state.store.begin().await?;
    let number = numbers::get(&mut tx, &caller.org_id, &id)
        .await?
        .ok_or_else(not_found)?;
    if body.enabled && number.inbound_agent_id.is_some() {
        return Err(ApiError::conflict(format!(
            "number {id} is answered by inbound agent {}; detach it first",
            number.inbound_agent_id.unwrap_or_default()
        )));
    }
    let config = InboundConfig {
        enabled: body.enabled,
        prompt: body.prompt,
        returns: body.returns,
        webhook_url: body.webhook_url,
        language: body.language,
        tools: body.tools.and_then(|t| t.as_array().cloned()),
        voicemail_action: body.voicemail_action,
    };
    if !numbers::set_inbound_config(&mut tx, &caller.org_id, &id, &config, now).await? {
        return Err(not_found());
    }
    let number = numbers::get(&mut tx, &caller.org_id, &id)
        .await?
        .ok_or_else(not_found)?;
    tx.commit().await?;
    Ok(Json(number))
}
