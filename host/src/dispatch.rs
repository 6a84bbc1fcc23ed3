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

use crate::config::DispatchConfig;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::repeated::Repeated;
use crate::runtime::{self, convert, Registry};
use crate::store::{now_ms, DeliveryOutcome, NewDelivery, Store};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;

mod choose;
mod execute;
mod gauges;
mod prepared;
mod runs;
mod supervise;

use choose::{due, ledger_lanes, shares, slots, tenant_cap, Quiet};
use execute::{execute_run, finish_run, InFlight};
use gauges::{count_pending, publish_gauges};
use supervise::{joined, supervise};

const FANOUT_BATCH: i64 = 1000;
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Shortest time between two passes. Every stored event and every finished
/// delivery wakes the dispatcher; under load the wakes are gathered so one
/// pass (a few queries and one write) serves all of them.
const MIN_PASS_GAP: Duration = Duration::from_millis(1);
/// How often the backlog gauges are counted (a count over every open
/// delivery: not at every pass).
const GAUGES_EVERY: Duration = Duration::from_secs(1);

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

#[cfg(test)]
mod tests {
    use super::execute::until_done;
    use super::*;
    use crate::config::Config;
    use crate::store::{IngestOutcome, NewEvent};
    use std::time::Instant;

    fn event(key: &str) -> NewEvent {
        NewEvent::sample("default", key)
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
