//! The public REST API (`/v1/...`), its OpenAPI document (generated from
//! the handlers, so it cannot drift) and the server's own endpoints
//! (`/healthz`, `/metrics`, `/openapi.json`).

pub mod agents;
pub mod calls;
pub mod error;
pub mod extract;
pub mod numbers;
pub mod pagination;
pub mod usage;
pub mod webhooks;

use std::sync::Arc;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::billing::Pricing;
use crate::carrier::Carrier;
use crate::clock::SharedClock;
use crate::dispatch::CallLauncher;
use crate::store::Store;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Where "now" comes from.
    pub clock: SharedClock,
    /// Prices and limits.
    pub pricing: Pricing,
    /// Where numbers come from.
    pub carrier: Arc<dyn Carrier>,
    /// Hands calls to the engine.
    pub launcher: Arc<dyn CallLauncher>,
    /// This serve node's id (calls it runs are stamped with it).
    pub node_id: String,
    /// The process's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CallingBox API",
        description = "The self-hostable API for AI phone calls. Errors are `{\"error\": \"...\"}`.",
        version = "2026-04"
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk_live_...")
                    .build(),
            ),
        );
    }
}

/// The `/v1` routes and their OpenAPI document, built together.
pub fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(agents::routes())
        .merge(numbers::routes())
        .merge(calls::routes())
        .merge(usage::routes())
        .merge(webhooks::routes())
}

/// The whole HTTP application.
pub fn router(state: AppState) -> axum::Router {
    let (v1, openapi) = v1_routes().split_for_parts();
    let openapi = Arc::new(openapi);
    v1.route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(move || {
                let openapi = Arc::clone(&openapi);
                async move { Json((*openapi).clone()) }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal(&"a handler panicked").into_response()
        }))
        .with_state(state)
}

/// The OpenAPI document of the API (also served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    v1_routes().split_for_parts().1
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match sqlx::query("SELECT 1").execute(state.store.pool()).await {
        Ok(_) => (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "error": err.to_string()})),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    match state.metrics.render(&state.store).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            text,
        )
            .into_response(),
        Err(err) => ApiError::internal(&err).into_response(),
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("{method} is not allowed on {}", uri.path()),
    }
}
