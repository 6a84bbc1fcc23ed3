//! `POST /admin/events/replay`: a range of events through their plugins
//! again, for instance to give a plugin added later the history it missed.
//! Each request works for about a quarter of the request timeout and says
//! where to go on from, as retention's does.

use super::admin::{blocking, store_error};
use super::{AppError, AppState};
use crate::runtime::convert;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// Events read and queued per writer transaction.
const CHUNK: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RangeBody {
    /// The first event (its sequence number).
    from: i64,
    /// The last one; the newest when not given.
    to: Option<i64>,
    /// Only this tenant's events.
    tenant: Option<String>,
    /// Only this plugin (it must run for the events' tenant).
    plugin: Option<String>,
    #[serde(default)]
    resend: bool,
}

pub(super) async fn replay_range(
    State(state): State<AppState>,
    Json(body): Json<RangeBody>,
) -> Result<Json<Value>, AppError> {
    let to = body.to.unwrap_or(i64::MAX);
    if body.from < 1 || to < body.from {
        return Err(AppError::BadRequest(
            "`from` must be a sequence number ≥ 1, and `to` not below it".into(),
        ));
    }
    let settings = state.live.get();
    if let Some(t) = &body.tenant {
        if !settings.tenants.contains_key(t) {
            return Err(AppError::BadRequest(format!("no tenant `{t}`")));
        }
    }
    if let Some(p) = &body.plugin {
        let runs = |t: &str| state.registry.plugins_for(t).contains(p);
        let ok = match &body.tenant {
            Some(t) => runs(t),
            None => settings.tenants.keys().any(|t| runs(t)),
        };
        if !ok {
            return Err(AppError::BadRequest(format!(
                "plugin `{p}` does not run for {}",
                body.tenant
                    .as_deref()
                    .map_or("any tenant".to_string(), |t| format!("tenant `{t}`"))
            )));
        }
    }
    let budget = state.part_budget();
    let began = Instant::now();
    let mut total = crate::store::Replayed::default();
    let mut pos = body.from - 1;
    let more = loop {
        let started = Instant::now();
        let heads = blocking(&state.store, move |s| s.event_heads(pos, CHUNK)).await?;
        let full = heads.len() as i64 == CHUNK;
        let mut plugins_of: HashMap<String, Vec<String>> = HashMap::new();
        let mut items = Vec::new();
        let mut reached_end = !full;
        for h in heads {
            if h.seq > to {
                reached_end = true;
                break;
            }
            pos = h.seq;
            if body.tenant.as_ref().is_some_and(|t| *t != h.tenant) {
                continue;
            }
            let plugins = plugins_of
                .entry(h.tenant.clone())
                .or_insert_with(|| state.registry.plugins_for(&h.tenant));
            let kind = convert::kind_of_type(&h.event_type);
            let chosen: Vec<String> = plugins
                .iter()
                .filter(|p| body.plugin.as_ref().is_none_or(|only| only == *p))
                // A plugin still loading gets the row; it is skipped at
                // delivery time if it does not want the event.
                .filter(|p| state.registry.get(p).is_none_or(|lp| lp.wants(kind)))
                .cloned()
                .collect();
            if !chosen.is_empty() {
                items.push((h.seq, chosen));
            }
        }
        if !items.is_empty() {
            let done = state
                .store
                .replay_many(items, body.resend)
                .await
                .map_err(store_error)?;
            total.events += done.events;
            total.deliveries += done.deliveries;
            total.running += done.running;
            state.wake.notify();
        }
        if reached_end || pos >= to {
            break false;
        }
        // Stop unless another chunk like this one fits the budget.
        if began.elapsed() + started.elapsed() > budget {
            break true;
        }
    };
    Ok(Json(json!({
        "ok": true,
        "events": total.events,
        "deliveries": total.deliveries,
        "running": total.running,
        "resend": body.resend,
        "more": more,
        "resume_after": more.then_some(pos),
    })))
}
