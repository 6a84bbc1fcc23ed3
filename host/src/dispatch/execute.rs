//! Running deliveries: a slot's run on a blocking thread, one delivery
//! in a fresh instance, and the run's outcomes recorded in the ledger.

use super::{outcome_for, runs, Inner};
use crate::bindings::types as wit;
use crate::runtime;
use crate::store::{DeliveryOutcome, DueDelivery};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs a slot's deliveries one after another on a blocking thread, as
/// long as `budget` allows (twice over: a plugin's pace drifts) and the
/// dispatcher is not stopping; the first always runs. Per delivery:
/// `None` if it did not run, else [`execute`]'s answer.
pub(super) fn execute_run(
    inner: &Inner,
    run: &[DueDelivery],
    budget: Duration,
) -> Vec<Option<Option<runtime::Failure>>> {
    let started = Instant::now();
    run.iter()
        .enumerate()
        .map(|(i, d)| {
            if i > 0
                && (started.elapsed() >= budget.saturating_mul(2)
                    || inner.stopping.load(Ordering::SeqCst))
            {
                return None;
            }
            let at = Instant::now();
            let failure = execute(inner, d, d.attempts + 1);
            inner.pace.record(&d.plugin, at.elapsed());
            Some(failure)
        })
        .collect()
}

/// Records a run's outcomes (metrics, then the ledger in one commit) and
/// gives back its deliveries and its slot.
pub(super) async fn finish_run(
    inner: &Inner,
    run: &[DueDelivery],
    ran: Vec<Option<Option<runtime::Failure>>>,
) {
    let cfg = inner.live.get().dispatch.clone();
    let mut outcomes = Vec::with_capacity(run.len());
    let mut not_run = 0;
    for (d, failure) in run.iter().zip(ran) {
        let Some(failure) = failure else {
            not_run += usize::from(d.queued);
            outcomes.push((d.event_seq, d.plugin.clone(), None));
            continue;
        };
        let ledger = outcome_for(failure.as_ref(), d.attempts + 1, &cfg);
        let label = match &ledger {
            DeliveryOutcome::Done => "done",
            DeliveryOutcome::Retry { .. } => "retry",
            DeliveryOutcome::Dead { .. } => "dead",
        };
        inner.metrics.inc(
            "hookhost_deliveries_total",
            vec![
                ("tenant", d.tenant.clone()),
                ("plugin", d.plugin.clone()),
                ("outcome", label.into()),
            ],
        );
        if matches!(ledger, DeliveryOutcome::Dead { .. }) {
            inner.metrics.inc(
                "hookhost_dead_letters_total",
                vec![("tenant", d.tenant.clone()), ("plugin", d.plugin.clone())],
            );
        }
        outcomes.push((d.event_seq, d.plugin.clone(), Some(ledger)));
    }
    let retry_at = outcomes
        .iter()
        .filter_map(|(_, _, o)| match o {
            Some(DeliveryOutcome::Retry { next_at, .. }) => Some(*next_at),
            _ => None,
        })
        .min();
    // The ledger must hear the outcomes: the write is tried again for as
    // long as the store refuses it (a full disk), until the dispatcher
    // stops; then the rows, still `running`, are queued again at the next
    // start. Giving up sooner would leave them `running` until a restart.
    let recorded = until_done(&inner.stopping, RECORD_PAUSES, || async {
        inner.store.finish_all(outcomes.clone()).await.map_err(|e| {
            tracing::debug!(error = %e, seq = run[0].event_seq, plugin = %run[0].plugin, deliveries = run.len(), "cannot record delivery outcomes");
            inner.record_trouble.failed(&e);
        })
    })
    .await;
    if recorded {
        inner.record_trouble.succeeded();
        if let Some(at) = retry_at {
            inner.retry_hint.fetch_min(at, Ordering::SeqCst);
        }
        inner.pending.fetch_add(not_run, Ordering::Relaxed);
    }
    // After the commit: a pass that read the lane before it held the
    // chats of this run back, and must read it whole again.
    inner
        .quiet
        .lock()
        .unwrap()
        .retain(|(t, p), _| !run.iter().any(|d| d.tenant == *t && d.plugin == *p));
    runs::release(&mut inner.running.lock().unwrap(), run);
    inner.wake.notify();
}

/// Pauses between tries to record a run's outcomes: 100 ms, growing by
/// 100 ms a try, at most 5 s.
const RECORD_PAUSES: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Calls `attempt` until it succeeds (`true`) or `stopping` is set
/// (`false`), pausing `first`, `2 × first`, … at most `max` between tries.
pub(super) async fn until_done<F, Fut>(
    stopping: &AtomicBool,
    (first, max): (Duration, Duration),
    mut attempt: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ()>>,
{
    let mut pause = first;
    loop {
        if attempt().await.is_ok() {
            return true;
        }
        if stopping.load(Ordering::SeqCst) {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause + first).min(max);
    }
}

/// Counts a delivery in `Inner::in_flight` until dropped (its blocking
/// task ended, or never ran).
pub(super) struct InFlight(Arc<Inner>);

impl InFlight {
    pub(super) fn new(inner: &Arc<Inner>) -> InFlight {
        inner.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs one delivery on a blocking thread. `None` means success.
fn execute(inner: &Inner, d: &DueDelivery, attempt: u32) -> Option<runtime::Failure> {
    if inner.idle {
        crate::priority::idle_current_thread();
    } else {
        crate::priority::lower_current_thread(inner.nice);
    }
    let span = tracing::info_span!(
        "delivery",
        tenant = %d.tenant,
        plugin = %d.plugin,
        seq = d.event_seq,
        key = tracing::field::Empty,
        attempt
    );
    let _g = span.enter();
    let Some(plugin) = inner.registry.get(&d.plugin) else {
        return Some(runtime::Failure::Instantiate(
            inner.registry.why_not_loaded(&d.plugin),
        ));
    };
    // Queued before a reload took the tenant or the plugin away: it does
    // not run under another tenant's (or the default) grants. Retried like
    // a plugin that is not loaded, in case the configuration comes back.
    if !inner.registry.runs_for(&d.tenant, &d.plugin) {
        return Some(runtime::Failure::Instantiate(format!(
            "plugin does not run for tenant `{}` in the configuration",
            d.tenant
        )));
    }
    let ev = match inner.recent.get(&inner.store, d.event_seq) {
        Ok(ev) => ev,
        Err(f) => return Some(f),
    };
    span.record("key", ev.key.as_str());
    if !plugin.wants(ev.kind) {
        return None;
    }
    let ctx = wit::DeliveryContext {
        tenant: d.tenant.clone(),
        plugin: d.plugin.clone(),
        event_key: ev.key.clone(),
        attempt,
        received_at: ev.received_at,
        raw_json: ev.raw.clone(),
    };
    let policy = inner.registry.policy(&d.tenant, &d.plugin);
    let mut caps = inner
        .registry
        .capabilities(&d.tenant, &d.plugin, d.event_seq, &policy);
    caps.resend = d.resend;
    caps.last_attempt = attempt >= inner.live.get().dispatch.max_attempts;
    let report = runtime::deliver(&plugin, caps, &policy.limits, &ev.event, &ctx);
    let labels = vec![("plugin", d.plugin.clone())];
    inner.metrics.observe(
        "hookhost_delivery_seconds",
        labels.clone(),
        report.total.as_secs_f64(),
    );
    inner.metrics.observe(
        "hookhost_instantiate_seconds",
        labels.clone(),
        report.instantiate.as_secs_f64(),
    );
    inner
        .metrics
        .observe("hookhost_fuel_used", labels, report.fuel_used as f64);
    for line in report.output.lines().take(200) {
        tracing::info!(target: "plugin", tenant = %d.tenant, plugin = %d.plugin, stream = "stdio", "{line}");
    }
    if let Some(g) = report.denied {
        inner.metrics.add(
            "hookhost_capability_denied_total",
            vec![
                ("tenant", d.tenant.clone()),
                ("plugin", d.plugin.clone()),
                ("capability", g.as_str().to_string()),
            ],
            1,
        );
    }
    if report.log_dropped > 0 {
        inner.metrics.add(
            "hookhost_plugin_log_lines_dropped_total",
            vec![("plugin", d.plugin.clone())],
            report.log_dropped as u64,
        );
        tracing::warn!(
            dropped = report.log_dropped,
            "plugin log lines over the limit were dropped"
        );
    }
    match report.result {
        Ok(()) => {
            tracing::debug!(
                fuel = report.fuel_used,
                us = report.total.as_micros() as u64,
                hash = plugin.short_hash(),
                "delivered"
            );
            None
        }
        Err(f) => {
            tracing::warn!(reason = %f, fuel = report.fuel_used, hash = plugin.short_hash(), "delivery failed");
            Some(f)
        }
    }
}
