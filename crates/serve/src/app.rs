//! The router: the OpenAI routes, `/v1/models`, `/health`, `/version`, `/metrics` and the
//! profiling routes, behind the `--api-key` check (every route but `/health`), with OpenAI-style
//! errors for unknown routes and methods. [`AppState`] is what every handler shares.

use crate::error::ApiError;
use crate::metrics::record_load;
use crate::openai::Served;
use crate::{generate, profile, ServeOptions};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lumen_engine::EngineHandle;
use lumen_model::Model;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::sync::Arc;

pub struct AppState {
    pub handle: EngineHandle,
    pub model: Arc<Model>,
    /// The name clients give as `model`.
    pub name: String,
    pub options: ServeOptions,
    pub metrics: PrometheusHandle,
    pub started: u64,
}

impl AppState {
    pub fn served(&self) -> Served<'_> {
        Served { name: &self.name, model: &self.model, limits: self.handle.limits() }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(generate::completions))
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/models", get(models))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/start_profile", post(profile::start))
        .route("/stop_profile", post(profile::stop))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// With `--api-key`, every route but `/health` needs `Authorization: Bearer KEY`.
async fn authorize(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = &app.options.api_key else { return next.run(request).await };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g.as_bytes() == key.as_bytes() => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "the API key is wrong").into_response(),
        None => {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer header; this server needs an API key").into_response()
        }
    }
}

async fn health() -> StatusCode {
    StatusCode::OK
}

async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}

async fn models(State(app): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.name,
            "object": "model",
            "created": app.started,
            "owned_by": "lumen",
            "max_model_len": app.handle.limits().max_seq_len,
        }],
    }))
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    record_load(&app.name, app.handle.load());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {}", request.method(), request.uri().path()))
}
