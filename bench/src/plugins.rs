//! Per-plugin figures, measured in-process with the host's own runtime:
//! compile, cached load, fresh instance + `handle`, fuel; and deliveries
//! per second through the dispatcher of a real server.

use crate::load;
use crate::targets::{self, Targets};
use hookhost::capabilities::{Capabilities, SqlDb, SqlPool};
use hookhost::config::{Grant, Limits, StoreConfig};
use hookhost::runtime::{cache::CompileCache, convert, engine::Runtime, plugin, sandbox};
use hookhost::store::{Store, StoreOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PLUGINS: &[(&str, &str)] = &[
    ("logger", "Rust"),
    ("persistence", "Rust"),
    ("auto-reply", "Rust"),
    ("stats", "JavaScript"),
    ("keyword-alert", "Python"),
    ("read-times", "C"),
    ("first-response", "Go"),
];

fn settings(name: &str) -> serde_json::Value {
    match name {
        "auto-reply" => {
            serde_json::json!({"greeting": "Hola", "max_replies": 100000, "rules": [{"keywords": ["menu"], "reply": "Menú"}]})
        }
        "keyword-alert" => serde_json::json!({"notify_to": "573000000001", "words": ["urgente"]}),
        _ => serde_json::json!({}),
    }
}

fn caps(
    store: &Store,
    dir: &Path,
    name: &str,
    limits: Limits,
    pool: &Arc<SqlPool>,
) -> Capabilities {
    // Sends are reported, not made: no network in this measurement.
    let mut caps = Capabilities::offline(
        store.clone(),
        dir.join(format!("{name}.sqlite")),
        name,
        &Grant::ALL,
        limits,
        settings(name),
    );
    // As in the server: the plugin's database connection is reused.
    caps.sql = SqlDb::pooled(dir.join(format!("{name}.sqlite")), pool.clone());
    caps
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One sample plugin, compiled and loaded, and what its deliveries took.
struct Measured {
    name: &'static str,
    lang: &'static str,
    size: usize,
    compile: Duration,
    cached_load: Duration,
    plugin: plugin::LoadedPlugin,
    /// Fresh instance + `handle`, µs: one list per round.
    rounds: Vec<Vec<f64>>,
    instantiate: Vec<f64>,
    fuel: u64,
}

pub fn suite(
    rt: &tokio::runtime::Runtime,
    plugins_dir: &Path,
    deliveries: usize,
    targets: &mut Targets,
) -> anyhow::Result<String> {
    let mut out = String::from(
        "## Plugins\n\n| plugin | language | size | compile | cached load | fresh instance + handle p50 | p99 | of which instantiate p50 | fuel / delivery | deliveries/s (dispatcher) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let engine = Runtime::new(true, 128, true)?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        &dir.path().join("store"),
        StoreOptions::from(&StoreConfig::default()),
    );
    let limits = Limits::default();
    let pool = Arc::new(SqlPool::default());
    // BENCH_PLUGIN=NAME measures one plugin.
    let only = std::env::var("BENCH_PLUGIN").unwrap_or_default();
    let rounds = crate::env_num("BENCH_PLUGIN_ROUNDS", 3).max(1) as usize;
    let mut measured = Vec::new();
    for (name, lang) in PLUGINS {
        if !only.is_empty() && only != *name {
            continue;
        }
        let path = plugins_dir.join(format!("{name}.wasm"));
        let Ok(bytes) = std::fs::read(&path) else {
            out.push_str(&format!("| {name} | {lang} | not built | | | | | | | |\n"));
            continue;
        };
        eprintln!("plugin {name}: compile and load…");
        let cache_dir = dir.path().join(format!("cache-{name}"));
        let compiled = plugin::load(&engine, &CompileCache::new(cache_dir.clone()), name, &bytes)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let cached = plugin::load(&engine, &CompileCache::new(cache_dir), name, &bytes)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        measured.push(Measured {
            name,
            lang,
            size: bytes.len(),
            compile: compiled.compile_time,
            cached_load: cached.compile_time,
            plugin: cached,
            rounds: Vec::new(),
            instantiate: Vec::new(),
            fuel: 0,
        });
    }
    // The plugins take turns, `rounds` times, so that a slow moment of the
    // machine lands on one round of one plugin rather than on all of its
    // deliveries; each plugin's p50 is the median of its rounds'.
    for round in 0..rounds {
        for m in measured.iter_mut() {
            eprintln!(
                "plugin {}: round {} of {rounds}, {deliveries} deliveries…",
                m.name,
                round + 1
            );
            let warm_up = if round == 0 { 20 } else { 0 };
            let mut times = Vec::with_capacity(deliveries);
            for i in 0..deliveries + warm_up {
                // A new message_received event each time, every round
                // (message_sent for read-times, which takes only those and acks).
                let n = (round * (deliveries + 20) + i) as u64;
                let sent = if m.name == "read-times" { 4 } else { 0 };
                let body = load::body(n * 10 + sent, 7, false);
                let parsed = hookhost::event::parse(&body)?;
                let raw = String::from_utf8_lossy(&body).into_owned();
                let ctx = hookhost::bindings::types::DeliveryContext {
                    tenant: "bench".into(),
                    plugin: m.name.to_string(),
                    event_key: parsed.key.clone(),
                    attempt: 1,
                    received_at: 0,
                    raw_json: raw.clone(),
                };
                let ev = convert::event(&parsed.event, &raw);
                let r = sandbox::deliver(
                    &m.plugin,
                    caps(&store, dir.path(), m.name, limits, &pool),
                    &limits,
                    &ev,
                    &ctx,
                );
                if let Err(e) = r.result {
                    anyhow::bail!("{}: delivery failed: {e}", m.name);
                }
                if i >= warm_up {
                    times.push(r.total.as_secs_f64() * 1e6);
                    m.instantiate.push(r.instantiate.as_secs_f64() * 1e6);
                    m.fuel += r.fuel_used;
                }
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            m.rounds.push(times);
        }
    }
    let fmt_us = |us: f64| {
        if us >= 1000.0 {
            format!("{:.2} ms", us / 1000.0)
        } else {
            format!("{us:.0} µs")
        }
    };
    // A threshold in whole milliseconds reads as one (`1 ms`, not `1.00 ms`).
    let fmt_limit = |us: f64| {
        if us >= 1000.0 && us % 1000.0 == 0.0 {
            format!("{} ms", us / 1000.0)
        } else {
            fmt_us(us)
        }
    };
    let mut per_round = Vec::new();
    for m in &mut measured {
        let dps = dispatcher_rate(rt, plugins_dir, m.name)?;
        let mut p50s: Vec<f64> = m.rounds.iter().map(|t| pct(t, 0.5)).collect();
        per_round.push(format!(
            "{} {}",
            m.name,
            p50s.iter()
                .map(|&p| fmt_us(p))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
        p50s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p50 = pct(&p50s, 0.5);
        let judged = match (m.name, m.lang) {
            ("logger", _) => Some(("small Rust plugin (logger)", targets::SMALL_RUST_P50_MAX_US)),
            (_, "JavaScript") => Some(("JavaScript plugin", targets::SCRIPT_P50_MAX_US)),
            (_, "Python") => Some(("Python plugin", targets::SCRIPT_P50_MAX_US)),
            _ => None,
        };
        if let Some((which, max_us)) = judged {
            targets.judge(
                format!(
                    "{which}, fresh instance + `handle` ≤ {} p50",
                    fmt_limit(max_us)
                ),
                format!("**{}** ({})", fmt_us(p50), m.name),
                p50 <= max_us,
            );
        }
        let mut all: Vec<f64> = m.rounds.concat();
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        m.instantiate.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out.push_str(&format!(
            "| {} | {} | {:.0} KiB | {:.0} ms | {:.1} ms | {} | {} | {} | {} | {:.0} |\n",
            m.name,
            m.lang,
            m.size as f64 / 1024.0,
            m.compile.as_secs_f64() * 1000.0,
            m.cached_load.as_secs_f64() * 1000.0,
            fmt_us(p50),
            fmt_us(pct(&all, 0.99)),
            fmt_us(pct(&m.instantiate, 0.5)),
            m.fuel / all.len().max(1) as u64,
            dps
        ));
    }
    engine.stop();
    out.push_str(&format!(
        "\nFresh instance + handle: a new store and instance from the plugin's `InstancePre` (pooling allocator) and one `handle` call with a `message_received` event (`message_sent` for read-times), {deliveries} times in each of {rounds} rounds (the plugins in turn, 20 warm-up calls first); p50 is the median of the rounds' p50s, p99 over all of them. Each round's p50: {}. SQL and key-value writes are real (key-value through the store's `synchronous = FULL` commits, plugin SQL in its own WAL database with a pooled connection), sends are dry-run. Deliveries/s: one server with only that plugin, events posted for 2 s, counted until the ledger has no open delivery.\n\n",
        per_round.join("; ")
    ));
    Ok(out)
}

/// Deliveries per second through a real server's dispatcher, one plugin.
fn dispatcher_rate(
    rt: &tokio::runtime::Runtime,
    plugins_dir: &Path,
    name: &str,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(
        plugins_dir.join(format!("{name}.wasm")),
        plugins.join(format!("{name}.wasm")),
    )?;
    let mut config = hookhost::config::Config::parse(&format!(
        "[tenants.default]\nrate_limit = {{ per_second = 0, burst = 0 }}\nplugins = [\"{name}\"]\n[tenants.default.plugin.{name}]\ngrants = [\"log\", \"kv\", \"sql\", \"config\"]\n"
    ))
    .map_err(|e| anyhow::anyhow!(e))?;
    config.server.listen = "127.0.0.1:0".parse()?;
    config.server.data_dir = dir.path().join("data");
    config.server.plugins_dir = plugins;
    let server = hookhost::server::spawn(config)?;
    crate::procs::wait_loaded(server.addr, 1);
    let start = Instant::now();
    let r = rt.block_on(load::run(load::LoadSpec {
        addr: server.addr,
        paths: vec!["/webhook".into()],
        connections: 16,
        duration: Duration::from_secs(2),
        duplicate_share: 0.0,
        secret: None,
    }));
    // Wait until every delivery is done.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let t = crate::procs::get_text(server.addr, "/metrics");
        let open = t.lines().any(|l| l == "hookhost_deliveries_open 0");
        let lag = t.lines().any(|l| l == "hookhost_inbox_lag 0");
        if (open && lag) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let done = crate::procs::metric_sum(server.addr, "hookhost_deliveries_total{");
    drop(server);
    let _ = r;
    Ok(done as f64 / elapsed.as_secs_f64())
}
