//! `GET /v1/usage` (extension): the organization's balance, held credits
//! and usage since a date (default: the start of the current month), in
//! milli-cents.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiQuery, Caller};
use crate::clock::Timestamp;
use crate::store::{ledger, orgs};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_usage))
}

/// Parameters of the usage query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UsageParams {
    /// Start of the period (RFC 3339); default the first of this month (UTC).
    since: Option<String>,
}

/// The organization's credits and usage.
#[derive(Debug, Serialize, ToSchema)]
struct Usage {
    /// Credits, milli-cents (holds not deducted).
    balance_milli_cents: i64,
    /// Credits held for calls in progress.
    held_milli_cents: i64,
    /// Balance minus holds: what new calls can hold.
    available_milli_cents: i64,
    /// Start of the period.
    since: String,
    /// Calls that ended in the period.
    calls: i64,
    /// Connected seconds billed in the period.
    billed_seconds: i64,
    /// Charged for calls in the period.
    calls_milli_cents: i64,
    /// Charged for numbers in the period.
    numbers_milli_cents: i64,
    /// Credits added in the period.
    credits_added_milli_cents: i64,
}

/// Balance, holds and usage (extension).
#[utoipa::path(get, path = "/v1/usage", tag = "billing", params(UsageParams),
    responses((status = 200, body = Usage), (status = 400, body = ErrorBody)))]
async fn get_usage(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> ApiResult<Json<Usage>> {
    let since = match &params.since {
        Some(text) => Timestamp::parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request(format!("since must be an RFC 3339 date-time, got {text:?}"))
        })?,
        None => state.clock.now().month_start(),
    };
    let mut conn = state.store.pool().acquire().await?;
    let org = orgs::get(&mut conn, &caller.org_id)
        .await?
        .ok_or_else(|| ApiError::internal(&"org vanished"))?;
    drop(conn);
    let usage = ledger::usage_since(&state.store, &caller.org_id, since).await?;
    Ok(Json(Usage {
        balance_milli_cents: org.balance_milli_cents,
        held_milli_cents: org.held_milli_cents,
        available_milli_cents: org.available_milli_cents(),
        since: since.to_rfc3339(),
        calls: usage.calls,
        billed_seconds: usage.billed_seconds,
        calls_milli_cents: usage.calls_milli_cents,
        numbers_milli_cents: usage.numbers_milli_cents,
        credits_added_milli_cents: usage.credits_added_milli_cents,
    }))
}
