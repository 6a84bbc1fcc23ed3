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

pub fn run(events: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), StoreOptions::from(&StoreConfig::default()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_ms(None);
    let writer0 = cpu_ms(Some("store-writer"));
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
    let cpu = cpu_ms(None) - cpu0;
    let writer = cpu_ms(Some("store-writer")) - writer0;
    store.close();
    println!(
        "{events} events ({stored} new) in {secs:.2} s: {:.0} events/s, CPU {:.1} µs/event (writer thread {:.1} µs/event)",
        events as f64 / secs,
        cpu * 1000.0 / events as f64,
        writer * 1000.0 / events as f64
    );
    Ok(())
}

/// CPU time (user + system) in ms of this process, or of its threads named `thread`.
fn cpu_ms(thread: Option<&str>) -> f64 {
    let ticks = |stat: &str| -> f64 {
        // Fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        get(11) + get(12) // utime, stime (fields 14 and 15)
    };
    let tick_ms = 10.0; // USER_HZ = 100 on Linux
    match thread {
        None => ticks(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default()) * tick_ms,
        Some(name) => {
            let mut total = 0.0;
            if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
                for t in tasks.flatten() {
                    let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                    if comm.trim() == name {
                        total += ticks(
                            &std::fs::read_to_string(t.path().join("stat")).unwrap_or_default(),
                        );
                    }
                }
            }
            total * tick_ms
        }
    }
}
