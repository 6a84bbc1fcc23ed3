//! `make bench`: hookhost's figures, measured side by side in one run.
//!
//! 1. Ingest: a bare axum server that only reads the body (the ceiling),
//!    `hookhost serve` with HMAC, parsing and durable commit and no plugins,
//!    and hookhost with the three sample plugins. Each as a ratio to the
//!    ceiling, since absolute figures on shared machines vary between runs.
//! 2. Plugins: size, compile time, cached load, fresh instance + `handle`
//!    (p50/p99), fuel per delivery, deliveries per second with the dispatcher.
//! 3. Start-up with 10 cached plugins; peak RSS under load.

mod load;
mod plugins;
mod procs;
mod store;
mod targets;

use std::time::Duration;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const USAGE: &str = "\
usage: hookhost-bench                  every suite, then the report (what `make bench` runs)
       hookhost-bench --store [EVENTS]  the store alone, without HTTP
       hookhost-bench --kv [KEYS]      a plugin's key-value writes with 100 and KEYS keys stored
       hookhost-bench --load ADDR [SECONDS]
                                       drive load at a running server and print its figures
       hookhost-bench --bare-server     the bare axum ceiling; prints its address

environment: BENCH_ONLY=ingest,plugins,background,memory,startup (suites to run),
  BENCH_ROUNDS (ingest rounds, 5), BENCH_SECONDS (per server and round, 8),
  BENCH_CONNECTIONS (64), BENCH_DUPLICATE_PERCENT (10), BENCH_CHATS (500), BENCH_DELIVERIES (1000),
  BENCH_PLUGIN (one plugin), BENCH_PLUGIN_ROUNDS (3), BENCH_PLUGINS_DIR (the compiled plugins),
  BENCH_HOOKHOST_CONFIG (TOML added to each hookhost's configuration; \\n for a new line)";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None | Some("--bare-server" | "--store" | "--kv" | "--load") => {}
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        Some(other) => {
            eprintln!("unknown argument {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
    if args.get(1).map(String::as_str) == Some("--bare-server") {
        return procs::bare_server();
    }
    if args.get(1).map(String::as_str) == Some("--store") {
        let events = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200_000);
        println!("{}", store::run(events)?);
        return Ok(());
    }
    if args.get(1).map(String::as_str) == Some("--kv") {
        let keys = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
        println!("{}", store::kv_run(keys)?);
        return Ok(());
    }
    if args.get(1).map(String::as_str) == Some("--load") {
        // `--load ADDR [SECONDS]`: only drive load at a running server (for profiling).
        let addr = args
            .get(2)
            .ok_or_else(|| anyhow::anyhow!("--load ADDR [SECONDS]"))?
            .parse()?;
        let secs = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let r = rt.block_on(load::run(load::LoadSpec {
            addr,
            paths: vec!["/webhook".into()],
            connections: env_num("BENCH_CONNECTIONS", 64) as usize,
            duration: Duration::from_secs(secs),
            duplicate_share: env_num("BENCH_DUPLICATE_PERCENT", 10) as f64 / 100.0,
            secret: Some(procs::SECRET.to_string()),
        }));
        println!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {}",
            r.rps(),
            r.pct(0.5),
            r.pct(0.99),
            r.max_ms(),
            r.status_line()
        );
        return Ok(());
    }
    let seconds = env_num("BENCH_SECONDS", 8);
    let connections = env_num("BENCH_CONNECTIONS", 64) as usize;
    let deliveries = env_num("BENCH_DELIVERIES", 1000) as usize;
    let dups = env_num("BENCH_DUPLICATE_PERCENT", 10) as f64 / 100.0;
    let plugins_dir =
        std::env::var("BENCH_PLUGINS_DIR").unwrap_or_else(|_| "hookhost-plugins".into());
    let plugins_dir = std::path::PathBuf::from(plugins_dir);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut head = String::new();
    let mut report = String::new();
    let mut targets = targets::Targets::default();
    let machine = procs::machine();
    head.push_str(&format!(
        "Machine: {machine}\nLoad: {connections} keep-alive connections, {seconds} s per server and round, {:.0} % duplicates, signed bodies in the gateway's event mix.\n\n",
        dups * 100.0
    ));

    // BENCH_ONLY=ingest|plugins|background|memory|startup runs one part
    // (or several, separated by commas).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    const SUITES: [&str; 5] = ["ingest", "plugins", "background", "memory", "startup"];
    if let Some(bad) = only
        .split(',')
        .map(str::trim)
        .find(|o| !o.is_empty() && !SUITES.contains(o))
    {
        eprintln!("BENCH_ONLY: no suite {bad:?}\n\n{USAGE}");
        std::process::exit(2);
    }
    let part = |p: &str| only.is_empty() || only.split(',').any(|o| o.trim() == p);

    // 1. Ingest, side by side.
    if part("ingest") {
        let duration = Duration::from_secs(seconds);
        report.push_str(&procs::ingest_suite(
            &rt,
            &plugins_dir,
            connections,
            duration,
            dups,
            env_num("BENCH_ROUNDS", 5) as usize,
            &mut targets,
        )?);
        eprintln!("ingest: the store alone…");
        report.push_str(&format!(
            "The store alone, without HTTP (`hookhost-bench --store`, 64 concurrent callers, `synchronous = FULL`): {}.\n\n",
            store::run(100_000)?
        ));
        eprintln!("ingest: a plugin's key-value writes…");
        report.push_str(&format!(
            "A plugin's key-value `set` against the store alone (`hookhost-bench --kv`, 1 KiB values, one at a time): {}.\n\n",
            store::kv_run(10_000)?
        ));
    }
    // 2. Plugins.
    if part("plugins") {
        report.push_str(&plugins::suite(
            &rt,
            &plugins_dir,
            deliveries,
            &mut targets,
        )?);
    }
    // 2b. A large plugin compiled in the background during ingest.
    if part("background") {
        report.push_str(&procs::background_compile(
            &rt,
            &plugins_dir,
            connections,
            dups,
            &mut targets,
        )?);
    }
    // 2c. Memory: 3 tenants x 5 plugins under 256 connections.
    if part("memory") {
        report.push_str(&procs::memory_suite(&rt, &plugins_dir, dups, &mut targets)?);
    }
    // 3. Start-up with 10 cached plugins.
    if part("startup") {
        report.push_str(&procs::startup_suite(&plugins_dir, &mut targets)?);
    }

    let report = format!("{head}{}{report}", targets.render());
    println!("\n{report}");
    let out = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = std::path::Path::new(&out).join("bench-report.md");
    std::fs::write(&path, &report)?;
    eprintln!("report written to {}", path.display());
    Ok(())
}
