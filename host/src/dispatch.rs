//! The dispatcher: turns committed events into deliveries and runs them.
//!
//! Fan-out creates one ledger row per (event, plugin that runs for the
//! tenant and wants the event kind) and moves a durable cursor in the same
//! transaction, keeping at most `max_pending` rows waiting to run: during a
//! burst the rest wait in the inbox and the writer is not asked to create
//! rows faster than the plugins can take them. The scheduler runs due
//! deliveries, at most one at a time per (tenant, plugin, chat) so a chat
//! reaches a plugin in order, within global and per-tenant caps; a slot
//! under the caps runs a fast plugin's deliveries one after another
//! (`runs`). Outcomes go to the ledger: done, failed with a backoff, or
//! dead. Work left running by a crash is requeued at start.

use crate::bindings::types as wit;
use crate::config::DispatchConfig;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::repeated::Repeated;
use crate::runtime::{self, convert, Registry};
use crate::store::{now_ms, DeliveryOutcome, DueDelivery, NewDelivery, Store};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;

mod prepared;
mod runs;

const FANOUT_BATCH: i64 = 1000;
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Shortest time between two passes. Every stored event and every finished
/// delivery wakes the dispatcher; under load the wakes are gathered so one
/// pass (a few queries and one write) serves all of them.
const MIN_PASS_GAP: Duration = Duration::from_millis(1);
/// How often the backlog gauges are counted (a count over every open
/// delivery: not at every pass).
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// How often the lane-by-lane scheduler asks the ledger which lanes have
/// open rows (to find those of removed plugins).
const LEDGER_LANES_EVERY: Duration = Duration::from_secs(1);
/// How long a lane found with nothing to start is walked only over its new
/// rows (see `Quiet`) before it is read whole again: the bound on how late
/// a change the dispatcher does not hear of (an offline command's retry or
/// replay) is seen.
const QUIET_FOR: Duration = Duration::from_secs(1);
/// The pause before the dispatcher starts again after a failure, doubled
/// for each failure in a row up to `RESTART_MAX`.
const RESTART_FIRST: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(60);

/// The dispatcher runs on a thread of its own, with a single-threaded
/// runtime whose blocking pool (threads `hookhost-deliver`) runs the
/// deliveries: its ledger reads and passes never hold up a thread that
/// answers requests, and its CPU time shows apart from theirs.
pub struct Dispatcher {
    stop: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    done: tokio::sync::oneshot::Receiver<()>,
    #[cfg(test)]
    inner: Arc<Inner>,
}

struct Inner {
    /// Tenants and `[dispatch]` (retries, caps, `max_pending`), reloadable.
    live: Arc<Live>,
    /// The delivery threads' nice value, set at start.
    nice: i32,
    /// Deliveries, and the dispatcher's own thread, at the idle policy
    /// instead (`dispatch.idle_priority`), set at start: a thread cannot
    /// leave it.
    idle: bool,
    store: Store,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    wake: Arc<crate::wake::Wake>,
    running: Mutex<Running>,
    /// Rows in state `pending`, counted on fan-out and start, and read
    /// again from the ledger once a second for the rows queued elsewhere
    /// (an operator's retries and replays).
    pending: AtomicUsize,
    /// The earliest retry time recorded since the loop last read the
    /// ledger's (ms; `i64::MAX`: none), so that a pass does not ask the
    /// ledger for it every time.
    retry_hint: AtomicI64,
    /// The ledger's open lanes and when they were read, for the lanes of
    /// plugins and tenants no longer configured.
    ledger_lanes: Mutex<Option<(Vec<Lane>, std::time::Instant)>>,
    /// Lanes whose every chat was held back at the last pass (all running
    /// or waiting for a retry), with where the walk ended and when the lane
    /// was last read whole: the next pass reads only the rows added since.
    /// Dropped when an outcome in the lane is recorded, a retry comes due,
    /// an operator changes the ledger through this process, or after
    /// `QUIET_FOR`.
    quiet: Mutex<HashMap<Lane, Quiet>>,
    /// Events read and parsed for the deliveries running now and soon.
    recent: prepared::Recent,
    /// Runs on the blocking pool, counted apart from `running`: they go on
    /// after a failure of the loop that started them.
    in_flight: AtomicUsize,
    /// Each plugin's recent time per delivery, for the length of its runs.
    pace: runs::Pace,
    /// Set by [`Dispatcher::stop`]: runs start no more deliveries.
    stopping: Arc<AtomicBool>,
    /// The slots the last pass planned with (see [`slots`]).
    slots: AtomicUsize,
    /// Store failures (a full disk) in the loop's steps, each logged when
    /// it starts and ends rather than at every pass.
    fan_out_trouble: Repeated,
    schedule_trouble: Repeated,
    record_trouble: Repeated,
    count_trouble: Repeated,
}

/// A (tenant, plugin) queue of deliveries.
type Lane = (String, String);

/// What runs now: deliveries and their chats, and the slots their runs
/// hold (see `runs`).
#[derive(Default)]
struct Running {
    deliveries: HashSet<(i64, String)>,
    chains: HashSet<(String, String, String)>,
    /// Slots per tenant.
    per_tenant: HashMap<String, usize>,
    /// Slots per (tenant, plugin) with any, for each plugin's share of its
    /// tenant's `concurrency`.
    per_lane: HashMap<Lane, usize>,
    /// Slots in all.
    total: usize,
}

/// A delivery's result, as the ledger records it.
pub fn outcome_for(
    failure: Option<&runtime::Failure>,
    attempts: u32,
    cfg: &DispatchConfig,
) -> DeliveryOutcome {
    match failure {
        None => DeliveryOutcome::Done,
        Some(f) if !f.retryable() || attempts >= cfg.max_attempts => DeliveryOutcome::Dead {
            error: f.to_string(),
        },
        Some(f) => DeliveryOutcome::Retry {
            error: f.to_string(),
            next_at: now_ms() + backoff_ms(attempts, cfg) as i64,
        },
    }
}

/// Exponential backoff with jitter: base·2^(n-1), capped, times 0.5–1.0.
pub fn backoff_ms(attempts: u32, cfg: &DispatchConfig) -> u64 {
    let exp = cfg
        .backoff_base_ms
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
    let capped = exp.min(cfg.backoff_max_ms).max(1);
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    (capped as f64 * jitter) as u64
}

impl Dispatcher {
    pub fn start(
        live: Arc<Live>,
        store: Store,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        wake: Arc<crate::wake::Wake>,
    ) -> Dispatcher {
        let inner = Arc::new(Inner {
            nice: live.get().dispatch.nice,
            idle: live.get().dispatch.idle_priority,
            live,
            store,
            registry,
            metrics,
            wake,
            running: Mutex::new(Running::default()),
            pending: AtomicUsize::new(0),
            retry_hint: AtomicI64::new(i64::MAX),
            ledger_lanes: Mutex::new(None),
            quiet: Mutex::default(),
            recent: prepared::Recent::default(),
            in_flight: AtomicUsize::new(0),
            pace: runs::Pace::default(),
            stopping: Arc::new(AtomicBool::new(false)),
            slots: AtomicUsize::new(0),
            fan_out_trouble: Repeated::new("fan-out"),
            schedule_trouble: Repeated::new("scheduling deliveries"),
            record_trouble: Repeated::new("recording delivery outcomes"),
            count_trouble: Repeated::new("counting pending deliveries"),
        });
        let stopping = inner.stopping.clone();
        let stop = Arc::new(Notify::new());
        let (finished, done) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("hookhost-deliver")
            .build()
            .expect("dispatcher runtime");
        let s = stop.clone();
        let i = inner.clone();
        std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || {
                // Fanning out and scheduling are background work like the
                // deliveries: at the idle policy they wait for a pause in
                // ingest and then find more events to take in one pass.
                if i.idle {
                    crate::priority::idle_current_thread();
                }
                #[cfg(target_os = "linux")]
                // SAFETY: gettid has no preconditions.
                i.metrics
                    .dispatcher_started(unsafe { libc::gettid() } as i64);
                // Returns once the deliveries under way have ended; `stop`
                // waits for that up to its grace period, and the process
                // may exit before (they run again at the next start).
                supervise(&rt, &i, &s);
                // A gauge count still running on the blocking pool is not
                // waited for.
                rt.shutdown_background();
                let _ = finished.send(());
            })
            .expect("spawn dispatcher thread");
        Dispatcher {
            stop,
            stopping,
            done,
            #[cfg(test)]
            inner,
        }
    }

    /// Stops taking new work and waits for running deliveries, up to `grace`.
    pub async fn stop(self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_one();
        if tokio::time::timeout(grace, self.done).await.is_err() {
            tracing::warn!("deliveries still running at shutdown; they resume at the next start");
        }
    }
}

/// Runs the dispatcher's loop until it is stopped. A panic in the loop or
/// in a delivery's bookkeeping (a bug) would otherwise end deliveries for
/// good while ingest goes on: the loop starts again, once the deliveries
/// it had under way have ended and their rows are queued again, after a
/// pause that doubles while failures follow each other.
fn supervise(rt: &tokio::runtime::Runtime, inner: &Arc<Inner>, stop: &Arc<Notify>) {
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
fn joined(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

async fn run(inner: Arc<Inner>, stop: Arc<Notify>) {
    let wake = inner.wake.clone();
    let listener = wake.listen();
    let mut tasks = JoinSet::new();
    let mut cursor: Option<i64> = None;
    let mut stuck = false;
    let mut gauges_at = std::time::Instant::now();
    let mut gauges = tokio::task::spawn_blocking(|| {});
    let mut retries = RetryClock::default();
    count_pending(&inner);
    loop {
        let pass_started = std::time::Instant::now();
        inner.metrics.dispatcher_passed();
        let mut hurry = false;
        if inner.registry.initial_load_done() {
            let advanced = match fan_out(&inner, &mut cursor, stuck).await {
                Ok(n) => {
                    inner.fan_out_trouble.succeeded();
                    n
                }
                Err(e) => {
                    inner.fan_out_trouble.failed(&e);
                    0
                }
            };
            let was_stuck = stuck;
            stuck = match schedule(&inner, &mut tasks).await {
                Ok(stuck) => {
                    inner.schedule_trouble.succeeded();
                    stuck
                }
                Err(e) => {
                    inner.schedule_trouble.failed(&e);
                    false
                }
            };
            // Nothing queued can run: fan out past `max_pending` now rather
            // than at the next wake, for as long as that brings new events.
            hurry = stuck && (!was_stuck || advanced > 0);
        }
        while let Some(r) = tasks.try_join_next() {
            joined(r);
        }
        if gauges_at.elapsed() >= GAUGES_EVERY && gauges.is_finished() {
            gauges_at = std::time::Instant::now();
            // Exact here: this loop changes the count only after its own
            // commits, and none of them is in flight. (A run that gives
            // deliveries back adds them once their commit is in: counted
            // twice if this count comes between, until the next one.)
            count_pending(&inner);
            // Counting open deliveries reads every one of them: not on a
            // thread that also answers requests.
            let i = inner.clone();
            gauges = tokio::task::spawn_blocking(move || publish_gauges(&i, cursor));
        }
        let pause = retries.pause(&inner);
        if !hurry {
            tokio::select! {
                _ = stop.notified() => break,
                _ = listener.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                Some(r) = tasks.join_next(), if !tasks.is_empty() => joined(r),
            }
        }
        if let Some(rest) = MIN_PASS_GAP.checked_sub(pass_started.elapsed()) {
            tokio::select! {
                _ = stop.notified() => break,
                _ = tokio::time::sleep(rest) => {}
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Sets `pending` from the ledger.
fn count_pending(inner: &Inner) {
    match inner.store.pending_count() {
        Ok(n) => {
            inner.count_trouble.succeeded();
            inner.pending.store(n, Ordering::Relaxed)
        }
        Err(e) => inner.count_trouble.failed(&e),
    }
}

fn publish_gauges(inner: &Inner, cursor: Option<i64>) {
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

/// When the next retry is due. The ledger is asked when the time it or the
/// hint gave has come (that retry is being picked up; which is next?) and
/// at least every `IDLE_POLL`; in between, retries recorded by this
/// process come through `Inner::retry_hint`.
#[derive(Default)]
struct RetryClock {
    /// The ledger's answer (`None`: no retry waiting) and when it was read.
    known: Option<(Option<i64>, std::time::Instant)>,
}

impl RetryClock {
    fn pause(&mut self, inner: &Inner) -> Duration {
        let now = now_ms();
        let hint = inner.retry_hint.load(Ordering::SeqCst);
        let stale = hint <= now
            || match self.known {
                None => true,
                Some((at, read)) => at.is_some_and(|t| t <= now) || read.elapsed() >= IDLE_POLL,
            };
        if stale {
            // Cleared before the read: a retry recorded meanwhile is either
            // in the ledger already or sets the hint again afterwards.
            inner.retry_hint.store(i64::MAX, Ordering::SeqCst);
            self.known = match inner.store.next_retry_at() {
                Ok(at) => Some((at, std::time::Instant::now())),
                Err(_) => None,
            };
        }
        let ledger = self.known.and_then(|(at, _)| at).unwrap_or(i64::MAX);
        match ledger.min(inner.retry_hint.load(Ordering::SeqCst)) {
            i64::MAX => IDLE_POLL,
            at => Duration::from_millis((at - now).clamp(5, IDLE_POLL.as_millis() as i64) as u64),
        }
    }
}

/// Fans out events after the cursor while fewer than `max_pending`
/// deliveries are queued; `stuck` (nothing queued can run) lets one batch
/// through anyway, so a chat waiting on a retry never holds up the rest.
/// Returns how many events it fanned out.
async fn fan_out(
    inner: &Arc<Inner>,
    cursor: &mut Option<i64>,
    stuck: bool,
) -> Result<usize, crate::store::StoreError> {
    let mut advanced = 0;
    let mut pos = match *cursor {
        Some(c) => c,
        None => inner.store.fanout_cursor()?,
    };
    loop {
        let mut batch = FANOUT_BATCH;
        let max_pending = inner.live.get().dispatch.max_pending;
        if max_pending > 0 && !stuck {
            let room = max_pending.saturating_sub(inner.pending.load(Ordering::Relaxed));
            if room == 0 {
                break;
            }
            batch = batch.min(room as i64);
        }
        let events = inner.store.event_heads(pos, batch)?;
        let Some(last) = events.last().map(|e| e.seq) else {
            break;
        };
        let mut rows = Vec::new();
        let mut per_tenant: HashMap<&str, Vec<String>> = HashMap::new();
        for e in &events {
            let plugins = per_tenant
                .entry(e.tenant.as_str())
                .or_insert_with(|| inner.registry.plugins_for(&e.tenant));
            let kind = Some(convert::kind_of_type(&e.event_type));
            for p in plugins.iter() {
                // A plugin still loading gets the row; it is skipped at
                // delivery time if it does not want the event.
                let wants = match (inner.registry.get(p), kind) {
                    (Some(lp), Some(k)) => lp.wants(k),
                    _ => true,
                };
                if wants {
                    rows.push(NewDelivery {
                        event_seq: e.seq,
                        plugin: p.clone(),
                        tenant: e.tenant.clone(),
                        ordering_key: e.ordering_key.clone(),
                    });
                }
            }
        }
        let added = rows.len();
        inner.store.fan_out(rows, last).await?;
        inner.pending.fetch_add(added, Ordering::Relaxed);
        advanced += events.len();
        pos = last;
        *cursor = Some(pos);
        if stuck || (events.len() as i64) < batch {
            break;
        }
    }
    Ok(advanced)
}

/// Starts what may run now. Returns true when nothing is running and
/// nothing could start: every queued delivery waits (a retry's backoff, or
/// an earlier event of its chat), so more must be fanned out.
async fn schedule(
    inner: &Arc<Inner>,
    tasks: &mut JoinSet<()>,
) -> Result<bool, crate::store::StoreError> {
    // Deliveries that could start now, within the global and per-tenant
    // caps: when every tenant is at its cap the ledger is not even asked,
    // and otherwise it is asked for the tenants with room, for little more
    // than can start.
    let settings = inner.live.get();
    let cfg = &settings.dispatch;
    let workers = slots(inner, cfg);
    let (startable, full) = {
        let r = inner.running.lock().unwrap();
        let free = workers.saturating_sub(r.total);
        let mut room = 0;
        let mut full = Vec::new();
        for name in settings.tenants.keys() {
            let cap = tenant_cap(&settings, name);
            match cap.saturating_sub(r.per_tenant.get(name).copied().unwrap_or(0)) {
                0 => full.push(name.clone()),
                n => room += n,
            }
        }
        (free.min(room), full)
    };
    if startable == 0 {
        return Ok(false);
    }
    // The lanes that can run: those of the configured plugins, and (read
    // from the ledger every `LEDGER_LANES_EVERY`) those left by a plugin or
    // tenant no longer configured, whose rows fail (nothing runs them)
    // instead of waiting. Lanes of a plugin still compiling or a tenant at
    // its cap are not read at all, however many rows wait in them.
    let held = inner.registry.loading();
    let budget = Duration::from_millis(cfg.run_ms);
    let mut lanes: Vec<Lane> = settings
        .tenants
        .keys()
        .flat_map(|t| {
            inner
                .registry
                .plugins_for(t)
                .into_iter()
                .map(move |p| (t.clone(), p))
        })
        .collect();
    let known: HashSet<Lane> = lanes.iter().cloned().collect();
    lanes.extend(
        ledger_lanes(inner)?
            .into_iter()
            .filter(|lane| !known.contains(lane)),
    );
    lanes.retain(|(t, p)| !full.contains(t) && !held.contains(p));
    if lanes.is_empty() {
        // Everything waits on compiles or caps, which end by themselves:
        // not a reason to fan out past `max_pending`.
        return Ok(false);
    }
    // Enough of each lane for every slot that may start to fill its run,
    // and some over for rows whose chat is busy; or, when a few chats hold
    // long queues, one delivery per slot that may start once the ledger's
    // walk has stepped over its budget of rows (see `Store::due_in_lane`).
    let run_lengths: HashMap<&str, usize> = lanes
        .iter()
        .map(|(_, p)| (p.as_str(), inner.pace.run_length(p, budget)))
        .collect();
    let longest = run_lengths.values().copied().max().unwrap_or(1);
    let limit = (startable * (longest + 1)).max(4) as i64;
    let due = due(inner, limit, startable as i64, &lanes)?;
    let planned = {
        let mut r = inner.running.lock().unwrap();
        let shares = shares(&settings, &due, &r);
        let tenant = |t: &str| tenant_cap(&settings, t);
        let share = |t: &str| shares.get(t).copied().unwrap_or_else(|| tenant(t));
        let run_length = |(_, p): &Lane| run_lengths.get(p.as_str()).copied().unwrap_or(1);
        let caps = runs::Caps {
            workers,
            tenant: &tenant,
            share: &share,
            run_length: &run_length,
        };
        runs::plan(due, &mut r, &caps)
    };
    if planned.is_empty() {
        return Ok(inner.running.lock().unwrap().total == 0);
    }
    let marks = planned
        .iter()
        .flatten()
        .map(|d| {
            let hash = inner
                .registry
                .get(&d.plugin)
                .map(|p| p.hash.clone())
                .unwrap_or_default();
            (d.event_seq, d.plugin.clone(), hash)
        })
        .collect();
    // Committed before the deliveries start: a later `due` query must never
    // see a delivery as pending while it runs (and finishes) meanwhile, or
    // it would be picked twice.
    let marked = inner.store.mark_running(marks).await.unwrap_or_else(|_| {
        Err(crate::store::StoreError::Unavailable(
            "writer stopped".into(),
        ))
    });
    if let Err(e) = marked {
        let mut r = inner.running.lock().unwrap();
        planned.iter().for_each(|run| runs::release(&mut r, run));
        return Err(e);
    }
    let started = planned.iter().flatten().filter(|d| d.queued).count();
    let _ = inner
        .pending
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
            Some(p.saturating_sub(started))
        });
    for run in planned {
        let inner = inner.clone();
        tasks.spawn(async move {
            let i2 = inner.clone();
            let rows = run.clone();
            let flight = InFlight::new(&inner);
            let ran = tokio::task::spawn_blocking(move || {
                let _flight = flight;
                execute_run(&i2, &rows, budget)
            })
            .await
            .unwrap_or_else(|e| {
                let f = runtime::Failure::Trap(format!("host task failed: {e}"));
                run.iter().map(|_| Some(Some(f.clone()))).collect()
            });
            finish_run(&inner, &run, ran).await;
        });
    }
    Ok(false)
}

/// Deliveries that may run at once now: `busy_workers` while webhook
/// events queue for the store, else `workers`. Shown as
/// `hookhost_dispatch_slots`.
fn slots(inner: &Inner, cfg: &crate::config::DispatchConfig) -> usize {
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

/// Runs a slot's deliveries one after another on a blocking thread, as
/// long as `budget` allows (twice over: a plugin's pace drifts) and the
/// dispatcher is not stopping; the first always runs. Per delivery:
/// `None` if it did not run, else [`execute`]'s answer.
fn execute_run(
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
async fn finish_run(
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
async fn until_done<F, Fut>(
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

/// A lane found with every chat held back: where its walk ended, when it
/// was last read whole, and the operator's changes to the ledger then.
struct Quiet {
    walk: crate::store::LaneWalk,
    read_whole_at: std::time::Instant,
    ledger_changes: u64,
}

/// What may start in `lanes` (see `Store::due_in_lane`), oldest first
/// across them, so that a lane held at its share of the tenant's slots does
/// not crowd the others out of the list; a lane held back whole at the last
/// pass is read from where that walk ended.
fn due(
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
fn tenant_cap(settings: &crate::live::Settings, tenant: &str) -> usize {
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
fn shares(
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

/// Counts a delivery in `Inner::in_flight` until dropped (its blocking
/// task ended, or never ran).
struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(inner: &Arc<Inner>) -> InFlight {
        inner.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The ledger's open lanes, read again when the last read is older than
/// `LEDGER_LANES_EVERY`.
fn ledger_lanes(inner: &Inner) -> Result<Vec<Lane>, crate::store::StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::{IngestOutcome, NewEvent};

    fn event(key: &str) -> NewEvent {
        NewEvent {
            tenant: "default".into(),
            key: key.into(),
            event_type: "message".into(),
            ordering_key: "chat".into(),
            body: b"{}".to_vec(),
            received_at: 0,
        }
    }

    fn state(store: &Store, seq: i64) -> Option<String> {
        store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT state FROM deliveries WHERE event_seq = ?1",
                    [seq],
                    |r| r.get(0),
                )?)
            })
            .ok()
    }

    /// Outcomes are recorded however long the store refuses them (here a
    /// hundred refusals, twice as many as were once tried before giving
    /// up and leaving the rows `running` until a restart), and given up
    /// only when the dispatcher stops.
    #[test]
    fn outcomes_are_recorded_however_long_the_store_refuses_them() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let pauses = (Duration::from_micros(1), Duration::from_micros(5));
        let stopping = AtomicBool::new(false);
        let mut tries = 0;
        let done = rt.block_on(until_done(&stopping, pauses, || {
            tries += 1;
            let ok = tries > 100;
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(())
                }
            }
        }));
        assert!(done);
        assert_eq!(tries, 101);
        // Stopping: one more try, then the rows are left for the next start.
        stopping.store(true, Ordering::SeqCst);
        let mut tries = 0;
        let done = rt.block_on(until_done(&stopping, pauses, || {
            tries += 1;
            async { Err(()) }
        }));
        assert!(!done);
        assert_eq!(tries, 1);
    }

    /// Waits up to 20 s for `ok`.
    fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < until, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_failed_dispatcher_starts_again_and_requeues_what_it_was_running() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().join("data");
        config.server.plugins_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&config.server.plugins_dir).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let p = crate::server::Pipeline::start(&config, None).unwrap();
        let (store, metrics, wake) = (p.store.clone(), p.metrics.clone(), p.wake.clone());
        let ingest = |key: &str| match rt.block_on(store.ingest(event(key))).unwrap() {
            IngestOutcome::Stored { seq } => seq,
            other => panic!("{other:?}"),
        };
        let first = ingest("first");
        wake.notify();
        eventually("the first event fanned out", || {
            store.fanout_cursor().unwrap() >= first
        });

        // A delivery left `running` in the ledger, as a failed loop leaves
        // those it had started (here for a plugin since removed), then a
        // panic that poisons the loop's bookkeeping, as a bug in a delivery
        // task holding it would.
        let seq = first;
        store
            .write_blocking(move |c| {
                Ok(c.execute(
                    "INSERT INTO deliveries (event_seq, plugin, tenant, ordering_key, state, attempts, next_at, updated_at)
                     VALUES (?1, 'gone', 'default', 'chat', 'running', 1, 0, 0)",
                    [seq],
                )?)
            })
            .unwrap();
        let inner = p.dispatcher.inner.clone();
        let _ = std::thread::spawn(move || {
            let _held = inner.running.lock().unwrap();
            panic!("a bug while holding the dispatcher's bookkeeping");
        })
        .join();
        let second = ingest("second");
        wake.notify();

        // The loop failed on the poisoned lock, started again, queued the
        // interrupted delivery again (it then fails: the plugin is gone)
        // and goes on fanning out.
        eventually("the second event fanned out", || {
            store.fanout_cursor().unwrap() >= second
        });
        eventually("the interrupted delivery left `running`", || {
            state(&store, first).as_deref() != Some("running")
        });
        assert!(
            metrics
                .render()
                .contains("hookhost_dispatcher_restarts_total 1\n"),
            "{}",
            metrics.render()
        );
        rt.block_on(p.dispatcher.stop(Duration::from_secs(5)));
        p.registry.stop();
        store.close();
    }
}
