//! What may start: the slots, each tenant's cap and its plugins' shares
//! of it, and the due deliveries of each (tenant, plugin) lane.

use super::{Inner, Lane, Running};
use crate::store::{now_ms, DueDelivery};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the lane-by-lane scheduler asks the ledger which lanes have
/// open rows (to find those of removed plugins).
const LEDGER_LANES_EVERY: Duration = Duration::from_secs(1);

/// How long a lane found with nothing to start is walked only over its new
/// rows (see `Quiet`) before it is read whole again: the bound on how late
/// a change the dispatcher does not hear of (an offline command's retry or
/// replay) is seen.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// Deliveries that may run at once now: `busy_workers` while webhook
/// events queue for the store, else `workers`. Shown as
/// `hookhost_dispatch_slots`.
pub(super) fn slots(inner: &Inner, cfg: &crate::config::DispatchConfig) -> usize {
    let n = if inner.store.ingest_crowded() {
        cfg.busy_workers.min(cfg.workers)
    } else {
        cfg.workers
    };
    if inner.slots.swap(n, Ordering::Relaxed) != n {
        inner
            .metrics
            .set("hookhost_dispatch_slots", vec![], n as f64);
    }
    n
}

/// A lane found with every chat held back: where its walk ended, when it
/// was last read whole, and the operator's changes to the ledger then.
pub(super) struct Quiet {
    walk: crate::store::LaneWalk,
    read_whole_at: std::time::Instant,
    ledger_changes: u64,
}

/// What may start in `lanes` (see `Store::due_in_lane`), oldest first
/// across them, so that a lane held at its share of the tenant's slots does
/// not crowd the others out of the list; a lane held back whole at the last
/// pass is read from where that walk ended.
pub(super) fn due(
    inner: &Inner,
    limit: i64,
    enough: i64,
    lanes: &[Lane],
) -> Result<Vec<DueDelivery>, crate::store::StoreError> {
    let now = now_ms();
    let latest = now.saturating_add(inner.live.get().dispatch.backoff_max_ms as i64);
    // Read before the walks: a change made during them counts as after.
    let changes = inner.store.ledger_changes();
    let mut all = Vec::new();
    for lane in lanes {
        let kept = inner.quiet.lock().unwrap().remove(lane);
        let (mut walk, read_whole_at) = match kept {
            Some(q)
                if q.read_whole_at.elapsed() < QUIET_FOR
                    && now < q.walk.wakes_at
                    && q.ledger_changes == changes =>
            {
                (q.walk, q.read_whole_at)
            }
            _ => (Default::default(), std::time::Instant::now()),
        };
        let found = inner
            .store
            .due_in_lane(now, latest, limit, enough, lane, &mut walk)?;
        if found.is_empty() && walk.complete {
            inner.quiet.lock().unwrap().insert(
                lane.clone(),
                Quiet {
                    walk,
                    read_whole_at,
                    ledger_changes: changes,
                },
            );
        }
        all.extend(found);
    }
    all.sort_by_key(|d| d.event_seq);
    Ok(all)
}

/// Deliveries `tenant` may run at once.
pub(super) fn tenant_cap(settings: &crate::live::Settings, tenant: &str) -> usize {
    settings
        .tenants
        .get(tenant)
        .and_then(|t| t.config.concurrency)
        .unwrap_or(settings.dispatch.tenant_concurrency)
}

/// Each tenant's share of its slots for one plugin: its plugins with work
/// (due, or running) share its `concurrency` evenly, so one whose
/// deliveries wait long (a slow gateway) cannot take every slot and hold up
/// the tenant's other plugins. A plugin alone with work may use them all.
pub(super) fn shares(
    settings: &crate::live::Settings,
    due: &[DueDelivery],
    r: &Running,
) -> HashMap<String, usize> {
    let mut busy: HashMap<&str, HashSet<&str>> = HashMap::new();
    let running = r.per_lane.keys().map(|(t, p)| (t.as_str(), p.as_str()));
    for (t, p) in due
        .iter()
        .map(|d| (d.tenant.as_str(), d.plugin.as_str()))
        .chain(running)
    {
        busy.entry(t).or_default().insert(p);
    }
    busy.into_iter()
        .map(|(t, plugins)| {
            let share = tenant_cap(settings, t).div_ceil(plugins.len().max(1));
            (t.to_string(), share.max(1))
        })
        .collect()
}

/// The ledger's open lanes, read again when the last read is older than
/// `LEDGER_LANES_EVERY`.
pub(super) fn ledger_lanes(inner: &Inner) -> Result<Vec<Lane>, crate::store::StoreError> {
    let mut cached = inner.ledger_lanes.lock().unwrap();
    match &*cached {
        Some((lanes, at)) if at.elapsed() < LEDGER_LANES_EVERY => Ok(lanes.clone()),
        _ => {
            let lanes = inner.store.open_lanes()?;
            *cached = Some((lanes.clone(), std::time::Instant::now()));
            Ok(lanes)
        }
    }
}
