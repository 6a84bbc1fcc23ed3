//! `POST /webhook/{tenant}`: size limit, tenant, signature, typed parse,
//! idempotency key, durable commit, then 200. Nothing is answered 200 before
//! the event is committed.

use super::{AppError, AppState};
use crate::config::DEFAULT_TENANT;
use crate::store::{IngestOutcome, NewEvent};
use crate::{event, signature};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The answer to an accepted webhook: `{"ok":true,"duplicate":false,"key":"…"}`.
#[derive(serde::Serialize)]
pub struct Ack {
    ok: bool,
    duplicate: bool,
    key: String,
}

pub async fn default_tenant(State(state): State<AppState>, req: Request) -> Response {
    take(&state, DEFAULT_TENANT, req).await
}

pub async fn tenant(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    req: Request,
) -> Response {
    take(&state, &tenant, req).await
}

/// Times the request into `hookhost_webhook_seconds`, from the moment it
/// is routed (so a slow upload counts) to its answer, or to the moment it
/// is given up (a timeout drops this future, and the timer with it);
/// answers a sender that asks before it sends (`Expect: 100-continue`) a
/// body declared larger than the limit with 413 at once, instead of
/// `100 Continue`, then reads the body and takes the event. (A sender that
/// does not ask is answered 413 once the limit is read: refused before it
/// has finished writing, most clients see a broken connection rather than
/// the answer.)
async fn take(state: &AppState, tenant: &str, req: Request) -> Response {
    let _timer = Timer(std::time::Instant::now(), &state.metrics);
    let headers = req.headers();
    let asks = headers
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if asks && declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        state
            .metrics
            .received(known(state, tenant), "-", "too_large");
        return AppError::TooLarge(state.max_body_bytes).into_response();
    }
    // Of the headers, only the signature is needed past this point.
    let sig = headers.get(signature::HEADER).cloned();
    // Within the route's `DefaultBodyLimit`.
    let body = Bytes::from_request(req, state).await;
    receive(state, tenant, sig, body).await.into_response()
}

async fn receive(
    state: &AppState,
    tenant_name: &str,
    sig: Option<HeaderValue>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Ack>, AppError> {
    let metrics = &state.metrics;
    let outcome = async {
        let body = body.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::TooLarge(state.max_body_bytes)
            } else {
                AppError::BadRequest("could not read request body".into())
            }
        })?;
        let settings = state.live.get();
        let tenant = settings.tenants.get(tenant_name).ok_or_else(|| {
            AppError::UnknownTenant(
                crate::config::valid_name(tenant_name).then(|| tenant_name.to_string()),
            )
        })?;
        if !tenant.keys.is_empty() {
            signature::verify_keys(&tenant.keys, sig.as_ref().map(|v| v.as_bytes()), &body)
                .map_err(|e| AppError::Unauthorized(e.to_string()))?;
        }
        state
            .rate
            .check(&tenant.name, &tenant.config.rate_limit)
            .map_err(|retry_after_s| AppError::RateLimited { retry_after_s })?;
        let parsed = event::parse(&body).map_err(|e| AppError::BadRequest(e.to_string()))?;
        let label = parsed.event.type_label();
        let new = NewEvent {
            tenant: tenant.name.clone(),
            key: parsed.key.clone(),
            event_type: parsed.event.event_type().to_string(),
            ordering_key: parsed.ordering_key,
            body: body.to_vec(),
            received_at: crate::store::now_ms(),
        };
        let stored = state.store.ingest(new).await.map_err(|e| {
            tracing::debug!(tenant = tenant_name, error = %e, "event not committed");
            state.not_committed.failed(&e);
            AppError::StoreUnavailable
        })?;
        state.not_committed.succeeded();
        Ok::<_, AppError>((parsed.key, label, stored))
    }
    .await;
    match outcome {
        Ok((key, event_type, stored)) => {
            let duplicate = matches!(stored, IngestOutcome::Duplicate { .. });
            metrics.received(
                tenant_name,
                event_type,
                if duplicate { "duplicate" } else { "stored" },
            );
            if duplicate {
                tracing::debug!(tenant = tenant_name, key, "duplicate event");
            } else {
                let seq = match stored {
                    IngestOutcome::Stored { seq } | IngestOutcome::Duplicate { seq } => seq,
                };
                tracing::debug!(tenant = tenant_name, key, seq, event_type, "event stored");
                state.wake.notify();
            }
            Ok(Json(Ack {
                ok: true,
                duplicate,
                key,
            }))
        }
        Err(e) => {
            let label = match &e {
                AppError::TooLarge(_) => "too_large",
                AppError::UnknownTenant(_) => "unknown_tenant",
                AppError::Unauthorized(_) => "bad_signature",
                AppError::BadRequest(_) => "bad_request",
                AppError::StoreUnavailable => "store_unavailable",
                AppError::RateLimited { .. } => "rate_limited",
                _ => "error",
            };
            metrics.received(known(state, tenant_name), "-", label);
            Err(e)
        }
    }
}

/// The tenant's name for a metric label, if it is one of the configured
/// tenants: anyone could fill the metrics with invented names.
fn known<'a>(state: &AppState, tenant: &'a str) -> &'a str {
    if state.live.get().tenants.contains_key(tenant) {
        tenant
    } else {
        "-"
    }
}

/// Observes `hookhost_webhook_seconds` when dropped.
struct Timer<'a>(std::time::Instant, &'a crate::metrics::Metrics);

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.1
            .webhook_seconds
            .observe(self.0.elapsed().as_secs_f64());
    }
}
