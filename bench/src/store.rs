//! `--store [EVENTS]`: the store alone, without HTTP. `EVENTS` events (the
//! load generator's mix, 10 % duplicates) are committed through
//! `Store::ingest` by 64 concurrent callers, `synchronous = FULL`. Prints
//! events/s and the CPU time per event of the whole process and of the
//! writer thread: a figure for the storage layer that moves less between
//! runs than throughput (and is exact under `valgrind --tool=callgrind`).

use crate::load;
use hookhost::config::StoreConfig;
use hookhost::store::{now_ms, NewEvent, Store, StoreOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

const CALLERS: u64 = 64;

pub fn run(events: u64) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), StoreOptions::from(&StoreConfig::default()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let cpu0 = process_cpu_ms(std::process::id());
    let writer0 = thread_cpu_ms("store-writer");
    let t0 = Instant::now();
    let stored = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..CALLERS {
            let store = store.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                let mut stored = 0u64;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= events {
                        return stored;
                    }
                    let body = load::body(n, 1, n % 10 == 9);
                    let parsed = hookhost::event::parse(&body).expect("bench bodies parse");
                    let e = NewEvent {
                        tenant: "default".into(),
                        key: parsed.key,
                        event_type: parsed.event.event_type().to_string(),
                        ordering_key: parsed.ordering_key,
                        body,
                        received_at: now_ms(),
                    };
                    if let hookhost::store::IngestOutcome::Stored { .. } =
                        store.ingest(e).await.expect("store accepts the event")
                    {
                        stored += 1;
                    }
                }
            }));
        }
        let mut stored = 0;
        for t in tasks {
            stored += t.await.expect("caller task");
        }
        stored
    });
    let secs = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_ms(std::process::id()) - cpu0;
    let writer = thread_cpu_ms("store-writer") - writer0;
    store.close();
    Ok(format!(
        "{events} events ({stored} new) in {secs:.2} s: {:.0} events/s, CPU {:.1} µs/event (writer thread {:.1} µs/event)",
        events as f64 / secs,
        cpu * 1000.0 / events as f64,
        writer * 1000.0 / events as f64
    ))
}

/// CPU time (user + system) in ms used so far by process `pid`.
pub fn process_cpu_ms(pid: u32) -> f64 {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()) * TICK_MS
}

/// CPU time in ms used so far by this process's threads named `name`.
fn thread_cpu_ms(name: &str) -> f64 {
    threads_cpu_ms("self").get(name).copied().unwrap_or(0.0)
}

/// CPU time in ms used so far by the live threads of process `pid` ("self"
/// for this one), summed by thread name. Threads that have exited are not
/// counted (the process total still has them).
pub fn threads_cpu_ms(pid: &str) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let ticks =
                stat_ticks(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default());
            *by_name.entry(comm.trim().to_string()).or_insert(0.0) += ticks * TICK_MS;
        }
    }
    by_name
}

/// USER_HZ is 100 on Linux.
const TICK_MS: f64 = 10.0;

/// utime + stime (fields 14 and 15) of a `/proc/…/stat` line, in ticks.
fn stat_ticks(stat: &str) -> f64 {
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    get(11) + get(12)
}

/// `--kv [KEYS]`: a plugin's key-value writes against the store alone. For
/// 100 keys and for `KEYS` keys already stored (1 KiB values), 2 000 `set`s
/// that overwrite existing keys, one at a time as a delivery makes them.
/// Prints the writer thread's CPU per `set`: what the plugin's quota
/// bookkeeping costs the one thread ingest also commits on.
pub fn kv_run(keys: u64) -> anyhow::Result<String> {
    const SETS: u64 = 2_000;
    let mut out = Vec::new();
    for present in [100, keys] {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), StoreOptions::from(&StoreConfig::default()));
        let value = vec![7u8; 1024];
        let set = |k: u64| {
            store.kv_set(
                "t",
                "p",
                format!("key-{k:06}"),
                value.clone(),
                1_000_000,
                1 << 40,
            )
        };
        for k in 0..present {
            set(k)?;
        }
        let writer0 = thread_cpu_ms("store-writer");
        let t0 = Instant::now();
        for i in 0..SETS {
            set((i * 7919) % present)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let writer = thread_cpu_ms("store-writer") - writer0;
        store.close();
        out.push(format!(
            "{present} keys: {:.0} µs per set ({:.1} µs of writer CPU)",
            secs * 1e6 / SETS as f64,
            writer * 1000.0 / SETS as f64
        ));
    }
    Ok(out.join("; "))
}
