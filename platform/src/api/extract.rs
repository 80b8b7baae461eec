//! Request extractors that answer bad input with the error envelope: JSON
//! bodies (content type, size, syntax, types), query strings, and the API
//! key.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::store::keys;

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 256 * 1024;

/// A JSON body, parsed into `T`; every failure is a clear 4xx.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: "the body must be JSON: send Content-Type: application/json".into(),
            });
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!("the body is larger than {} KiB", BODY_LIMIT / 1024),
                }
            } else {
                ApiError::bad_request(format!("cannot read the body: {rejection}"))
            }
        })?;
        parse_json_body(&body).map(ApiJson)
    }
}

/// Parses a JSON body into `T` with a message that names the problem.
fn parse_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|err| {
        let what = match err.classify() {
            serde_json::error::Category::Data => "invalid request",
            _ => "malformed JSON",
        };
        ApiError::bad_request(format!("{what}: {err}"))
    })
}

/// A query string parsed into `T`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|err| {
                ApiError::bad_request(format!("invalid query parameters ({query}): {err}"))
            })
    }
}

/// The authenticated caller: an API key and its organization.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The organization every query is scoped to.
    pub org_id: String,
    /// The key's id.
    pub key_id: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing API key: send Authorization: Bearer sk_...")
        })?;
        let header = header
            .to_str()
            .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be: Bearer sk_...")
            })?;
        if !key.starts_with("sk_") {
            return Err(ApiError::unauthorized("invalid API key"));
        }
        let found = keys::authenticate(&state.store, key, state.clock.now()).await?;
        let key =
            found.ok_or_else(|| ApiError::unauthorized("invalid, expired or revoked API key"))?;
        Ok(Caller {
            org_id: key.org_id,
            key_id: key.id,
        })
    }
}
