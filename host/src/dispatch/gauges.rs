//! The backlog the dispatcher counts: pending deliveries and the gauges
//! the metrics show.

use super::Inner;
use std::sync::atomic::Ordering;

/// Sets `pending` from the ledger.
pub(super) fn count_pending(inner: &Inner) {
    match inner.store.pending_count() {
        Ok(n) => {
            inner.count_trouble.succeeded();
            inner.pending.store(n, Ordering::Relaxed)
        }
        Err(e) => inner.count_trouble.failed(&e),
    }
}

pub(super) fn publish_gauges(inner: &Inner, cursor: Option<i64>) {
    let Some(cursor) = cursor else { return };
    if let Ok((max_seq, open)) = inner.store.backlog() {
        inner.metrics.set(
            "hookhost_inbox_lag",
            vec![],
            (max_seq - cursor).max(0) as f64,
        );
        inner
            .metrics
            .set("hookhost_deliveries_open", vec![], open as f64);
    }
    // Each (tenant, plugin) that ever held keys, against the quota it runs
    // under now (one row each: the usage is kept up to date by the store).
    if let Ok(rows) = inner.store.kv_usage_all() {
        for u in rows {
            let limits = inner.registry.policy(&u.tenant, &u.plugin).limits;
            let used = |n: i64, quota: u64| n.max(0) as f64 / quota.max(1) as f64;
            let ratio = used(u.keys, limits.kv_keys).max(used(u.bytes, limits.kv_bytes));
            let labels = vec![("tenant", u.tenant), ("plugin", u.plugin)];
            let m = &inner.metrics;
            m.set("hookhost_kv_keys", labels.clone(), u.keys as f64);
            m.set("hookhost_kv_bytes", labels.clone(), u.bytes as f64);
            m.set("hookhost_kv_quota_used_ratio", labels, ratio);
        }
    }
    // Dead letters waiting for the operator: a pair's series goes once its
    // last dead letter is retried or discarded.
    if let Ok(rows) = inner.store.dead_counts() {
        let m = &inner.metrics;
        let current: Vec<_> = rows
            .into_iter()
            .map(|(tenant, plugin, n)| (vec![("tenant", tenant), ("plugin", plugin)], n))
            .collect();
        m.remove_gauges("hookhost_dead_letters", |l| {
            current.iter().any(|(labels, _)| labels == l)
        });
        for (labels, n) in current {
            m.set("hookhost_dead_letters", labels, n as f64);
        }
    }
    if let Ok((bytes, free)) = inner.store.size() {
        inner
            .metrics
            .set("hookhost_store_bytes", vec![], bytes as f64);
        inner
            .metrics
            .set("hookhost_store_free_bytes", vec![], free as f64);
    }
}
