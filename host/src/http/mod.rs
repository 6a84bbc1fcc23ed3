//! The HTTP surface: webhook intake, health and metrics. `router` builds the
//! whole app so tests can drive it with or without a socket.

mod admin;
mod backfill;
mod deadline;
mod error;
mod kv;
mod limits;
mod webhook;

pub use error::AppError;
pub use limits::RateLimiter;

use crate::live::Live;
use crate::metrics::Metrics;
use crate::runtime::Registry;
use crate::store::Store;
use crate::wake::Wake;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// What every handler shares, behind one `Arc`: cloned per request.
#[derive(Clone)]
pub struct AppState(Arc<AppContext>);

impl From<AppContext> for AppState {
    fn from(c: AppContext) -> Self {
        AppState(Arc::new(c))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppContext;
    fn deref(&self) -> &AppContext {
        &self.0
    }
}

pub struct AppContext {
    /// Tenants and other settings a reload may change.
    pub live: Arc<Live>,
    pub store: Store,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Woken after each stored event so the dispatcher picks it up at once.
    pub wake: Arc<Wake>,
    pub registry: Arc<Registry>,
    pub rate: Arc<RateLimiter>,
    pub inflight: Arc<Semaphore>,
    /// Events answered 503 because the store did not commit them.
    pub not_committed: crate::repeated::Repeated,
}

impl AppContext {
    /// How long one part of a long admin job (prune, range replay) may run
    /// before it answers `"more": true`: a quarter of the request timeout
    /// (at most 5 s), so that the part, its last chunk and the answer fit
    /// well within the timeout on a busy machine.
    pub fn part_budget(&self) -> Duration {
        (self.request_timeout / 4).min(Duration::from_secs(5))
    }
}

pub fn router(state: AppState) -> Router {
    let webhook = Router::new()
        .route("/webhook", post(webhook::default_tenant))
        .route("/webhook/{tenant}", post(webhook::tenant))
        // A receiver URL pasted with a trailing slash works as well.
        .route("/webhook/", post(webhook::default_tenant))
        .route("/webhook/{tenant}/", post(webhook::tenant))
        .layer(DefaultBodyLimit::max(state.max_body_bytes));
    Router::new()
        .merge(webhook)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(admin::routes(state.clone()))
        .fallback(|| async { AppError::NoRoute })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(deadline::DeadlineLayer(state.clone()))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.probe().await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness probe failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": "store not writable" })),
            )
                .into_response()
        }
    }
}

/// Rendered on a blocking thread: the series' locks are also taken by
/// threads at idle priority, and a request thread waiting for one of them
/// would hold up every connection it serves.
async fn metrics(State(state): State<AppState>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || {
        let mut text = state.metrics.render();
        state.store.render_metrics(&mut text);
        text
    })
    .await;
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(_) => AppError::Internal.into_response(),
    }
}
