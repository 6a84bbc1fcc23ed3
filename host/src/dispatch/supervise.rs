//! Keeps the dispatcher's loop going: a panic in it (a bug) restarts it
//! after the deliveries under way have ended, instead of ending deliveries
//! for good while ingest goes on.

use super::{run, Inner, Running};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The pause before the dispatcher starts again after a failure, doubled
/// for each failure in a row up to `RESTART_MAX`.
const RESTART_FIRST: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(60);

/// Runs the dispatcher's loop until it is stopped. A panic in the loop or
/// in a delivery's bookkeeping (a bug) would otherwise end deliveries for
/// good while ingest goes on: the loop starts again, once the deliveries
/// it had under way have ended and their rows are queued again, after a
/// pause that doubles while failures follow each other.
pub(super) fn supervise(rt: &tokio::runtime::Runtime, inner: &Arc<Inner>, stop: &Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(run(inner.clone(), stop.clone()))
        }));
        let Err(panic) = ran else { return };
        // A loop that ran for a while before failing starts the count again.
        if started.elapsed() > RESTART_MAX {
            failures = 0;
        }
        failures += 1;
        let pause = RESTART_FIRST
            .saturating_mul(1 << (failures - 1).min(10))
            .min(RESTART_MAX);
        tracing::error!(
            error = panic_message(panic.as_ref()),
            failures,
            pause_ms = pause.as_millis() as u64,
            "the dispatcher failed; it starts again once the deliveries under way have ended"
        );
        inner
            .metrics
            .inc("hookhost_dispatcher_restarts_total", vec![]);
        if !rt.block_on(recover(inner, stop, pause)) {
            return;
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

/// After a failure: waits `pause`, and then for the deliveries still on
/// the blocking pool (each ends by its deadline); then forgets what the
/// failed loop held and queues its `running` rows again, whose outcomes
/// went with it. `false`: stopped meanwhile.
async fn recover(inner: &Inner, stop: &Notify, pause: Duration) -> bool {
    let mut wait = pause;
    loop {
        tokio::select! {
            _ = stop.notified() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        if inner.in_flight.load(Ordering::SeqCst) == 0 {
            break;
        }
        wait = Duration::from_millis(50);
    }
    *inner.running.lock().unwrap_or_else(PoisonError::into_inner) = Running::default();
    inner.running.clear_poison();
    *inner
        .ledger_lanes
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    inner.ledger_lanes.clear_poison();
    loop {
        match inner.store.requeue_running().await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        requeued = n,
                        "deliveries interrupted by the failure queued again"
                    );
                }
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot queue interrupted deliveries again; will retry");
                tokio::select! {
                    _ = stop.notified() => return false,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// A delivery task that panicked fails the loop (see [`supervise`]): what
/// it held under the caps would otherwise stay held.
pub(super) fn joined(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}
