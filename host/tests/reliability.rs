//! Nothing acknowledged is lost: the real binary under load, killed with
//! SIGKILL again and again; and a store whose disk fills up. The threads
//! that run plugins yield the CPU to those that answer requests.

mod common;
use common::process::Proc;
use common::whapi::FakeWhapi;
use common::*;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(180);
const KILLS: usize = 10;
const ECHO_CONFIRMED: &str = "unconfirmed send found in the gateway's echo";
const RESENT: &str = "no echo of an unconfirmed send";

#[test]
fn sigkill_under_load_loses_nothing_and_sends_each_reply_once() {
    let samples = sample_plugins();
    let whapi = FakeWhapi::start();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    for p in ["logger", "persistence", "auto-reply"] {
        deploy(&samples, p, &plugins, p, None);
    }
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[dispatch]
backoff_base_ms = 50
backoff_max_ms = 500
max_attempts = 20
[tenants.default]
plugins = ["logger", "persistence", "auto-reply"]
rate_limit = {{ per_second = 0, burst = 0 }}
[tenants.default.whapi]
base_url = "{}"
instance_id = "1"
token = "t"
echo_wait_secs = 20
[tenants.default.plugin.auto-reply]
grants = ["log", "kv", "config", "messaging"]
[tenants.default.plugin.auto-reply.settings]
max_replies = 1000
rules = [{{ keywords = ["menu"], reply = "Menú del día" }}]
"#,
            whapi.url
        ),
    )
    .unwrap();
    let data = dir.path().join("data");

    let server = Arc::new(Mutex::new(Proc::start(&cfg, &data, &plugins)));
    // The gateway announces each reply it accepted, as the real one does.
    whapi.echo_to(&server.lock().unwrap().url("/webhook"));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Senders: unique messages (each asks for the menu) and acks, as fast
    // as the server takes them; a 200 means "must never be lost".
    let mut senders = Vec::new();
    for t in 0..4 {
        let (server, acked, stop) = (server.clone(), acked.clone(), stop.clone());
        senders.push(std::thread::spawn(move || {
            let a = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .new_agent();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("t{t}-{n}");
                let body = if n.is_multiple_of(3) {
                    serde_json::json!({"event_type":"ack_update","id":format!("t{t}-{}", n - 1),"ack":"read"})
                } else {
                    serde_json::json!({"event_type":"message_received","id":id,"chat_id":format!("{t}{}@c.us", n % 7),"from":"x","body":"¿el menu?","type":"text","timestamp":1724716800})
                };
                let url = server.lock().unwrap().url("/webhook");
                if let Ok(r) = a.post(&url).header("Content-Type", "application/json").send(body.to_string()) {
                    if r.status() == 200 {
                        let kind = body["event_type"].as_str().unwrap().to_string();
                        acked.lock().unwrap().insert(body["id"].as_str().unwrap().to_string() + "|" + &kind, kind);
                    }
                }
            }
        }));
    }
    let mut rng = rand::rng();
    let (mut confirmed_by_echo, mut resent_after_wait) = (0, 0);
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..900)));
        let mut s = server.lock().unwrap();
        s.kill();
        confirmed_by_echo += s.count_lines(ECHO_CONFIRMED);
        resent_after_wait += s.count_lines(RESENT);
        *s = Proc::start(&cfg, &data, &plugins);
        whapi.echo_to(&s.url("/webhook"));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "too little load: {}", acked.len());

    // Every acknowledged event is in the inbox.
    let c = hookhost::store::open_read_only(&data).unwrap();
    let stored: BTreeSet<String> = hookhost::store::list_events(&c, None, 0, 10_000_000)
        .unwrap()
        .into_iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
            format!("{}|{}", v["id"].as_str().unwrap(), e.event_type)
        })
        .collect();
    drop(c);
    let lost: Vec<&String> = acked.keys().filter(|k| !stored.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // Every delivery ends done or dead; none pending forever. The replies'
    // echoes keep arriving while the backlog drains: wait for one echo per
    // request the gateway took, then for their deliveries.
    wait_settled(&data, 1, SETTLE);
    let list = |data: &std::path::Path| -> BTreeSet<String> {
        let c = hookhost::store::open_read_only(data).unwrap();
        hookhost::store::list_events(&c, None, 0, 10_000_000)
            .unwrap()
            .into_iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
                format!("{}|{}", v["id"].as_str().unwrap(), e.event_type)
            })
            .collect()
    };
    wait_until(SETTLE, || {
        list(&data)
            .iter()
            .filter(|k| k.ends_with("|message_sent"))
            .count()
            >= whapi.sent().len()
    });
    let stored = list(&data);
    let rows = wait_settled(&data, 1, SETTLE);
    let open: Vec<_> = rows
        .iter()
        .filter(|d| d.state != "done" && d.state != "dead")
        .collect();
    assert!(open.is_empty(), "{open:?}");
    assert!(
        rows.iter().all(|d| d.state == "done"),
        "{:?}",
        rows.iter().find(|d| d.state != "done")
    );

    // Persistence holds each message exactly once.
    // Stored messages: the acknowledged ones and those committed just before
    // a kill, whose 200 never reached the sender (it would send them again).
    let messages: BTreeSet<String> = stored
        .iter()
        .filter(|k| k.ends_with("|message_received"))
        .map(|k| k.split('|').next().unwrap().to_string())
        .collect();
    let unanswered = messages.len() - acked.values().filter(|k| *k == "message_received").count();
    // The gateway's echoes of the replies are messages too.
    let echoes: BTreeSet<String> = stored
        .iter()
        .filter(|k| k.ends_with("|message_sent"))
        .map(|k| k.split('|').next().unwrap().to_string())
        .collect();
    let messages_and_echoes: BTreeSet<String> = messages.union(&echoes).cloned().collect();
    let rows = plugin_sql(
        &data,
        "default",
        "persistence",
        "SELECT id, count(*) FROM messages WHERE body IS NOT NULL GROUP BY id",
    );
    assert!(rows.iter().all(|r| r[1] == "1"));
    let persisted: BTreeSet<String> = rows.into_iter().map(|r| r[0].clone()).collect();
    let missing: Vec<&String> = messages_and_echoes.difference(&persisted).take(5).collect();
    let extra: Vec<&String> = persisted.difference(&messages_and_echoes).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "persistence: missing {missing:?}, unexpected {extra:?}"
    );

    // Each message got its reply exactly once at the gateway: one request
    // per idempotency key, one key per event, none repeated (a send whose
    // outcome a kill left unknown was confirmed by its echo).
    let keys = whapi.idempotency_keys();
    let mut per_event: BTreeMap<String, usize> = BTreeMap::new();
    for key in &keys {
        // The key is tenant/event/plugin/call.
        *per_event
            .entry(key.split('/').nth(1).unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_event.len(), messages.len(), "every message got a reply");
    let repeated: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "replies sent twice: {repeated:?}");
    assert_eq!(echoes.len(), keys.len(), "one echo per reply");
    {
        let s = server.lock().unwrap();
        confirmed_by_echo += s.count_lines(ECHO_CONFIRMED);
        resent_after_wait += s.count_lines(RESENT);
    }
    println!(
        "kills: {KILLS}; events acknowledged: {}; stored without a 200 reaching the sender: {unanswered}; lost: 0; deliveries: {}; replies at the gateway: {} for {} messages; duplicate replies: 0; unconfirmed sends settled by their echo: {confirmed_by_echo}; sent again after the wait: {resent_after_wait}",
        acked.len(),
        deliveries(&data).len(),
        keys.len(),
        messages.len()
    );
    server.lock().unwrap().kill();
}

/// A 4 MiB filesystem for the data directory: it fills up, senders get 503,
/// nothing acknowledged is lost, and it works again once space returns.
#[test]
fn a_full_disk_answers_503_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let Some(_mounted) = mount_tmpfs(&mnt, "size=4m") else {
        return;
    };
    let mut config = common::config(
        dir.path(),
        "[tenants.default]\nrate_limit = { per_second = 0, burst = 0 }",
    );
    config.server.data_dir = mnt.join("data");
    let s = TestServer::start_in(tempfile::tempdir().unwrap(), config);
    let url = s.url("/webhook");
    let (acked, refused) = fill_until_refused(&url, 20);
    assert_eq!(get(&s.url("/readyz")).status, 503);
    assert_eq!(get(&s.url("/healthz")).status, 200);
    let stored = s.stored().len();
    assert_eq!(stored, acked.len(), "acknowledged events are all stored");

    // Space returns: grow the filesystem.
    grow_and_post(&mnt, &url);
    assert_eq!(get(&s.url("/readyz")).status, 200);
    assert_eq!(s.stored().len(), acked.len() + 1);
    println!("disk full: {} events accepted, {refused} refused with 503, 0 lost, recovered after growing the filesystem", acked.len());
}

/// Posts 4 KB messages to `url` until `refusals` of them were answered 503
/// (the disk under the store is full), within a minute; the ids answered
/// 200, and the refusals.
fn fill_until_refused(url: &str, refusals: usize) -> (Vec<String>, usize) {
    let mut acked = Vec::new();
    let mut refused = 0;
    let start = Instant::now();
    let mut i = 0;
    while refused < refusals && start.elapsed() < Duration::from_secs(60) {
        i += 1;
        let body = serde_json::json!({"event_type":"message_received","id":format!("f{i}"),"body":"x".repeat(4000)}).to_string();
        match post(url, body.as_bytes(), None).status {
            200 => acked.push(format!("f{i}")),
            503 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        refused >= refusals,
        "the disk never filled ({} accepted)",
        acked.len()
    );
    (acked, refused)
}

/// Space returns (the tmpfs at `mnt` grows to 64 MiB): an event posted to
/// `url` is taken again within 10 s.
fn grow_and_post(mnt: &std::path::Path, url: &str) {
    remount(mnt, "remount,size=64m");
    assert!(wait_until(Duration::from_secs(10), || post(
        url,
        br#"{"event_type":"ack_update","id":"after","ack":"read"}"#,
        None
    )
    .status
        == 200));
}

/// The store's disk fills up under the real binary with a plugin that
/// writes to its key-value store and SQL database: each thing that fails
/// is logged once when it starts failing, not at every refused request or
/// dispatcher pass, and once when it works again; the deliveries the full
/// disk held up are all done afterwards.
#[test]
fn a_full_disk_is_logged_when_it_starts_and_ends_and_its_deliveries_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let Some(_mounted) = mount_tmpfs(&mnt, "size=4m") else {
        return;
    };
    let plugins = dir.path().join("plugins");
    deploy(&test_plugins(), "probe", &plugins, "probe", None);
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        "[dispatch]\nbackoff_base_ms = 100\nbackoff_max_ms = 1000\nmax_attempts = 50\n\
         [tenants.default]\nplugins = [\"probe\"]\nrate_limit = { per_second = 0, burst = 0 }\n\
         [tenants.default.plugin.probe]\ngrants = [\"log\", \"kv\", \"sql\"]\n",
    )
    .unwrap();
    let data = mnt.join("data");
    let server = Proc::start(&cfg, &data, &plugins);
    let url = server.url("/webhook");
    let (acked, refused) = fill_until_refused(&url, 30);
    let acked = acked.len();
    // The dispatcher goes on passing over the store while it is full.
    std::thread::sleep(Duration::from_secs(2));
    let warnings: Vec<String> = server
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["level"] == "WARN" && v["target"] != "plugin")
        .filter_map(|v| v["message"].as_str().map(String::from))
        .filter(|m| !m.starts_with("tenant has no secret") && m != "delivery failed")
        .collect();
    for what in [
        "store writes: failing",
        "committing webhook events (answered 503): failing",
    ] {
        assert_eq!(
            warnings.iter().filter(|m| *m == what).count(),
            1,
            "{what}: {warnings:#?}"
        );
    }
    assert!(
        warnings.len() <= 8,
        "{} warnings for {refused} refused events: {warnings:#?}",
        warnings.len()
    );

    grow_and_post(&mnt, &url);
    let rows = wait_settled(&data, acked + 1, SETTLE);
    let not_done: Vec<_> = rows.iter().filter(|d| d.state != "done").collect();
    assert!(not_done.is_empty(), "{not_done:?}");
    assert_eq!(rows.len(), acked + 1);
    // The store's writes go on working (the events posted here): the
    // failure is over, said once.
    let mut n = 0;
    assert!(wait_until(Duration::from_secs(10), || {
        n += 1;
        let body = format!(r#"{{"event_type":"ack_update","id":"later{n}","ack":"read"}}"#);
        post(&url, body.as_bytes(), None);
        server.count_lines("store writes: working again") == 1
    }));
    println!("disk full: {acked} events accepted, {refused} refused, {} warnings logged; every delivery done after it", warnings.len());
}

/// A plugin's SQL database on a full disk: its statement fails as
/// `unavailable` (the delivery is retried once there is room), not as
/// `quota-exceeded`, which would fail it for good as the plugin's fault.
#[test]
fn a_plugin_database_on_a_full_disk_is_unavailable_not_over_quota() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), "[tenants.default]\nplugins = [\"probe\"]\n\
         [tenants.default.plugin.probe]\ngrants = [\"log\", \"sql\", \"config\"]\nsettings = { attack = \"sqlfill\" }\n\
         limits = { sql_mb = 64 }");
    config.server.data_dir = dir.path().join("data");
    // The plugins' databases on a disk of 2 MiB, far below their 64 MiB quota.
    let Some(_mounted) = mount_tmpfs(&config.server.data_dir.join("plugin-data"), "size=2m") else {
        return;
    };
    let (_server, row) = one_probe_delivery(config);
    let error = row.last_error.unwrap_or_default();
    assert!(
        error.starts_with("reject: sql stopped at ") && error.ends_with(": unavailable"),
        "{error}"
    );
}

/// A server with `config` and the probe plugin as `probe`, once it is
/// loaded, given the sample message; the server and the probe's delivery
/// once settled.
fn one_probe_delivery(
    config: hookhost::config::Config,
) -> (TestServer, hookhost::store::DeliveryRow) {
    deploy(
        &test_plugins(),
        "probe",
        &config.server.plugins_dir,
        "probe",
        None,
    );
    let s = TestServer::start_in(tempfile::tempdir().unwrap(), config);
    s.wait_loaded(&["probe"]);
    let message = hookhost::samples::MESSAGE_RECEIVED.as_bytes();
    assert_eq!(post(&s.url("/webhook"), message, None).status, 200);
    let row = wait_settled(&s.data_dir(), 1, SETTLE).remove(0);
    (s, row)
}

/// The compile cache on a full disk: a plugin large enough for the child
/// compiler is compiled in the server instead, loads and runs, rather than
/// failing to load until there is room.
#[test]
fn a_plugin_loads_when_its_compile_cache_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let Some(_mounted) = mount_tmpfs(&cache, "size=64k") else {
        return;
    };
    // Full: the write stops where the filesystem does.
    assert!(std::fs::write(cache.join("filler"), vec![0u8; 1 << 20]).is_err());
    let mut config = common::config(
        dir.path(),
        "[tenants.default]\nplugins = [\"probe\"]\n\
         [tenants.default.plugin.probe]\ngrants = [\"log\", \"kv\", \"sql\"]",
    );
    config.runtime.cache_dir = Some(cache.clone());
    // The probe (730 KB) goes to the child compiler.
    config.runtime.compile_process_min_kb = 1;
    config.runtime.compiler_exe = Some(env!("CARGO_BIN_EXE_hookhost").into());
    let (_server, row) = one_probe_delivery(config);
    assert_eq!(row.state, "done", "{row:?}");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec!["filler"], "no half-written entries left");
}

/// A read-only data directory: the server starts and answers 503 (no
/// crash); once the directory is writable, it takes events.
#[test]
fn a_read_only_data_directory_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("ro");
    let Some(_mounted) = mount_tmpfs(&mnt, "ro,size=16m") else {
        return;
    };
    let mut config = common::config(dir.path(), "[tenants.default]");
    config.server.data_dir = mnt.join("data");
    let s = TestServer::start_in(tempfile::tempdir().unwrap(), config);
    let url = s.url("/webhook");
    let r = post(&url, hookhost::samples::TEST_WEBHOOK.as_bytes(), None);
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(get(&s.url("/readyz")).status, 503);
    assert_eq!(get(&s.url("/healthz")).status, 200);
    remount(&mnt, "remount,rw");
    assert!(wait_until(Duration::from_secs(10), || post(
        &url,
        hookhost::samples::TEST_WEBHOOK.as_bytes(),
        None
    )
    .status
        == 200));
    assert_eq!(get(&s.url("/readyz")).status, 200);
    assert_eq!(s.stored().len(), 1);
}

/// A retry set while the clock was ahead (an hour, a day: a virtual
/// machine resumed, a clock put right by NTP) is due at once once the
/// clock is put back, not that much later: a retry set further ahead than
/// the longest backoff could put it is due now. One set within the
/// backoff still waits for its time.
#[test]
fn a_retry_set_before_the_clock_was_put_back_is_not_held_back() {
    let s = TestServer::start(
        "[tenants.default]\nplugins = [\"probe\"]\n\
         [tenants.default.plugin.probe]\ngrants = [\"log\", \"kv\", \"sql\"]\n\
         [dispatch]\nbackoff_max_ms = 60000\n",
    );
    deploy(&test_plugins(), "probe", &s.plugins_dir(), "probe", None);
    s.wait_loaded(&["probe"]);
    for (id, chat) in [("ahead", "1@c.us"), ("soon", "2@c.us")] {
        let r = post(&s.url("/webhook"), hola_event(id, chat).as_bytes(), None);
        assert_eq!(r.status, 200);
    }
    let rows = wait_settled(&s.data_dir(), 2, SETTLE);
    assert!(rows.iter().all(|d| d.state == "done"), "{rows:?}");
    // As the ledger would hold them had their first attempts failed while
    // the clock was a day ahead (event 1) and a minute ago (event 2).
    let now = hookhost::store::now_ms();
    {
        let c = hookhost::store::open_for_update(&s.data_dir()).unwrap();
        for (seq, next_at) in [(1, now + 86_400_000), (2, now + 50_000)] {
            c.execute(
                "UPDATE deliveries SET state = 'failed', attempts = 1, next_at = ?2 WHERE event_seq = ?1",
                rusqlite::params![seq, next_at],
            )
            .unwrap();
        }
    }
    let state = |seq: i64| {
        deliveries(&s.data_dir())
            .into_iter()
            .find(|d| d.event_seq == seq)
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(30), || state(1).state == "done"),
        "{:?}",
        state(1)
    );
    assert_eq!(state(1).attempts, 2);
    let soon = state(2);
    assert_eq!(
        (soon.state.as_str(), soon.next_at),
        ("failed", now + 50_000)
    );
}

/// SIGTERM: the server stops accepting, finishes what it holds and exits 0;
/// everything acknowledged is stored.
#[test]
fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(&cfg, "[tenants.default]\n").unwrap();
    let data = dir.path().join("data");
    let mut server = Proc::start(&cfg, &data, &dir.path().join("plugins"));
    for i in 0..20 {
        let body = serde_json::json!({"event_type":"ack_update","id":format!("g{i}"),"ack":"read"});
        assert_eq!(
            post(&server.url("/webhook"), body.to_string().as_bytes(), None).status,
            200
        );
    }
    // A second server on the same data directory is refused while the
    // first runs (each would run the other's deliveries).
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .arg("--plugins-dir")
        .arg(dir.path().join("plugins"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ended = (0..200).find_map(|_| {
        std::thread::sleep(Duration::from_millis(50));
        second.try_wait().unwrap()
    });
    if ended.is_none() {
        let _ = second.kill();
    }
    assert!(ended.is_some_and(|s| !s.success()), "{ended:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains(&format!(
            "data directory {} is in use by another `hookhost serve` (pid {})",
            data.display(),
            server.child.id()
        )),
        "{err}"
    );
    // Its log lines went to a pipe: no terminal colour codes in them.
    assert!(err.contains("WARN") && !err.contains('\x1b'), "{err:?}");
    assert_eq!(
        post(
            &server.url("/webhook"),
            br#"{"event_type":"ack_update","id":"after","ack":"read"}"#,
            None
        )
        .status,
        200,
        "the first server carries on"
    );
    assert!(server.terminate(), "the server did not exit after SIGTERM");
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
    // Stopped, it lets the directory go.
    let mut next = Proc::start(&cfg, &data, &dir.path().join("plugins"));
    assert!(next.terminate());
    let c = hookhost::store::open_read_only(&data).unwrap();
    assert_eq!(
        hookhost::store::list_events(&c, None, 0, 100)
            .unwrap()
            .len(),
        21
    );
    let logs = server.logs.lock().unwrap();
    assert!(logs
        .iter()
        .any(|l| l["message"] == "shutdown signal received"));
    assert!(logs.iter().any(|l| l["message"] == "stopped"));
}

/// Unmounts on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Mounts a tmpfs with `options` at `dir`. `None` when not root (mounting
/// needs it; CI and the project's machines run as root), and then the
/// calling test has nothing to check.
fn mount_tmpfs(dir: &std::path::Path, options: &str) -> Option<Mounted> {
    std::fs::create_dir_all(dir).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Some(Mounted(dir.to_path_buf()));
    }
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    assert!(!root, "running as root but cannot mount a tmpfs");
    eprintln!("not root: this test needs to mount a tmpfs");
    None
}

/// Changes a mount's options (size, ro/rw) in place.
fn remount(dir: &std::path::Path, options: &str) {
    let ok = std::process::Command::new("mount")
        .args(["-o", options])
        .arg(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount -o {options} failed");
}

/// One thread of a process, from `/proc/PID/task/TID`.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Thread {
    name: String,
    /// Scheduling policy (`SCHED_*`).
    policy: i64,
    nice: i64,
    /// The CPUs it may run on.
    cpus: Vec<usize>,
}

/// Each of a process's threads (`/proc/PID/task/*/stat` and `status`); a
/// thread that ended meanwhile is left out.
#[cfg(target_os = "linux")]
fn threads(pid: u32) -> Vec<Thread> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(t.path().join("stat")),
            std::fs::read_to_string(t.path().join("status")),
        ) else {
            continue;
        };
        // `pid (comm) state ...`: the fields after the name, from the 3rd.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |n: usize| fields[n - 3].parse::<i64>().unwrap();
        out.push(Thread {
            name: stat[open + 1..close].to_string(),
            policy: field(41),
            nice: field(19),
            cpus: cpus_allowed(&status),
        });
    }
    out
}

/// The CPUs a thread may run on, from `Cpus_allowed_list` (`0-1,4`).
#[cfg(target_os = "linux")]
fn cpus_allowed(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    cpus
}

/// Deliveries run at the idle scheduling policy by default, so a request
/// always gets the CPU first; with `idle_priority = false`, at `nice`.
/// Request threads keep the normal policy either way.
#[cfg(target_os = "linux")]
#[test]
fn deliveries_and_dispatcher_run_at_idle_priority_unless_configured_at_nice() {
    const SCHED_OTHER: i64 = 0;
    const SCHED_IDLE: i64 = 5;
    let samples = sample_plugins();
    for idle in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        deploy(&samples, "logger", &plugins, "logger", None);
        let cfg = dir.path().join("hookhost.toml");
        std::fs::write(
            &cfg,
            format!(
                "[dispatch]\nidle_priority = {idle}\nnice = 7\n[tenants.default]\nplugins = [\"logger\"]\nrate_limit = {{ per_second = 0, burst = 0 }}\n"
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        let server = Proc::start(&cfg, &data, &plugins);
        let body = hola_event("m1", "c1@c.us");
        let r = post(&server.url("/webhook"), body.as_bytes(), None);
        assert_eq!(r.status, 200);
        assert!(
            wait_until(Duration::from_secs(30), || done_count(&data, |_| true) == 1),
            "not delivered"
        );
        let all = threads(server.child.id());
        let delivering: Vec<_> = all.iter().filter(|t| t.name == "hookhost-delive").collect();
        let http: Vec<_> = all.iter().filter(|t| t.name == "hookhost-http").collect();
        let dispatcher: Vec<_> = all.iter().filter(|t| t.name == "dispatcher").collect();
        assert!(!http.is_empty(), "{all:?}");
        assert_eq!(dispatcher.len(), 1, "{all:?}");
        assert!(
            http.iter().all(|t| t.policy == SCHED_OTHER && t.nice == 0),
            "{all:?}"
        );
        if idle {
            assert!(delivering.iter().any(|t| t.policy == SCHED_IDLE), "{all:?}");
            // Fan-out and scheduling wait for a pause in ingest too.
            assert_eq!(dispatcher[0].policy, SCHED_IDLE, "{all:?}");
        } else {
            assert_eq!(
                (dispatcher[0].policy, dispatcher[0].nice),
                (SCHED_OTHER, 0),
                "{all:?}"
            );
            assert!(
                delivering
                    .iter()
                    .any(|t| t.policy == SCHED_OTHER && t.nice == 7),
                "{all:?}"
            );
            assert!(delivering.iter().all(|t| t.policy != SCHED_IDLE), "{all:?}");
        }
    }
}

/// With one request thread per CPU (the default on a machine of two or
/// more), each request thread keeps to a CPU of its own, a different one
/// each; the store's writer, the dispatcher and the request runtime's
/// blocking threads may run on every CPU. With `pin_request_threads =
/// false` every thread may.
#[cfg(target_os = "linux")]
#[test]
fn request_threads_keep_one_cpu_each_unless_configured_not_to() {
    let all = cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    if all.len() < 2 || workers != all.len() {
        // One CPU, or a CPU quota below the CPUs: the server pins nothing.
        eprintln!("{workers} request threads on CPUs {all:?}: none is pinned");
        return;
    }
    for pin in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let cfg = dir.path().join("hookhost.toml");
        std::fs::write(
            &cfg,
            format!(
                // Pinned by default: the key is left out.
                "{}[tenants.default]\nrate_limit = {{ per_second = 0, burst = 0 }}\n",
                if pin {
                    ""
                } else {
                    "[server]\npin_request_threads = false\n"
                }
            ),
        )
        .unwrap();
        let server = Proc::start(&cfg, &dir.path().join("data"), &plugins);
        // Requests from several connections at once, so that every request
        // thread has worked and paused.
        std::thread::scope(|s| {
            for i in 0..8 {
                let url = server.url("/webhook");
                s.spawn(move || {
                    let body = hola_event(&format!("m{i}"), "c1@c.us");
                    assert_eq!(post(&url, body.as_bytes(), None).status, 200);
                });
            }
        });
        let pinned = |threads: &[Thread]| -> Vec<usize> {
            let mut p: Vec<usize> = threads
                .iter()
                .filter(|t| t.name == "hookhost-http" && t.cpus.len() == 1)
                .map(|t| t.cpus[0])
                .collect();
            p.sort();
            p
        };
        let want = if pin { all.clone() } else { Vec::new() };
        assert!(
            wait_until(Duration::from_secs(10), || pinned(&threads(
                server.child.id()
            )) == want),
            "{:?}",
            threads(server.child.id())
        );
        // /metrics renders on a blocking thread, started from a request
        // thread: it must not keep that thread's CPU.
        assert_eq!(get(&server.url("/metrics")).status, 200);
        let threads = threads(server.child.id());
        let http = threads.iter().filter(|t| t.name == "hookhost-http").count();
        assert!(
            http > all.len(),
            "a blocking thread besides the workers: {threads:?}"
        );
        assert_eq!(pinned(&threads), want, "{threads:?}");
        for t in &threads {
            if t.name != "hookhost-http" || !pin {
                assert_eq!(t.cpus, all, "{}: {threads:?}", t.name);
            }
        }
        for name in ["store-writer", "dispatcher"] {
            assert!(
                threads.iter().any(|t| t.name == name),
                "{name}: {threads:?}"
            );
        }
    }
}
