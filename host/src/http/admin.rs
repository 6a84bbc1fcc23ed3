//! `/admin/*`: events with their deliveries, pruning, dead letters, retry,
//! replay, plugins and their key-value data (`kv.rs`), behind a bearer
//! token (off when no token is configured).

use super::{AppError, AppState};
use crate::store::{self, Store};
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/events", get(events))
        .route("/admin/events/{seq}", get(event))
        .route("/admin/events/prune", post(prune))
        .route("/admin/events/replay", post(super::backfill::replay_range))
        .route("/admin/events/{seq}/replay", post(replay))
        .route("/admin/deliveries", get(deliveries))
        .route("/admin/dead-letters", get(dead_letters))
        .route("/admin/dead-letters/retry", post(retry_all))
        .route("/admin/dead-letters/discard", post(discard_all))
        .route("/admin/dead-letters/{seq}/{plugin}/retry", post(retry))
        .route("/admin/dead-letters/{seq}/{plugin}/discard", post(discard))
        .route("/admin/plugins", get(plugins))
        .route("/admin/reload", post(reload))
        .merge(super::kv::routes())
        .layer(axum::middleware::from_fn_with_state(state, auth))
        .layer(axum::middleware::map_response(json_errors))
}

/// A path, query or body that does not parse is refused by axum's
/// extractors in plain text; the admin API answers every error as
/// `{"error": "..."}`, as the CLI and scripts read it.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !plain || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&body).trim().to_string();
    (status, Json(json!({ "error": message }))).into_response()
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let settings = state.live.get();
    let Some(token) = &settings.admin_token else {
        return AppError::AdminOff.into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if given.is_empty() {
        return AppError::Unauthorized(
            "admin token required (header `Authorization: Bearer TOKEN`)".into(),
        )
        .into_response();
    }
    if !bool::from(given.as_bytes().ct_eq(token.expose())) {
        return AppError::Unauthorized("wrong admin token".into()).into_response();
    }
    next.run(req).await
}

pub(super) async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, store::StoreError> + Send + 'static,
) -> Result<T, AppError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|_| AppError::Internal)?
        .map_err(store_error)
}

pub(super) fn store_error(e: store::StoreError) -> AppError {
    match e {
        store::StoreError::Invalid(m) => AppError::BadRequest(m),
        _ => AppError::StoreUnavailable,
    }
}

/// A `limit` or `last` query value: `default` when absent, at most `max`
/// rows (a page; ask again with `after` for more), refused below 1.
pub(super) fn count(
    name: &str,
    value: Option<i64>,
    default: i64,
    max: i64,
) -> Result<i64, AppError> {
    match value.unwrap_or(default) {
        n if n < 1 => Err(AppError::BadRequest(format!(
            "`{name}` must be at least 1 (got {n})"
        ))),
        n => Ok(n.min(max)),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    tenant: Option<String>,
    #[serde(default)]
    after: i64,
    limit: Option<i64>,
    /// The newest N instead (oldest first), ignoring `after` and `limit`.
    last: Option<i64>,
    /// With `last`: the newest N before this sequence number (the next
    /// page back).
    before: Option<i64>,
}

async fn events(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, AppError> {
    let limit = count("limit", q.limit, 100, 10_000)?;
    let last = q
        .last
        .map(|n| count("last", Some(n), n, 10_000))
        .transpose()?;
    let rows = blocking(&state.store, move |s| match last {
        Some(n) => s.last_events(q.tenant.as_deref(), q.before, n),
        None => s.events_after(q.tenant.as_deref(), q.after, limit),
    })
    .await?;
    Ok(Json(json!({ "events": rows })))
}

async fn event(
    State(state): State<AppState>,
    Path(seq): Path<i64>,
) -> Result<Json<Value>, AppError> {
    let (ev, dels) = blocking(&state.store, move |s| {
        Ok((
            s.event(seq)?,
            s.deliveries(&store::DeliveryFilter::event(seq), 1000)?,
        ))
    })
    .await?;
    let ev = ev.ok_or_else(|| AppError::NotFound(format!("no event {seq}")))?;
    let body: Value = serde_json::from_slice(&ev.body).unwrap_or(Value::Null);
    Ok(Json(
        json!({ "event": ev, "body": body, "deliveries": dels }),
    ))
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    state: Option<String>,
    event: Option<i64>,
    tenant: Option<String>,
    plugin: Option<String>,
    /// Only the deliveries of events after (before) this sequence number.
    after: Option<i64>,
    before: Option<i64>,
    limit: Option<i64>,
    /// The newest N instead (oldest first), ignoring `limit`.
    last: Option<i64>,
}

async fn deliveries(
    State(state): State<AppState>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Value>, AppError> {
    if let Some(s) = q.state.as_deref() {
        if !store::DELIVERY_STATES.contains(&s) {
            return Err(AppError::BadRequest(format!(
                "unknown state `{s}`: one of {}",
                store::DELIVERY_STATES.join(", ")
            )));
        }
    }
    let limit = count("limit", q.limit, 1000, 100_000)?;
    let last = q
        .last
        .map(|n| count("last", Some(n), n, 100_000))
        .transpose()?;
    let filter = store::DeliveryFilter {
        event: q.event,
        state: q.state,
        tenant: q.tenant,
        plugin: q.plugin,
        after: q.after,
        before: q.before,
    };
    let page = blocking(&state.store, move |s| match last {
        Some(n) => s.delivery_page(&filter, n, true),
        None => s.delivery_page(&filter, limit, false),
    })
    .await?;
    Ok(Json(json!(page)))
}

#[derive(Deserialize)]
struct PruneBody {
    /// `"30d"`, `"12h"`…
    older_than: String,
    /// Go on from where an earlier answer stopped (its `resume_after`).
    #[serde(default)]
    after: i64,
}

/// Retention once. A long backlog is pruned in several requests: each
/// prunes for about a quarter of the request timeout (at most 5 s), then
/// answers with
/// `"more": true` and the `resume_after` to send back as `after`.
async fn prune(
    State(state): State<AppState>,
    Json(body): Json<PruneBody>,
) -> Result<Json<Value>, AppError> {
    let age = crate::config::Age::parse_positive(&body.older_than).map_err(AppError::BadRequest)?;
    let budget = state.part_budget();
    let pass = state
        .store
        .prune_for(age, body.after.max(0), Some(budget))
        .await
        .map_err(store_error)?;
    state
        .metrics
        .add("hookhost_events_pruned_total", vec![], pass.pruned as u64);
    Ok(Json(json!({
        "ok": true,
        "pruned": pass.pruned,
        "more": pass.resume_after.is_some(),
        "resume_after": pass.resume_after,
    })))
}

async fn dead_letters(
    State(state): State<AppState>,
    Query(q): Query<store::DeadFilter>,
) -> Result<Json<Value>, AppError> {
    let filter = store::DeliveryFilter {
        state: Some("dead".into()),
        tenant: q.tenant,
        plugin: q.plugin,
        ..Default::default()
    };
    // The oldest 10 000; `more` says there are others (`/admin/deliveries`
    // with `state=dead` and `after` pages through them all).
    let page = blocking(&state.store, move |s| {
        s.delivery_page(&filter, 10_000, false)
    })
    .await?;
    Ok(Json(
        json!({ "dead_letters": page.deliveries, "more": page.more }),
    ))
}

async fn retry(state: State<AppState>, path: Path<(i64, String)>) -> Result<Json<Value>, AppError> {
    settle(state, path, store::DeadLetter::Retry).await
}

async fn discard(
    state: State<AppState>,
    path: Path<(i64, String)>,
) -> Result<Json<Value>, AppError> {
    settle(state, path, store::DeadLetter::Discard).await
}

async fn settle(
    State(state): State<AppState>,
    Path((seq, plugin)): Path<(i64, String)>,
    action: store::DeadLetter,
) -> Result<Json<Value>, AppError> {
    state
        .store
        .settle_dead(seq, plugin.clone(), action)
        .await
        .map_err(store_error)?;
    state.wake.notify();
    Ok(Json(
        json!({ "ok": true, "event_seq": seq, "plugin": plugin }),
    ))
}

async fn retry_all(
    state: State<AppState>,
    body: Option<Json<store::DeadFilter>>,
) -> Result<Json<Value>, AppError> {
    settle_all(state, body, store::DeadLetter::Retry).await
}

async fn discard_all(
    state: State<AppState>,
    body: Option<Json<store::DeadFilter>>,
) -> Result<Json<Value>, AppError> {
    settle_all(state, body, store::DeadLetter::Discard).await
}

async fn settle_all(
    State(state): State<AppState>,
    body: Option<Json<store::DeadFilter>>,
    action: store::DeadLetter,
) -> Result<Json<Value>, AppError> {
    // No body: every dead letter.
    let filter = body.map(|b| b.0).unwrap_or_default();
    let n = state
        .store
        .settle_dead_all(filter, action)
        .await
        .map_err(store_error)?;
    state.wake.notify();
    Ok(Json(json!({ action.done(): n })))
}

#[derive(Deserialize, Default)]
struct ReplayBody {
    plugin: Option<String>,
    #[serde(default)]
    resend: bool,
}

async fn replay(
    State(state): State<AppState>,
    Path(seq): Path<i64>,
    body: Option<Json<ReplayBody>>,
) -> Result<Json<Value>, AppError> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let ev = blocking(&state.store, move |s| s.event(seq))
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no event {seq}")))?;
    let plugins = match body.plugin {
        Some(p) => {
            if !state.registry.plugins_for(&ev.tenant).contains(&p) {
                return Err(AppError::BadRequest(format!(
                    "plugin `{p}` does not run for tenant `{}`",
                    ev.tenant
                )));
            }
            vec![p]
        }
        None => state.registry.plugins_for(&ev.tenant),
    };
    let queued = state
        .store
        .replay(seq, plugins, body.resend)
        .await
        .map_err(store_error)?;
    state.wake.notify();
    Ok(Json(
        json!({ "ok": true, "event_seq": seq, "plugins": queued, "resend": body.resend }),
    ))
}

async fn plugins(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "plugins": state.registry.statuses(),
        "ignored": state.registry.ignored(),
    }))
}

/// Reads the configuration file again: what may change while running (see
/// [`crate::live`]) changes at once; the answer says what changed and what
/// needs a restart.
async fn reload(State(state): State<AppState>) -> Result<Json<crate::live::Reloaded>, AppError> {
    let s = state.clone();
    tokio::task::spawn_blocking(move || crate::server::reload(&s.live, &s.registry, &s.metrics))
        .await
        .map_err(|_| AppError::Internal)?
        .map(Json)
        .map_err(|e| AppError::BadRequest(e.to_string()))
}
