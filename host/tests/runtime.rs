//! The plugin runtime end to end: real compiled components receiving events
//! over HTTP, sandbox limits, capabilities, retries and hot reload.

mod common;
use common::whapi::FakeWhapi;
use common::*;
use hookhost::samples;
use std::path::PathBuf;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);

/// Deploys the probe test plugin as `name` and waits until it is loaded.
fn deploy_probe(s: &TestServer, name: &str) {
    deploy(&test_plugins(), "probe", &s.plugins_dir(), name, None);
    s.wait_loaded(&[name]);
}

fn fast_retries(extra: &str) -> String {
    format!(
        r#"
[dispatch]
backoff_base_ms = 20
backoff_max_ms = 100
max_attempts = 4
{extra}
"#
    )
}

#[test]
fn a_plugin_receives_every_event_type_with_all_fields() {
    let tp = test_plugins();
    let s = TestServer::start(&fast_retries("[tenants.default]"));
    deploy(&tp, "probe", &s.plugins_dir(), "recorder", None);
    wait_until(SETTLE, || get(&s.url("/readyz")).status == 200);
    // The plugin must be loaded before events arrive, or they predate it.
    std::thread::sleep(Duration::from_millis(100));
    s.wait_loaded(&["recorder"]);
    for name in samples::NAMES {
        assert_eq!(
            post(
                &s.url("/webhook"),
                samples::get(name).unwrap().as_bytes(),
                None
            )
            .status,
            200
        );
    }
    post(
        &s.url("/webhook"),
        br#"{"event_type":"presence","id":"p1","chat_id":"c"}"#,
        None,
    );
    let rows = wait_settled(&s.data_dir(), 6, SETTLE);
    assert!(rows.iter().all(|d| d.state == "done"), "{rows:?}");
    // Different chats run in parallel: look events up by kind.
    let seen = plugin_sql(
        &s.data_dir(),
        "default",
        "recorder",
        "SELECT kind, fields FROM seen",
    );
    let order = [
        "message_received",
        "message_sent",
        "ack_update",
        "message_reaction",
        "test_webhook",
        "unknown",
    ];
    let mut kinds: Vec<&str> = seen.iter().map(|r| r[0].as_str()).collect();
    kinds.sort_by_key(|k| order.iter().position(|o| o == k));
    assert_eq!(kinds, order);
    let f = |i: usize| -> serde_json::Value {
        let row = seen.iter().find(|r| r[0] == order[i]).unwrap();
        serde_json::from_str(&row[1]).unwrap()
    };
    let m = f(0);
    let expect = serde_json::json!({
        "id": "ABCD1234", "instance_id": "123", "chat_id": "573001112233@c.us",
        "from": "573001112233@c.us", "to": "573009998877@c.us", "from_me": false,
        "sender_name": "Juan Pérez", "body": "Hola, ¿tienen menú?", "type": "text",
        "timestamp": 1724716800, "is_group": false, "quoted_message_id": null, "reaction": null,
        "media_url": null, "latitude": null, "longitude": null, "vcard": null,
        "status": "received", "ack": "pending", "group_sender": null
    });
    assert_eq!(m, expect);
    assert_eq!(f(1)["from_me"], true);
    assert_eq!(f(1)["body"], "¡Hola! Te comparto el menú 👇");
    assert_eq!(
        f(2),
        serde_json::json!({"id": "WXYZ5678", "ack": "delivered"})
    );
    assert_eq!(f(3)["reaction"], "👍");
    assert_eq!(f(3)["timestamp"], 1724717000);
    assert_eq!(
        f(4)["message"],
        "This is a test webhook message from WhApi.co"
    );
    assert_eq!(f(5)["event_type"], "presence");
    assert!(f(5)["raw_json"].as_str().unwrap().contains("\"p1\""));
    // Every delivery records the plugin's content hash.
    let hash = hookhost::runtime::plugin::hash(
        &std::fs::read(s.plugins_dir().join("recorder.wasm")).unwrap(),
    );
    assert!(rows
        .iter()
        .all(|d| d.plugin_hash.as_deref() == Some(hash.as_str())));
}

/// An empty plugins folder is said so at start, with where it is.
#[test]
fn the_log_says_when_the_plugins_folder_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(&cfg, "[tenants.default]\n").unwrap();
    let server = process::Proc::start(&cfg, &dir.path().join("data"), &plugins);
    let said = || {
        let logs = server.logs.lock().unwrap();
        let lines: Vec<_> = logs
            .iter()
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no plugins yet"))
            })
            .cloned()
            .collect();
        lines
    };
    assert!(wait_until(SETTLE, || !said().is_empty()));
    let lines = said();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["dir"], plugins.display().to_string());
}

/// A plugins folder that is there but cannot be read (here a file put in
/// its place) changes nothing: the plugins loaded keep running, the log
/// says so once rather than at every rescan, and once it is readable
/// again.
#[test]
fn an_unreadable_plugins_folder_keeps_the_plugins_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    deploy(&test_plugins(), "probe", &plugins, "probe", None);
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        "[tenants.default]\nplugins = [\"probe\"]\n\
         [tenants.default.plugin.probe]\ngrants = [\"log\", \"kv\", \"sql\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = process::Proc::start(&cfg, &data, &plugins);
    assert!(wait_until(SETTLE, || server.count_lines("plugin loaded") == 1));
    let aside = dir.path().join("plugins.aside");
    std::fs::rename(&plugins, &aside).unwrap();
    std::fs::write(&plugins, "not a folder").unwrap();
    let failing = "reading the plugins folder: failing";
    assert!(wait_until(SETTLE, || server.count_lines(failing) == 1));
    // Three rescans later: said once, and the plugin still runs.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(server.count_lines(failing), 1);
    let post_ok = |id: &str| {
        let body = format!(r#"{{"event_type":"message_received","id":"{id}","body":"x"}}"#);
        assert_eq!(
            post(&server.url("/webhook"), body.as_bytes(), None).status,
            200
        );
    };
    post_ok("U1");
    let rows = wait_settled(&data, 1, SETTLE);
    assert_eq!(rows[0].state, "done", "{rows:?}");
    std::fs::remove_file(&plugins).unwrap();
    std::fs::rename(&aside, &plugins).unwrap();
    assert!(wait_until(SETTLE, || server
        .count_lines("reading the plugins folder: working again")
        == 1));
    post_ok("U2");
    let rows = wait_settled(&data, 2, SETTLE);
    assert!(rows.iter().all(|d| d.state == "done"), "{rows:?}");
    assert_eq!(server.count_lines("plugin loaded"), 1, "not loaded again");
}

/// A plugin file the server cannot read (deployed with permissions only
/// its owner can read, say) is a failed load the status listing explains,
/// said once rather than at every rescan, and loaded as soon as it can be
/// read. A link to `/proc/self/mem` stands for it here: a regular file
/// whose reading fails even for root.
#[test]
fn an_unreadable_plugin_file_is_reported_once_and_loaded_once_readable() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let file = plugins.join("probe.wasm");
    std::os::unix::fs::symlink("/proc/self/mem", &file).unwrap();
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(&cfg, "[admin]\ntoken = \"t\"\n[tenants.default]\n").unwrap();
    let server = process::Proc::start(&cfg, &dir.path().join("data"), &plugins);
    let status = || {
        let mut r = agent()
            .get(&server.url("/admin/plugins"))
            .header("Authorization", "Bearer t")
            .call()
            .unwrap();
        let v: serde_json::Value = r.body_mut().read_json().unwrap();
        v["plugins"][0].clone()
    };
    let said = "cannot read plugin file";
    assert!(wait_until(SETTLE, || server.count_lines(said) == 1));
    assert_eq!(status()["name"], "probe");
    assert_eq!(status()["status"], "failed", "{}", status());
    let error = status()["last_error"].as_str().unwrap_or("").to_string();
    assert!(error.starts_with("cannot read the file: "), "{error}");
    assert!(status()["hash"].is_null(), "{}", status());
    // Three rescans later: still said once.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(server.count_lines(said), 1);
    // Put right (a permission fixed changes no mtime; here the link is
    // replaced by the file): loaded at the next scan.
    deploy(&test_plugins(), "probe", &plugins, "probe", None);
    assert!(
        wait_until(SETTLE, || status()["status"] == "loaded"),
        "{}",
        status()
    );
    assert!(status()["last_error"].is_null(), "{}", status());
    assert_eq!(server.count_lines(said), 1);
}

/// What an operator reads in the server's log: a plugin the configuration
/// names but the folder lacks, and the first capability a delivery was
/// refused (once per delivery, not once per call).
#[test]
fn the_log_names_missing_plugins_and_refused_grants() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    // Its sidecar names a tenant the configuration does not have.
    deploy(
        &test_plugins(),
        "probe",
        &plugins,
        "locked",
        Some("tenants = [\"default\", \"ghost\"]\n"),
    );
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        r#"
[tenants.default]
plugins = ["locked", "loger"]
[tenants.default.plugin.locked]
grants = ["log", "kv"]
settings = { probe = "1" }
[tenants.default.plugin.loger]
grants = ["log", "messaging"]
"#,
    )
    .unwrap();
    let server = process::Proc::start(&cfg, &dir.path().join("data"), &plugins);
    wait_loaded(&server.url("/metrics"), &["locked"]);
    let lines = |text: &str| -> Vec<serde_json::Value> {
        server
            .logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
            .cloned()
            .collect()
    };
    // It may send, but the tenant has no gateway account.
    let no_account = lines("has no gateway account");
    assert_eq!(no_account.len(), 1, "{no_account:?}");
    assert_eq!(no_account[0]["plugin"], "loger");
    let missing = lines("names a plugin that is not in the plugins folder");
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(
        (&missing[0]["tenant"], &missing[0]["plugin"]),
        (&"default".into(), &"loger".into())
    );
    for id in ["e1", "e2"] {
        let ev = hola_event(id, "c");
        assert_eq!(
            post(&server.url("/webhook"), ev.as_bytes(), None).status,
            200
        );
    }
    let data = dir.path().join("data");
    let rows = wait_settled(&data, 2, SETTLE);
    assert!(
        rows.iter().all(|d| d
            .last_error
            .as_deref()
            .unwrap_or("")
            .ends_with("(`sql` is not granted)")),
        "{rows:?}"
    );
    assert!(wait_until(SETTLE, || lines("capability it is not granted")
        .len()
        >= 2));
    let refused = lines("capability it is not granted");
    assert_eq!(refused.len(), 2, "one line per delivery: {refused:?}");
    assert!(
        refused
            .iter()
            .all(|v| v["capability"] == "sql" && v["plugin"] == "locked"),
        "{refused:?}"
    );
    let m = metrics_text(&server.url("/metrics"));
    let counted = m
        .lines()
        .find(|l| l.starts_with("hookhost_capability_denied_total{"))
        .unwrap_or_else(|| panic!("{m}"));
    for label in [
        r#"tenant="default""#,
        r#"plugin="locked""#,
        r#"capability="sql""#,
    ] {
        assert!(counted.contains(label), "{counted}");
    }
    assert!(counted.ends_with(" 2"), "{counted}");
    // Settings it cannot read (no `config` grant), and the sidecar's
    // unknown tenant, each said once though the folder is read again
    // every two seconds.
    let unread = lines("settings are given but `config` is not in the plugin's grants");
    assert_eq!(unread.len(), 1, "{unread:?}");
    assert_eq!(unread[0]["plugin"], "locked");
    std::thread::sleep(Duration::from_millis(4500));
    let ghost = lines("the sidecar names tenants the configuration does not have");
    assert_eq!(ghost.len(), 1, "{ghost:?}");
    assert_eq!(
        (&ghost[0]["plugin"], &ghost[0]["tenants"]),
        (&"locked".into(), &"ghost".into())
    );
}

#[test]
fn grants_and_denials() {
    let tp = test_plugins();
    let whapi = FakeWhapi::start();
    let s = TestServer::start(&format!(
        r#"
[tenants.default]
plugins = ["locked", "open"]
[tenants.default.whapi]
base_url = "{}"
instance_id = "123"
token = "tok"
[tenants.default.plugin.locked]
grants = ["log", "kv"]
settings = {{ probe = "1" }}
[tenants.default.plugin.open]
grants = ["log", "kv", "sql", "messaging", "config"]
settings = {{ probe = "1" }}
"#,
        whapi.url
    ));
    deploy(&tp, "probe", &s.plugins_dir(), "locked", None);
    deploy(&tp, "probe", &s.plugins_dir(), "open", None);
    s.wait_loaded(&["locked", "open"]);
    post(&s.url("/webhook"), samples::TEST_WEBHOOK.as_bytes(), None);
    let rows = wait_settled(&s.data_dir(), 2, SETTLE);
    let err = |p: &str| {
        rows.iter()
            .find(|d| d.plugin == p)
            .unwrap()
            .last_error
            .clone()
            .unwrap()
    };
    // Without `config` the locked plugin cannot read its settings, so it
    // takes its default path (recording) and is refused SQL.
    // The ledger names the missing grant.
    assert!(
        err("locked").contains("access denied")
            && err("locked").ends_with("(`sql` is not granted)"),
        "{}",
        err("locked")
    );
    assert_eq!(err("open"), "reject: log=ok kv=ok sql=ok send=ok config=ok");
    assert_eq!(whapi.sent().len(), 1);
}

#[test]
fn kv_and_sql_are_private_to_tenant_and_plugin() {
    let tp = test_plugins();
    let s = TestServer::start(
        r#"
[tenants.a]
plugins = ["recorder", "reader"]
[tenants.b]
plugins = ["recorder"]
[tenants.a.plugin.reader.settings]
read_kv = "seen/message_received:[\"ABCD1234\"]"
"#,
    );
    deploy(&tp, "probe", &s.plugins_dir(), "recorder", None);
    deploy(&tp, "probe", &s.plugins_dir(), "reader", None);
    s.wait_loaded(&["recorder", "reader"]);
    assert_eq!(
        post(
            &s.url("/webhook/a"),
            samples::MESSAGE_RECEIVED.as_bytes(),
            None
        )
        .status,
        200
    );
    assert_eq!(
        post(&s.url("/webhook/b"), samples::ACK_UPDATE.as_bytes(), None).status,
        200
    );
    let rows = wait_settled(&s.data_dir(), 3, SETTLE);
    // Each tenant's recorder wrote only its own database.
    let a = plugin_sql(
        &s.data_dir(),
        "a",
        "recorder",
        "SELECT kind, tenant FROM seen",
    );
    let b = plugin_sql(
        &s.data_dir(),
        "b",
        "recorder",
        "SELECT kind, tenant FROM seen",
    );
    assert_eq!(
        a,
        vec![vec!["message_received".to_string(), "a".to_string()]]
    );
    assert_eq!(b, vec![vec!["ack_update".to_string(), "b".to_string()]]);
    // The reader plugin on tenant a cannot see the recorder's key, although
    // it names it exactly.
    let reader = rows.iter().find(|d| d.plugin == "reader").unwrap();
    assert_eq!(
        reader.last_error.as_deref(),
        Some("reject: kv[seen/message_received:[\"ABCD1234\"]]=None")
    );
}

#[test]
fn retry_then_success_and_reject_goes_to_dead() {
    let s = TestServer::start(&fast_retries(
        r#"
[tenants.default]
plugins = ["flaky"]
[tenants.default.plugin.flaky.settings]
fail_until_attempt = "3"
"#,
    ));
    deploy_probe(&s, "flaky");
    post(
        &s.url("/webhook"),
        samples::MESSAGE_RECEIVED.as_bytes(),
        None,
    );
    let reject = serde_json::json!({"event_type":"message_received","id":"R1","chat_id":"x@c.us","body":"please reject"});
    post(&s.url("/webhook"), reject.to_string().as_bytes(), None);
    let rows = wait_settled(&s.data_dir(), 2, SETTLE);
    let ok = rows.iter().find(|d| d.event_seq == 1).unwrap();
    assert_eq!((ok.state.as_str(), ok.attempts), ("done", 3), "{ok:?}");
    let dead = rows.iter().find(|d| d.event_seq == 2).unwrap();
    // The reject happens on attempt 3 (after two retries) and is final.
    assert_eq!(dead.state, "dead");
    assert_eq!(dead.last_error.as_deref(), Some("reject: asked to reject"));
}

#[test]
fn a_reply_is_sent_exactly_once_across_retries() {
    let whapi = FakeWhapi::start();
    let s = TestServer::start(&fast_retries(&format!(
        r#"
[tenants.default]
plugins = ["replier"]
[tenants.default.whapi]
base_url = "{}"
instance_id = "123"
token = "secret-token"
[tenants.default.plugin.replier]
grants = ["log", "kv", "sql", "config", "messaging"]
settings = {{ reply = "Gracias!", fail_until_attempt = "3" }}
"#,
        whapi.url
    )));
    // The gateway fails the first send: the delivery retries and sends again.
    whapi
        .fail_first
        .store(1, std::sync::atomic::Ordering::SeqCst);
    deploy_probe(&s, "replier");
    post(
        &s.url("/webhook"),
        samples::MESSAGE_RECEIVED.as_bytes(),
        None,
    );
    let rows = wait_settled(&s.data_dir(), 1, SETTLE);
    assert_eq!(rows[0].state, "done", "{rows:?}");
    assert!(rows[0].attempts >= 3);
    let sent = whapi.sent();
    // One refused (500) try, then exactly one accepted send, despite the
    // later retries of the delivery.
    assert_eq!(sent.len(), 2, "{sent:?}");
    let b = &sent[1].body;
    assert_eq!(sent[1].path, "/api/send-message");
    assert_eq!(b["to"], "573001112233@c.us");
    assert_eq!(b["message"], "Gracias!");
    assert_eq!(b["type"], "text");
    assert_eq!(b["quotedMessageId"], "ABCD1234");
    assert_eq!(b["token"], "secret-token");
    assert_eq!(b["instanceId"], "123");
    assert_eq!(
        sent[0].headers.iter().find(|(k, _)| k == "idempotency-key"),
        sent[1].headers.iter().find(|(k, _)| k == "idempotency-key")
    );
}

/// A replier whose first reply the gateway takes but answers only after
/// the delivery's deadline: the send's outcome is unknown. With `echo`, the
/// gateway announces the message with a `message_sent` webhook.
fn replier_with_an_unconfirmed_send(
    whapi: &FakeWhapi,
    echo_wait_secs: u64,
    echo: bool,
) -> TestServer {
    let s = TestServer::start(&format!(
        r#"
[dispatch]
backoff_base_ms = 100
backoff_max_ms = 200
max_attempts = 30
[tenants.default]
plugins = ["replier"]
[tenants.default.whapi]
base_url = "{}"
instance_id = "123"
token = "secret-token"
echo_wait_secs = {echo_wait_secs}
[tenants.default.plugin.replier]
grants = ["log", "kv", "sql", "config", "messaging"]
limits = {{ timeout_ms = 400 }}
settings = {{ reply = "Gracias!" }}
"#,
        whapi.url
    ));
    if echo {
        whapi.echo_to(&s.url("/webhook"));
    }
    whapi
        .slow_ms
        .store(1500, std::sync::atomic::Ordering::SeqCst);
    whapi
        .slow_first
        .store(1, std::sync::atomic::Ordering::SeqCst);
    deploy_probe(&s, "replier");
    post(
        &s.url("/webhook"),
        samples::MESSAGE_RECEIVED.as_bytes(),
        None,
    );
    s
}

#[test]
fn an_unconfirmed_send_is_confirmed_by_the_gateways_echo() {
    let whapi = FakeWhapi::start();
    let s = replier_with_an_unconfirmed_send(&whapi, 300, true);
    // Two events: the message and the gateway's echo of the reply.
    let rows = wait_settled(&s.data_dir(), 2, SETTLE);
    let reply = rows.iter().find(|d| d.event_seq == 1).unwrap();
    assert_eq!(reply.state, "done", "{rows:?}");
    assert!(reply.attempts >= 2, "{rows:?}");
    assert_eq!(whapi.sent().len(), 1, "sent once: {:?}", whapi.sent());
    let stored = s.stored();
    assert!(
        stored
            .iter()
            .any(|(_, kind, key)| kind == "message_sent" && key.contains("\"gw-1\"")),
        "the echo was received: {stored:?}"
    );
}

#[test]
fn an_unconfirmed_send_without_an_echo_is_sent_again_after_the_wait() {
    let whapi = FakeWhapi::start();
    let s = replier_with_an_unconfirmed_send(&whapi, 1, false);
    let rows = wait_settled(&s.data_dir(), 1, SETTLE);
    assert_eq!(rows[0].state, "done", "{rows:?}");
    // Attempts in between waited for an echo that never came; then one
    // more send under the same key.
    assert!(rows[0].attempts >= 3, "{rows:?}");
    let keys = whapi.idempotency_keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], keys[1]);
}

#[test]
fn limits_are_enforced_and_a_neighbour_carries_on() {
    let tp = test_plugins();
    let s = TestServer::start(&fast_retries(
        r#"
[dispatch]
max_attempts = 1
[tenants.good]
plugins = ["recorder"]
[tenants.bad]
plugins = ["spin", "membomb", "recurse", "panic", "logflood", "sleeper"]
limits = { fuel = 50_000_000, memory_mb = 16, timeout_ms = 2000 }
[tenants.bad.plugin.spin.settings]
attack = "spin"
[tenants.bad.plugin.membomb.settings]
attack = "membomb"
[tenants.bad.plugin.recurse.settings]
attack = "recurse"
[tenants.bad.plugin.panic.settings]
attack = "panic"
[tenants.bad.plugin.logflood]
settings = { attack = "logflood" }
[tenants.bad.plugin.sleeper]
limits = { timeout_ms = 300 }
settings = { attack = "sleep", sleep_ms = "5000" }
"#,
    )
    .replace("[dispatch]\nbackoff_base_ms = 20\nbackoff_max_ms = 100\nmax_attempts = 4\n\n[dispatch]", "[dispatch]\nbackoff_base_ms = 20\nbackoff_max_ms = 100"));
    for p in [
        "recorder", "spin", "membomb", "recurse", "panic", "logflood", "sleeper",
    ] {
        deploy(&tp, "probe", &s.plugins_dir(), p, None);
    }
    s.wait_loaded(&["sleeper", "recorder"]);
    let bad = s.url("/webhook/bad");
    let good = s.url("/webhook/good");
    assert_eq!(
        post(&bad, samples::TEST_WEBHOOK.as_bytes(), None).status,
        200
    );
    for i in 0..50 {
        let body = serde_json::json!({"event_type":"message_received","id":format!("g{i}"),"chat_id":format!("c{}@c.us", i % 5),"body":"hi"});
        assert_eq!(post(&good, body.to_string().as_bytes(), None).status, 200);
    }
    let rows = wait_settled(&s.data_dir(), 56, SETTLE);
    let reason = |p: &str| {
        rows.iter()
            .find(|d| d.plugin == p)
            .map(|d| (d.state.clone(), d.last_error.clone().unwrap_or_default()))
            .unwrap()
    };
    assert_eq!(reason("spin"), ("dead".into(), "out-of-fuel".into()));
    assert_eq!(reason("membomb"), ("dead".into(), "memory-limit".into()));
    assert_eq!(reason("sleeper"), ("dead".into(), "deadline".into()));
    assert!(
        reason("recurse").1.starts_with("trap: "),
        "{:?}",
        reason("recurse")
    );
    // Rust's shadow stack lives in linear memory: overflowing it is an
    // out-of-bounds access, caught like any other trap.
    let r = reason("recurse").1;
    assert!(r.contains("stack") || r.contains("out of bounds"), "{r}");
    assert!(
        reason("panic").1.starts_with("trap: "),
        "{:?}",
        reason("panic")
    );
    // The log flood is cut at the line limit and runs out of fuel or time.
    assert_eq!(reason("logflood").0, "dead");
    let good_done = rows
        .iter()
        .filter(|d| d.tenant == "good" && d.state == "done")
        .count();
    assert_eq!(good_done, 50);
    assert_eq!(
        plugin_sql(
            &s.data_dir(),
            "good",
            "recorder",
            "SELECT count(*) FROM seen"
        ),
        vec![vec!["50".to_string()]]
    );
    // The host is still serving.
    assert_eq!(get(&s.url("/healthz")).status, 200);
}

#[test]
fn every_delivery_starts_from_pristine_memory() {
    // The probe checks that none of 256 pages (half in the memory image, half
    // zero-initialised) holds an earlier delivery's writes, then writes to
    // every other one: more separate dirty regions than one scan of the
    // freed slot reports, so resetting it takes several.
    let s = TestServer::start(
        r#"
[dispatch]
max_attempts = 1
[tenants.default]
plugins = ["scribbler"]
concurrency = 1
[tenants.default.plugin.scribbler.settings]
attack = "scribble"
record = "false"
"#,
    );
    deploy_probe(&s, "scribbler");
    for i in 0..30 {
        assert_eq!(
            post(&s.url("/webhook"), hola(i, "c1@c.us").as_bytes(), None).status,
            200
        );
    }
    let rows = wait_settled(&s.data_dir(), 30, SETTLE);
    let dirty: Vec<_> = rows
        .iter()
        .filter(|d| d.state != "done")
        .map(|d| (d.event_seq, d.last_error.clone()))
        .collect();
    assert!(dirty.is_empty(), "{dirty:?}");
}

/// The pid of the child compiler working for the server whose data lives
/// in `data_dir` (its cache folder is in the command line).
fn compile_child(data_dir: &std::path::Path) -> Option<i32> {
    let cache = data_dir.join("cache");
    let cache = cache.to_string_lossy();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (cmd.contains("compile-worker") && cmd.contains(cache.as_ref())).then_some(pid)
    })
}

/// A server with `config_text` whose child compiler is held still
/// (SIGSTOP) while it compiles the 12 MB JavaScript sample, deployed as
/// `name` after `before` ran: the plugin stays "compiling" until the test
/// sends SIGCONT. Returns the server and the child's pid.
fn server_with_held_compile(
    config_text: &str,
    before: impl FnOnce(&TestServer),
    name: &str,
) -> (TestServer, i32) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), config_text);
    cfg.runtime.compiler_exe = Some(env!("CARGO_BIN_EXE_hookhost").into());
    let s = TestServer::start_in(dir, cfg);
    before(&s);
    deploy(&sample_plugins(), "stats", &s.plugins_dir(), name, None);
    let mut child = None;
    assert!(wait_until(Duration::from_secs(20), || {
        child = compile_child(&s.data_dir());
        child.is_some()
    }));
    let child = child.unwrap();
    // SAFETY: signals a process this test's server started; the server's
    // end kills it (parent-death signal).
    unsafe { libc::kill(child, libc::SIGSTOP) };
    (s, child)
}

/// A child compiler killed from outside (the OOM killer, an operator)
/// says nothing about the file: the plugin is reported failed with the
/// reason and compiled again a few seconds later, and loads.
#[test]
fn a_killed_compile_is_tried_again_and_loads() {
    let (s, child) =
        server_with_held_compile("[admin]\ntoken = \"t\"\n[tenants.default]", |_| {}, "stats");
    // SAFETY: as in `server_with_held_compile`.
    unsafe { libc::kill(child, libc::SIGKILL) };
    let status = || plugin_status(&s, "t", "stats");
    assert!(
        wait_until(SETTLE, || status()["status"] == "failed"),
        "{}",
        status()
    );
    let error = status()["last_error"].as_str().unwrap().to_string();
    assert!(
        error.starts_with(
            "the compiler stopped before it finished: child compiler ended with signal: 9"
        ) && error.ends_with("(tried 1 time; trying again in 5 s)"),
        "{error}"
    );
    // Events meanwhile wait for the next try, as during a compile, rather
    // than fail.
    for i in 0..3 {
        assert_eq!(
            post(&s.url("/webhook"), hola(i, "k@c.us").as_bytes(), None).status,
            200
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let waiting = deliveries(&s.data_dir());
    assert!(
        waiting.len() == 3 && waiting.iter().all(|d| d.attempts == 0),
        "{waiting:?}"
    );
    // Compiled again (another child) after the delay, at the loader's low
    // priority: it may take a while on a busy machine.
    assert!(
        wait_until(4 * SETTLE, || status()["status"] == "loaded"),
        "{}",
        status()
    );
    assert!(status()["last_error"].is_null(), "{}", status());
    assert!(!metrics_text(&s.url("/metrics")).contains("hookhost_plugin_file_failed{"));
    let rows = wait_settled(&s.data_dir(), 3, SETTLE);
    assert!(
        rows.iter().all(|d| d.state == "done" && d.attempts == 1),
        "{rows:?}"
    );
}

/// While a plugin compiles, the deliveries waiting for it do not push
/// fan-out past `max_pending` (every pass would step over them); once it
/// loads, every event reaches it.
#[test]
fn a_compiling_plugin_does_not_fan_out_past_max_pending() {
    let (s, child) = server_with_held_compile(
        r#"
[admin]
token = "t"
[dispatch]
max_pending = 20
[tenants.default]
plugins = ["stats"]
"#,
        |_| {},
        "stats",
    );
    for i in 0..200 {
        assert_eq!(
            post(
                &s.url("/webhook"),
                hola(i, &format!("c{}@c.us", i % 7)).as_bytes(),
                None
            )
            .status,
            200
        );
    }
    // Many passes of the dispatcher (at least one a second when idle).
    std::thread::sleep(Duration::from_secs(3));
    let queued = deliveries(&s.data_dir()).len();
    // The operator sees the compile and how long it has been going on.
    let status = plugin_status(&s, "t", "stats");
    // SAFETY: as above.
    unsafe { libc::kill(child, libc::SIGCONT) };
    assert_eq!(status["status"], "compiling", "{status}");
    assert!(
        status["compiling_for_ms"].as_u64().unwrap() >= 3000,
        "{status}"
    );
    assert!(
        queued <= 20,
        "{queued} deliveries queued, max_pending is 20"
    );
    // The compile child runs at the loader's nice value (10): while other
    // work keeps both cores busy it gets a small share of them, so its
    // seconds of compiling may take minutes.
    assert!(
        wait_until(4 * SETTLE, || all_loaded(&s.url("/metrics"), &["stats"])),
        "the plugin did not load after its compile went on: {}",
        metrics_text(&s.url("/metrics"))
            .lines()
            .filter(|l| l.contains("stats"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Compiled by the child: not a load from the cache.
    let status = plugin_status(&s, "t", "stats");
    assert_eq!(status["from_cache"], false, "{status}");
    let rows = wait_settled(&s.data_dir(), 200, SETTLE);
    assert_eq!(
        rows.iter().filter(|d| d.state == "done").count(),
        200,
        "{:?}",
        rows.iter().find(|d| d.state != "done")
    );
}

/// While one plugin compiles, the dispatcher asks the ledger lane by lane;
/// the retries of a plugin removed from the folder are among those lanes,
/// so they end (dead, "not loaded") instead of waiting for the compile.
#[test]
fn a_removed_plugins_retries_end_while_another_plugin_compiles() {
    // "gone" loads first: the loader compiles one file at a time.
    let (s, _child) = server_with_held_compile(
        r#"
[admin]
token = "t"
[dispatch]
backoff_base_ms = 1000
backoff_max_ms = 1000
max_attempts = 5
[tenants.default]
plugins = ["stats", "gone"]
[tenants.default.plugin.gone]
settings = { fail_until_attempt = "100" }
"#,
        |s| {
            deploy(&test_plugins(), "probe", &s.plugins_dir(), "gone", None);
            s.wait_loaded(&["gone"]);
        },
        "stats",
    );
    let r = post(&s.url("/webhook"), hola(1, "c1@c.us").as_bytes(), None);
    assert_eq!(r.status, 200);
    let gone = || {
        deliveries(&s.data_dir())
            .into_iter()
            .find(|d| d.plugin == "gone")
    };
    assert!(wait_until(SETTLE, || gone().is_some_and(|d| d.attempts >= 1)));
    std::fs::remove_file(s.plugins_dir().join("gone.wasm")).unwrap();
    assert!(wait_until(SETTLE, || plugin_status(&s, "t", "gone").is_null()));
    assert!(
        wait_until(Duration::from_secs(20), || gone()
            .is_some_and(|d| d.state == "dead")),
        "{:?}",
        gone()
    );
    let d = gone().unwrap();
    assert!(
        d.last_error.as_deref().unwrap_or("").contains("not loaded"),
        "{d:?}"
    );
    assert_eq!(plugin_status(&s, "t", "stats")["status"], "compiling");
}

/// A file replaced while it compiles in a child: the child is killed and
/// the new file loads at once, instead of after the old compile.
#[test]
fn replacing_a_file_that_compiles_cancels_its_compile() {
    // Held: without a cancel the loader would wait on it for ever.
    let (s, child) =
        server_with_held_compile("[admin]\ntoken = \"t\"\n[tenants.default]", |_| {}, "swap");
    assert_eq!(plugin_status(&s, "t", "swap")["status"], "compiling");
    let probe = test_plugins().join("probe.wasm");
    let want = hookhost::runtime::plugin::hash(&std::fs::read(&probe).unwrap());
    deploy(&test_plugins(), "probe", &s.plugins_dir(), "swap", None);
    assert_loaded_with(&s, "swap", &want);
    // Killed and reaped.
    assert!(!std::path::Path::new(&format!("/proc/{child}")).exists());
}

/// Waits until `name` runs the file whose content hash is `hash`.
fn assert_loaded_with(s: &TestServer, name: &str, hash: &str) {
    assert!(
        wait_until(SETTLE, || {
            let p = plugin_status(s, "t", name);
            p["status"] == "loaded" && p["hash"] == hash
        }),
        "{}",
        plugin_status(s, "t", name)
    );
}

/// The same file copied in again while it compiles (new mtime, same
/// bytes) is not compiled again: the compile under way goes on and loads.
#[test]
fn copying_the_same_file_again_while_it_compiles_keeps_its_compile() {
    let (s, child) =
        server_with_held_compile("[admin]\ntoken = \"t\"\n[tenants.default]", |_| {}, "again");
    let file = s.plugins_dir().join("again.wasm");
    let bytes = std::fs::read(&file).unwrap();
    let alive = || std::path::Path::new(&format!("/proc/{child}")).exists();
    // Copied over in place: first seen half-written (a slow copy), then
    // whole. Each pause is long enough for the watcher to list the folder
    // (it settles 100 ms) and for a cancelled child to be killed and reaped.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let alive_half = alive();
    std::fs::write(&file, &bytes).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let alive_whole = alive();
    // SAFETY: resumes the process this test's server started and stopped.
    unsafe { libc::kill(child, libc::SIGCONT) };
    assert!(
        alive_half,
        "the compile was dropped for a half-written file"
    );
    assert!(alive_whole, "the compile was dropped for an unchanged file");
    let want = hookhost::runtime::plugin::hash(&bytes);
    assert_loaded_with(&s, "again", &want);
}

/// A plugin copied into the folder in place is loaded once the copy ends,
/// not reported broken while half of it is there; a file left cut short is
/// reported after a few seconds.
#[test]
fn a_plugin_file_seen_half_written_waits_for_its_copy_to_end() {
    let s = TestServer::start(
        "[admin]\ntoken = \"t\"\n[tenants.default]\nplugins = [\"slow\", \"cut\"]",
    );
    let bytes = std::fs::read(test_plugins().join("probe.wasm")).unwrap();
    let half = &bytes[..bytes.len() / 2];
    std::fs::create_dir_all(s.plugins_dir()).unwrap();
    let slow = s.plugins_dir().join("slow.wasm");
    std::fs::write(&slow, half).unwrap();
    std::fs::write(s.plugins_dir().join("cut.wasm"), half).unwrap();
    // Longer than the watcher's settling and a rescan.
    std::thread::sleep(Duration::from_millis(2500));
    let status = plugin_status(&s, "t", "slow");
    assert_eq!(status["status"], "queued", "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    // The copy ends: loaded.
    std::fs::write(&slow, &bytes).unwrap();
    assert_loaded_with(&s, "slow", &hookhost::runtime::plugin::hash(&bytes));
    // Never finished: tried as it is, and the reason given.
    assert!(
        wait_until(SETTLE, || plugin_status(&s, "t", "cut")["status"]
            == "failed"),
        "{}",
        plugin_status(&s, "t", "cut")
    );
    assert!(plugin_status(&s, "t", "cut")["last_error"].is_string());
}

/// A server with tenants `default` and `acme` (admin token `t`) and the
/// probe deployed as `side` with `sidecar` beside it.
fn server_with_side(sidecar: &str) -> TestServer {
    let s = TestServer::start("[admin]\ntoken = \"t\"\n[tenants.default]\n[tenants.acme]");
    deploy(
        &test_plugins(),
        "probe",
        &s.plugins_dir(),
        "side",
        Some(sidecar),
    );
    s
}

/// A sidecar assigns tenants; a broken one is reported and the previous
/// one stays in force until the file is fixed.
#[test]
fn an_invalid_sidecar_is_reported_and_the_previous_one_kept() {
    let s = server_with_side("tenants = [\"acme\"]\n");
    let status = || plugin_status(&s, "t", "side");
    let hash = |text: &str| hookhost::runtime::plugin::hash(text.as_bytes());
    assert!(wait_until(SETTLE, || status()["status"] == "loaded"));
    assert_eq!(status()["tenants"], serde_json::json!(["acme"]));
    assert!(status()["sidecar_error"].is_null(), "{}", status());
    // The sidecar in force is named by its content's hash.
    assert_eq!(status()["sidecar"], hash("tenants = [\"acme\"]\n"));
    let sidecar = s.plugins_dir().join("side.toml");
    std::fs::write(&sidecar, "tenants = [\"acme\"\n").unwrap();
    assert!(
        wait_until(SETTLE, || status()["sidecar_error"].is_string()),
        "{}",
        status()
    );
    // One line, placed: `line 1, column 18: ...`, not the TOML snippet.
    let error = status()["sidecar_error"].as_str().unwrap().to_string();
    assert!(
        error.starts_with("line 1, column 18: unclosed array") && !error.contains('\n'),
        "{error}"
    );
    assert_eq!(status()["tenants"], serde_json::json!(["acme"]));
    assert_eq!(status()["sidecar"], hash("tenants = [\"acme\"]\n"));
    std::fs::write(&sidecar, "tenants = [\"default\"]\n").unwrap();
    assert!(
        wait_until(SETTLE, || status()["tenants"]
            == serde_json::json!(["default"])),
        "{}",
        status()
    );
    assert!(status()["sidecar_error"].is_null(), "{}", status());
    assert_eq!(status()["sidecar"], hash("tenants = [\"default\"]\n"));
    // Removed: no sidecar in force.
    std::fs::remove_file(&sidecar).unwrap();
    assert!(
        wait_until(SETTLE, || status()["sidecar"].is_null()),
        "{}",
        status()
    );
}

/// A sidecar whose `tenants` are all missing from the configuration (a
/// typo) leaves the plugin running for nobody, not for the default
/// tenant's events; fixed, the plugin runs for the tenant it names.
#[test]
fn a_sidecar_naming_only_unknown_tenants_runs_the_plugin_for_nobody() {
    let s = server_with_side("tenants = [\"acmee\"]\n");
    let status = || plugin_status(&s, "t", "side");
    assert!(wait_until(SETTLE, || status()["status"] == "loaded"));
    assert_eq!(status()["tenants"], serde_json::json!([]), "{}", status());
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(["plugins", "--url", &s.url(""), "--token", "t"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("side ") && l.contains("  for no tenant")),
        "{text}"
    );
    let ack = |tenant: &str, id: &str| {
        let body = format!(r#"{{"event_type":"ack_update","id":"{id}","ack":"read"}}"#);
        assert_eq!(
            post(&s.url(&format!("/webhook/{tenant}")), body.as_bytes(), None).status,
            200
        );
    };
    ack("default", "a1");
    ack("acme", "a2");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        deliveries(&s.data_dir()).is_empty(),
        "{:?}",
        deliveries(&s.data_dir())
    );
    std::fs::write(s.plugins_dir().join("side.toml"), "tenants = [\"acme\"]\n").unwrap();
    assert!(wait_until(SETTLE, || status()["tenants"]
        == serde_json::json!(["acme"])));
    ack("acme", "a3");
    let rows = wait_settled(&s.data_dir(), 1, SETTLE);
    assert_eq!(
        rows.iter()
            .map(|d| (d.tenant.as_str(), d.state.as_str()))
            .collect::<Vec<_>>(),
        [("acme", "done")],
        "{rows:?}"
    );
}

/// Appends a custom section: a different file (hash) with the same code.
fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    let mut payload = vec![tag.len() as u8];
    payload.extend_from_slice(tag.as_bytes());
    payload.extend_from_slice(b"variant");
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend(payload);
    out
}

/// The compile cache stays within `cache_max_mb`: a replaced plugin's old
/// entry goes, the loaded one stays even when it alone is over the limit.
#[test]
fn the_compile_cache_drops_replaced_versions_past_its_limit() {
    let tp = test_plugins();
    let s = TestServer::start("[runtime]\ncache_max_mb = 1\n[tenants.default]");
    let dir = s.plugins_dir();
    let cache = s.data_dir().join("cache");
    let v1 = std::fs::read(tp.join("probe.wasm")).unwrap();
    let v2 = variant(&v1, "v2");
    let entries = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let h1 = hookhost::runtime::plugin::hash(&v1);
    let h2 = hookhost::runtime::plugin::hash(&v2);
    deploy(&tp, "probe", &dir, "p", None);
    s.wait_loaded(&["p"]);
    let first = entries();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].starts_with(&h1) && first[0].ends_with(".cwasm"),
        "{first:?}"
    );
    assert!(std::fs::metadata(cache.join(&first[0])).unwrap().len() > 512 * 1024);
    std::fs::write(dir.join(".p.tmp"), &v2).unwrap();
    std::fs::rename(dir.join(".p.tmp"), dir.join("p.wasm")).unwrap();
    assert!(
        wait_until(SETTLE, || {
            let e = entries();
            e.len() == 1 && e[0].starts_with(&h2)
        }),
        "{:?}",
        entries()
    );
}

#[test]
fn hot_reload_replaces_and_a_broken_file_keeps_the_working_one() {
    let tp = test_plugins();
    let s = TestServer::start(&fast_retries("[admin]\ntoken = \"t\"\n[tenants.default]"));
    let dir = s.plugins_dir();
    let v1 = std::fs::read(tp.join("probe.wasm")).unwrap();
    let v2 = variant(&v1, "v2");
    let (h1, h2) = (
        hookhost::runtime::plugin::hash(&v1),
        hookhost::runtime::plugin::hash(&v2),
    );
    deploy(&tp, "probe", &dir, "hot", None);
    s.wait_loaded(&["hot"]);
    post(
        &s.url("/webhook"),
        br#"{"event_type":"ack_update","id":"a","ack":"sent"}"#,
        None,
    );
    wait_settled(&s.data_dir(), 1, SETTLE);

    // Replace the file (atomically, as the README tells operators to).
    std::fs::write(dir.join(".hot.tmp"), &v2).unwrap();
    std::fs::rename(dir.join(".hot.tmp"), dir.join("hot.wasm")).unwrap();
    assert!(wait_until(SETTLE, || get(&s.url("/metrics"))
        .body
        .as_str()
        .unwrap()
        .contains(&h2[..12])));
    post(
        &s.url("/webhook"),
        br#"{"event_type":"ack_update","id":"b","ack":"sent"}"#,
        None,
    );
    let rows = wait_settled(&s.data_dir(), 2, SETTLE);
    assert_eq!(rows[0].plugin_hash.as_deref(), Some(h1.as_str()));
    assert_eq!(rows[1].plugin_hash.as_deref(), Some(h2.as_str()));

    // A broken file: reported, and v2 keeps running.
    std::fs::write(dir.join(".hot.tmp"), b"\0asm garbage").unwrap();
    std::fs::rename(dir.join(".hot.tmp"), dir.join("hot.wasm")).unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    post(
        &s.url("/webhook"),
        br#"{"event_type":"ack_update","id":"c","ack":"sent"}"#,
        None,
    );
    let rows = wait_settled(&s.data_dir(), 3, SETTLE);
    assert_eq!(rows[2].state, "done");
    assert_eq!(rows[2].plugin_hash.as_deref(), Some(h2.as_str()));
    // The status gives the compiler's reason, not only its first context.
    // (Cut short and new, the file is first given time for a copy to end.)
    assert!(wait_until(SETTLE, || plugin_status(&s, "t", "hot")
        ["status"]
        == "loaded (newer file failed)"));
    let status = plugin_status(&s, "t", "hot");
    let error = status["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("not a valid component: failed to parse WebAssembly module: ")
            && error.len() > "not a valid component: failed to parse WebAssembly module: ".len(),
        "{error}"
    );
    assert_eq!(status["hash"], h2.as_str(), "the version in force");
    let failed_gauge = "hookhost_plugin_file_failed{plugin=\"hot\"} 1";
    assert!(wait_until(SETTLE, || metrics_text(&s.url("/metrics"))
        .contains(failed_gauge)));
    assert_eq!(
        plugin_sql(&s.data_dir(), "default", "hot", "SELECT count(*) FROM seen"),
        vec![vec!["3".to_string()]]
    );

    // Removing the file unloads the plugin: new events get no delivery.
    std::fs::remove_file(dir.join("hot.wasm")).unwrap();
    assert!(wait_until(SETTLE, || !all_loaded(
        &s.url("/metrics"),
        &["hot"]
    )));
    assert!(!metrics_text(&s.url("/metrics")).contains(failed_gauge));
    post(
        &s.url("/webhook"),
        br#"{"event_type":"ack_update","id":"d","ack":"sent"}"#,
        None,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(deliveries(&s.data_dir()).len(), 3);
}

#[test]
fn one_chat_reaches_a_plugin_in_order() {
    let s = TestServer::start(
        &fast_retries("[tenants.default]")
            .replace("max_attempts = 4", "max_attempts = 4\nworkers = 8"),
    );
    deploy_probe(&s, "recorder");
    for i in 0..60 {
        let body = serde_json::json!({"event_type":"message_received","id":format!("m{i:03}"),"chat_id":format!("chat{}@c.us", i % 3),"body":format!("{i}")});
        post(&s.url("/webhook"), body.to_string().as_bytes(), None);
    }
    wait_settled(&s.data_dir(), 60, SETTLE);
    for c in 0..3 {
        let rows = plugin_sql(
            &s.data_dir(),
            "default",
            "recorder",
            &format!("SELECT key FROM seen WHERE json_extract(fields, '$.chat_id') = 'chat{c}@c.us' ORDER BY n"),
        );
        let keys: Vec<String> = rows.into_iter().map(|r| r[0].clone()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys.len(), 20);
        assert_eq!(keys, sorted, "chat{c} out of order");
    }
}

/// A folder for a server process that is killed and started again: its
/// configuration, data directory and plugins folder, with the probe
/// deployed as `slow`, sleeping `sleep_ms` in each delivery.
struct CrashSite {
    _dir: tempfile::TempDir,
    cfg: PathBuf,
    data: PathBuf,
    plugins: PathBuf,
}

impl CrashSite {
    fn new(config: &str, sleep_ms: u64) -> CrashSite {
        let tp = test_plugins();
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        deploy(
            &tp,
            "probe",
            &plugins,
            "slow",
            Some(&format!(
                "[settings]\nattack = \"sleep\"\nsleep_ms = \"{sleep_ms}\"\n[limits]\ntimeout_ms = 10000\n"
            )),
        );
        let cfg = dir.path().join("hookhost.toml");
        std::fs::write(&cfg, config).unwrap();
        let data = dir.path().join("data");
        CrashSite {
            _dir: dir,
            cfg,
            data,
            plugins,
        }
    }

    fn start(&self) -> process::Proc {
        process::Proc::start(&self.cfg, &self.data, &self.plugins)
    }
}

#[test]
fn a_crash_mid_delivery_resumes_after_restart() {
    let site = CrashSite::new("[tenants.default]\n", 1500);
    let data = &site.data;
    let mut server = site.start();
    for i in 0..3 {
        let body = serde_json::json!({"event_type":"message_received","id":format!("k{i}"),"chat_id":"one@c.us","body":"x"});
        assert_eq!(
            post(&server.url("/webhook"), body.to_string().as_bytes(), None).status,
            200
        );
    }
    // Kill while the first delivery runs.
    assert!(wait_until(SETTLE, || deliveries(data)
        .iter()
        .any(|d| d.state == "running")));
    server.kill();
    let mut server = site.start();
    let rows = wait_settled(data, 3, SETTLE);
    server.kill();
    assert!(rows.iter().all(|d| d.state == "done"), "{rows:?}");
    let seen = plugin_sql(data, "default", "slow", "SELECT key FROM seen ORDER BY n");
    let keys: Vec<&str> = seen.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        keys,
        [
            r#"message_received:["k0"]"#,
            r#"message_received:["k1"]"#,
            r#"message_received:["k2"]"#
        ]
    );
}

/// Deliveries interrupted by a crash are queued again at the restart and
/// count against `max_pending` until they start, like any queued row: the
/// restarted server keeps fanning out at most `max_pending` at a time.
#[test]
fn max_pending_holds_after_a_crash_interrupts_deliveries() {
    let site = CrashSite::new("[dispatch]\nmax_pending = 2\n[tenants.default]\n", 400);
    let data = &site.data;
    let event = |i: usize| hola_event(&format!("k{i}"), &format!("c{i}@c.us"));
    let mut server = site.start();
    for i in 0..2 {
        assert_eq!(
            post(&server.url("/webhook"), event(i).as_bytes(), None).status,
            200
        );
    }
    assert!(wait_until(SETTLE, || deliveries(data)
        .iter()
        .filter(|d| d.state == "running")
        .count()
        == 2));
    server.kill();
    let server = site.start();
    for i in 2..12 {
        assert_eq!(
            post(&server.url("/webhook"), event(i).as_bytes(), None).status,
            200
        );
    }
    // Ten new events on ten chats, each delivery 0.4 s, four at a time:
    // never more than two of them queued.
    let mut most_queued = 0;
    let settled = wait_until(Duration::from_secs(30), || {
        let rows = deliveries(data);
        most_queued = most_queued.max(rows.iter().filter(|d| d.state == "pending").count());
        rows.len() == 12 && rows.iter().all(|d| d.state == "done")
    });
    assert!(settled, "{:?}", deliveries(data));
    assert!(
        most_queued <= 2,
        "{most_queued} deliveries queued, max_pending is 2"
    );
}

/// `GET /admin/plugins`: the row of `plugin`.
fn plugin_status(s: &TestServer, token: &str, plugin: &str) -> serde_json::Value {
    let mut r = agent()
        .get(&s.url("/admin/plugins"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let v: serde_json::Value = r.body_mut().read_json().unwrap();
    v["plugins"]
        .as_array()
        .and_then(|rows| rows.iter().find(|p| p["name"] == plugin))
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_restart_loads_plugins_from_the_compile_cache() {
    let tp = test_plugins();
    let mut s = TestServer::start("[admin]\ntoken = \"t\"\n[tenants.default]");
    deploy(&tp, "probe", &s.plugins_dir(), "cached", None);
    let status = |s: &TestServer| plugin_status(s, "t", "cached");
    assert!(wait_until(SETTLE, || status(&s)["status"] == "loaded"));
    assert_eq!(status(&s)["from_cache"], false);
    s.restart();
    assert!(wait_until(SETTLE, || status(&s)["status"] == "loaded"));
    let p = status(&s);
    assert_eq!(p["from_cache"], true, "{p}");
    assert!(p["compile_ms"].as_u64().unwrap() < 50, "{p}");
}

#[test]
fn plugin_check_accepts_the_world_and_refuses_another() {
    let tp = test_plugins();
    let check = |file: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
            .args(["plugin", "check"])
            .arg(file)
            .arg("--json")
            .output()
            .unwrap();
        (
            out.status.code(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        )
    };
    let (code, ok) = check(&tp.join("probe.wasm"));
    assert_eq!(code, Some(0));
    assert_eq!(
        ok["exports"],
        serde_json::json!(["hookhost:plugin/handler@0.1.0"])
    );
    assert!(ok["imports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i == "hookhost:plugin/kv@0.1.0"));
    assert_eq!(ok["subscriptions"], serde_json::json!(["*"]));
    let wat = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/plugins/wat/wrong-world.wat");
    let (code, bad) = check(&wat);
    assert_eq!(code, Some(1));
    assert_eq!(bad["exports"], serde_json::json!(["run"]));
    let err = bad["error"].as_str().unwrap();
    assert!(
        err.contains("does not match the hookhost:plugin world")
            && err.contains("hookhost:plugin/handler"),
        "{err}"
    );
    // Cut short: not readable as a component, so no imports or exports to
    // list, and the compiler's reason past its first context.
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.wasm");
    let probe = std::fs::read(tp.join("probe.wasm")).unwrap();
    std::fs::write(&cut, &probe[..probe.len() / 2]).unwrap();
    let (code, bad) = check(&cut);
    assert_eq!(code, Some(1));
    assert!(
        bad["imports"].is_null() && bad["exports"].is_null(),
        "{bad}"
    );
    let err = bad["error"].as_str().unwrap();
    assert!(
        err.starts_with("not a valid component: failed to parse WebAssembly module: ")
            && err.contains("out of bounds"),
        "{err}"
    );
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(["plugin", "check"])
        .arg(&cut)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[1], format!("error: {err}"));
}

/// `hookhost compile-worker`, as `serve` runs it for large components:
/// the component on standard input, the cache entry written, exit 0; a
/// file that is not a component, exit 1 with the reason.
#[test]
fn the_child_compiler_fills_the_cache_or_says_why_not() {
    use std::io::Write;
    let cache = tempfile::tempdir().unwrap();
    let run = |bytes: &[u8]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
            .args(["compile-worker", "--cache-dir"])
            .arg(cache.path())
            .args(["--pooling=true", "--max-memory-mb=128", "--parallel=false"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        child.wait_with_output().unwrap()
    };
    let garbage = run(&vec![0x42; 2 << 20]);
    assert_eq!(garbage.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&garbage.stderr).starts_with("error: "),
        "{}",
        String::from_utf8_lossy(&garbage.stderr)
    );
    let logger = std::fs::read(sample_plugins().join("logger.wasm")).unwrap();
    let ok = run(&logger);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].starts_with(&hookhost::runtime::plugin::hash(&logger)));
    assert!(entries[0].ends_with(".cwasm"));
}

/// A `message_received` event `m{i}` saying "hola" in `chat`.
fn hola(i: usize, chat: &str) -> String {
    hola_event(&format!("m{i}"), chat)
}

/// At most `max_pending` deliveries are queued ahead of the plugins, but a
/// chat stuck behind a retry does not hold the others up: when nothing
/// queued can run, fan-out goes on.
#[test]
fn a_chat_waiting_on_a_retry_does_not_hold_up_other_tenants() {
    let tp = test_plugins();
    let s = TestServer::start(
        r#"
[dispatch]
max_pending = 5
backoff_base_ms = 60000
backoff_max_ms = 60000
max_attempts = 10
[tenants.stuck]
plugins = ["failing"]
[tenants.stuck.plugin.failing.settings]
fail_until_attempt = "100"
[tenants.good]
plugins = ["recorder"]
"#,
    );
    deploy(&tp, "probe", &s.plugins_dir(), "failing", None);
    deploy(&tp, "probe", &s.plugins_dir(), "recorder", None);
    s.wait_loaded(&["failing", "recorder"]);
    // Twenty events of one chat: the first fails and waits a minute for its
    // retry; the other nineteen wait behind it.
    for i in 0..20 {
        assert_eq!(
            post(
                &s.url("/webhook/stuck"),
                hola(i, "c1@c.us").as_bytes(),
                None
            )
            .status,
            200
        );
    }
    for i in 0..10 {
        assert_eq!(
            post(
                &s.url("/webhook/good"),
                hola(i, &format!("g{i}@c.us")).as_bytes(),
                None
            )
            .status,
            200
        );
    }
    let good_done = || {
        deliveries(&s.data_dir())
            .iter()
            .filter(|d| d.tenant == "good" && d.state == "done")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(20), || good_done() == 10),
        "the good tenant's events waited behind the stuck chat: {} of 10 done: {:?}",
        good_done(),
        deliveries(&s.data_dir())
            .into_iter()
            .filter(|d| d.tenant == "good" && d.state != "done")
            .collect::<Vec<_>>()
    );
    let stuck: Vec<_> = deliveries(&s.data_dir())
        .into_iter()
        .filter(|d| d.tenant == "stuck")
        .collect();
    assert!(stuck.iter().all(|d| d.state != "done"), "{stuck:?}");
}

#[test]
fn a_tenant_at_its_concurrency_cap_does_not_hold_up_another() {
    let tp = test_plugins();
    // "busy" may run one delivery at a time and each takes 200 ms: its
    // 80 events keep it at its cap for 16 s, queued before "good"'s.
    let s = TestServer::start(
        r#"
[tenants.busy]
plugins = ["slow"]
concurrency = 1
[tenants.busy.plugin.slow]
settings = { attack = "sleep", sleep_ms = "200" }
[tenants.good]
plugins = ["recorder"]
"#,
    );
    deploy(&tp, "probe", &s.plugins_dir(), "slow", None);
    deploy(&tp, "probe", &s.plugins_dir(), "recorder", None);
    s.wait_loaded(&["slow", "recorder"]);
    for i in 0..80 {
        let chat = format!("b{i}@c.us");
        let r = post(&s.url("/webhook/busy"), hola(i, &chat).as_bytes(), None);
        assert_eq!(r.status, 200);
    }
    for i in 0..5 {
        let chat = format!("g{i}@c.us");
        let r = post(&s.url("/webhook/good"), hola(i, &chat).as_bytes(), None);
        assert_eq!(r.status, 200);
    }
    let done = |tenant: &str| done_count(&s.data_dir(), |d| d.tenant == tenant);
    assert!(
        wait_until(Duration::from_secs(8), || done("good") == 5),
        "the good tenant waited behind a tenant at its cap: {} of 5 done",
        done("good")
    );
    assert!(
        done("busy") < 80,
        "busy finished first; the test proves nothing"
    );
}

/// A compile child whose parent dies is killed with it, instead of
/// compiling on (and writing a cache entry) for nobody.
#[cfg(target_os = "linux")]
#[test]
fn the_child_compiler_dies_with_its_parent() {
    let cache = tempfile::tempdir().unwrap();
    let stats = sample_plugins().join("stats.wasm");
    // A shell stands in for the server: it starts the child on the 12 MB
    // JavaScript component (seconds of compiling) and prints its pid.
    let mut parent = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "\"{}\" compile-worker --cache-dir \"{}\" --pooling=true --max-memory-mb=128 --parallel=false < \"{}\" & echo $!; wait",
            env!("CARGO_BIN_EXE_hookhost"),
            cache.path().display(),
            stats.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let child: u32 = line.trim().parse().unwrap();
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s
                    .rsplit_once(')')
                    .map(|(_, r)| r.trim_start())
                    .unwrap_or("");
                !state.starts_with('Z') && !state.starts_with('X')
            })
            .unwrap_or(false)
    };
    // The child is compiling (it has read its input and started).
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(child), "the child compiler should still be compiling");
    parent.kill().unwrap();
    parent.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !alive(child)),
        "the child compiler outlived its parent"
    );
    let entries = std::fs::read_dir(cache.path())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 0, "a dead parent's child wrote a cache entry");
}

/// Replies go out over kept-alive connections: with a tenant's deliveries
/// sending at once (4 by default), every connection goes back to the pool
/// after its send, so a busy tenant does not open (in production: a TLS
/// handshake with the gateway) a new connection for every few replies.
#[test]
fn concurrent_replies_reuse_the_gateways_connections() {
    let tp = test_plugins();
    let whapi = FakeWhapi::start();
    // Each answer takes 30 ms, so the tenant's four deliveries send at once.
    whapi
        .slow_first
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    whapi.slow_ms.store(30, std::sync::atomic::Ordering::SeqCst);
    let s = TestServer::start(&format!(
        r#"
[tenants.default]
plugins = ["replier"]
rate_limit = {{ per_second = 0, burst = 0 }}
[tenants.default.whapi]
base_url = "{}"
instance_id = "1"
token = "t"
[tenants.default.plugin.replier]
grants = ["log", "kv", "sql", "config", "messaging"]
settings = {{ reply = "ok" }}
"#,
        whapi.url
    ));
    deploy(&tp, "probe", &s.plugins_dir(), "replier", None);
    s.wait_loaded(&["replier"]);
    let n = 40;
    for i in 0..n {
        let body = hola_event(&format!("M{i}"), &format!("chat-{i}@s.whatsapp.net"));
        assert_eq!(post(&s.url("/webhook"), body.as_bytes(), None).status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(60), || whapi.sent().len() >= n),
        "{} sent; {:?}",
        whapi.sent().len(),
        deliveries(&s.data_dir()).first()
    );
    let rows = wait_settled(&s.data_dir(), n, SETTLE);
    assert!(rows.iter().all(|d| d.state == "done"), "{rows:?}");
    let connections = whapi.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections <= 6,
        "{connections} connections for {n} replies sent four at a time"
    );
}

#[test]
fn a_slow_plugin_leaves_its_tenants_other_plugins_their_share_of_slots() {
    // Two plugins share the tenant's two slots; `slow` waits 1.5 s in every
    // delivery (as one does on a slow gateway), `quick` returns at once.
    let tp = test_plugins();
    let s = TestServer::start(&fast_retries(
        r#"
[tenants.shop]
plugins = ["slow", "quick"]
concurrency = 2
[tenants.shop.plugin.slow.settings]
attack = "sleep"
sleep_ms = "1500"
"#,
    ));
    for p in ["slow", "quick"] {
        deploy(&tp, "probe", &s.plugins_dir(), p, None);
    }
    s.wait_loaded(&["slow", "quick"]);
    let url = s.url("/webhook/shop");
    for i in 0..6 {
        let body = hola(i, &format!("c{i}@c.us"));
        assert_eq!(post(&url, body.as_bytes(), None).status, 200);
    }
    let done = |plugin: &str| done_count(&s.data_dir(), |d| d.plugin == plugin);
    assert!(
        wait_until(Duration::from_secs(30), || done("quick") == 6),
        "quick delivered {} of 6",
        done("quick")
    );
    // `slow` holds one slot at most while `quick` has work: every `quick`
    // delivery ran beside `slow`'s first ones instead of waiting for them
    // (taking the slots oldest event first, `slow` held both and `quick`
    // ran about once per 0.75 s).
    let slow = done("slow");
    assert!(slow <= 2, "slow finished {slow} before quick's six");
    assert!(wait_until(SETTLE, || done("slow") == 6));
}

/// A plugin that answers at once shares the ledger's bookkeeping across a
/// backlog: a slot runs its queued deliveries one after another with one
/// commit marking them running and one recording their outcomes, instead of
/// two commits for each delivery.
#[test]
fn a_fast_plugins_backlog_runs_several_deliveries_per_ledger_commit() {
    const N: usize = 300;
    let tp = test_plugins();
    let s = TestServer::start(&fast_retries(
        r#"
[tenants.shop]
plugins = ["quick"]
concurrency = 1
[tenants.shop.plugin.quick.settings]
record = "false"
sleep_ms = "1500"
"#,
    ));
    deploy(&tp, "probe", &s.plugins_dir(), "quick", None);
    s.wait_loaded(&["quick"]);
    let url = s.url("/webhook/shop");
    // The tenant's one slot is busy for 1.5 s while the backlog arrives.
    let gate = serde_json::json!({"event_type": "message_received", "id": "gate", "chat_id": "g@c.us", "body": "please sleep"});
    assert_eq!(post(&url, gate.to_string().as_bytes(), None).status, 200);
    for i in 0..N {
        let body = hola(i, &format!("c{i}@c.us"));
        assert_eq!(post(&url, body.as_bytes(), None).status, 200);
    }
    let writes = || {
        let t = metrics_text(&s.url("/metrics"));
        t.lines()
            .find_map(|l| l.strip_prefix("hookhost_store_batch_writes_sum "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("hookhost_store_batch_writes_sum")
    };
    let before = writes();
    let done = || done_count(&s.data_dir(), |_| true);
    assert_eq!(done(), 0, "the gate ended before the backlog was in");
    assert!(
        wait_until(Duration::from_secs(60), || done() == N + 1),
        "{} of {} delivered; not done: {:?}",
        done(),
        N + 1,
        deliveries(&s.data_dir())
            .into_iter()
            .filter(|d| d.state != "done")
            .collect::<Vec<_>>()
    );
    let ledger_writes = writes() - before;
    // Two per delivery (running, then its outcome) without runs.
    assert!(
        ledger_writes < (N / 2) as f64,
        "{ledger_writes} ledger writes for {N} deliveries"
    );
    // Every delivery ran once, in its own attempt.
    let rows = deliveries(&s.data_dir());
    assert_eq!(rows.len(), N + 1);
    assert!(rows.iter().all(|d| d.attempts == 1), "{rows:?}");
}

/// The `hookhost_dispatch_slots` gauge, if shown yet.
fn dispatch_slots(s: &TestServer) -> Option<String> {
    metric(
        &metrics_text(&s.url("/metrics")),
        "hookhost_dispatch_slots ",
    )
}

/// While webhook events queue for the store, deliveries run on
/// `dispatch.busy_workers` slots, and on `workers` again once the queue
/// is short; every event is still delivered.
#[test]
fn deliveries_give_way_while_webhooks_queue_for_the_store() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let s = TestServer::start(
        "[dispatch]\nworkers = 6\nbusy_workers = 1\n[tenants.default]\nplugins = [\"recorder\"]\nrate_limit = { per_second = 0 }\n",
    );
    deploy_probe(&s, "recorder");
    assert!(wait_until(SETTLE, || dispatch_slots(&s).as_deref() == Some("6")));
    let stop = AtomicBool::new(false);
    let posted = AtomicUsize::new(0);
    let url = s.url("/webhook");
    let crowded = std::thread::scope(|scope| {
        // Forty-eight clients post back to back, each waiting for its
        // answer: far more than eight requests wait for each commit.
        for t in 0..48 {
            let (stop, posted, url) = (&stop, &posted, &url);
            scope.spawn(move || {
                let mut i = 0;
                while !stop.load(Relaxed) && i < 2000 {
                    let body = hola_event(&format!("c{t}-{i}"), &format!("{t}@c.us"));
                    assert_eq!(post(url, body.as_bytes(), None).status, 200);
                    posted.fetch_add(1, Relaxed);
                    i += 1;
                }
            });
        }
        let seen = wait_until(Duration::from_secs(30), || {
            dispatch_slots(&s).as_deref() == Some("1")
        });
        stop.store(true, Relaxed);
        seen
    });
    assert!(
        crowded,
        "the slots never went down to busy_workers under the flood"
    );
    // Quiet again: all slots, and every event delivered once.
    assert!(
        wait_until(SETTLE, || dispatch_slots(&s).as_deref() == Some("6")),
        "slots after the flood: {:?}",
        dispatch_slots(&s)
    );
    let n = posted.load(Relaxed);
    let rows = wait_settled(&s.data_dir(), n, SETTLE);
    assert_eq!(rows.len(), n);
    assert!(
        rows.iter().all(|d| d.state == "done"),
        "{:?}",
        rows.iter().find(|d| d.state != "done")
    );
}
