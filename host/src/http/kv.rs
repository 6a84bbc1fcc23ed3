//! `/admin/kv`: the plugins' key-value data for operators — usage against
//! the quotas, a plugin's keys, one value, and deletes (a chat's state to
//! reset, a departing tenant's data to remove).

use super::admin::{blocking, count, store_error};
use super::{AppError, AppState};
use crate::store::{self, KvSelection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/kv", get(usage))
        .route("/admin/kv/{tenant}/{plugin}", get(keys))
        .route("/admin/kv/{tenant}/{plugin}/value", get(value))
        .route("/admin/kv/{tenant}/{plugin}/delete", post(delete))
}

#[derive(Deserialize)]
struct UsageQuery {
    tenant: Option<String>,
}

async fn usage(
    State(state): State<AppState>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<Value>, AppError> {
    let rows = blocking(&state.store, move |s| s.kv_usage(q.tenant.as_deref())).await?;
    Ok(Json(json!({ "usage": rows })))
}

#[derive(Deserialize)]
struct KeysQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<i64>,
}

async fn keys(
    State(state): State<AppState>,
    Path((tenant, plugin)): Path<(String, String)>,
    Query(q): Query<KeysQuery>,
) -> Result<Json<Value>, AppError> {
    let limit = count("limit", q.limit, 1000, 100_000)? as u64;
    let rows = blocking(&state.store, move |s| {
        s.kv_entries(&tenant, &plugin, &q.prefix, limit)
    })
    .await?;
    Ok(Json(json!({ "keys": rows })))
}

#[derive(Deserialize)]
struct ValueQuery {
    key: String,
}

/// The value's bytes as they are stored.
async fn value(
    State(state): State<AppState>,
    Path((tenant, plugin)): Path<(String, String)>,
    Query(q): Query<ValueQuery>,
) -> Result<impl IntoResponse, AppError> {
    let missing = format!(
        "no key `{}` for plugin `{plugin}` of tenant `{tenant}`",
        q.key
    );
    let v = blocking(&state.store, move |s| {
        s.kv_get(store::kv_scope(&tenant, &plugin), &q.key)
    })
    .await?
    .ok_or(AppError::NotFound(missing))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], v))
}

/// `{"key": K}` or `{"prefix": P}` (`""`: every key of the plugin).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    key: Option<String>,
    prefix: Option<String>,
}

async fn delete(
    State(state): State<AppState>,
    Path((tenant, plugin)): Path<(String, String)>,
    Json(body): Json<DeleteBody>,
) -> Result<Json<Value>, AppError> {
    let which = match (body.key, body.prefix) {
        (Some(k), None) => KvSelection::Key(k),
        (None, Some(p)) => KvSelection::Prefix(p),
        _ => return Err(AppError::BadRequest("give either `key` or `prefix`".into())),
    };
    let deleted = state
        .store
        .kv_remove(tenant, plugin, which)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "ok": true, "deleted": deleted })))
}
