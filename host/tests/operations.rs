//! Operations: metrics, the admin API and CLI, dead-letter retry, replay,
//! rate limits and the plugin test runner.

mod common;
use common::whapi::FakeWhapi;
use common::*;
use hookhost::samples;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(60);
const TOKEN: &str = "admin-token-123";

fn admin(method: &str, url: &str, token: Option<&str>, body: Option<serde_json::Value>) -> Resp {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let r = match method {
        "POST" => {
            let mut req = a.post(url);
            if let Some(h) = &auth {
                req = req.header("Authorization", h);
            }
            req.send_json(body.unwrap_or(serde_json::json!({})))
                .unwrap()
        }
        _ => {
            let mut req = a.get(url);
            if let Some(h) = &auth {
                req = req.header("Authorization", h);
            }
            req.call().unwrap()
        }
    };
    let mut r = r;
    let status = r.status().as_u16();
    let body = r.body_mut().read_json().unwrap_or(serde_json::Value::Null);
    Resp {
        status,
        body,
        headers: vec![],
    }
}

#[test]
fn metrics_reflect_a_known_sequence_exactly() {
    let tp = test_plugins();
    let s = TestServer::start(
        "[tenants.default]\nsecrets = [\"k\"]\nplugins = [\"recorder\"]\n[tenants.acme]",
    );
    deploy(&tp, "probe", &s.plugins_dir(), "recorder", None);
    s.wait_loaded(&["recorder"]);
    let url = s.url("/webhook");
    for name in ["message_received", "ack_update", "test_webhook"] {
        assert_eq!(
            post_signed(&url, samples::get(name).unwrap().as_bytes(), "k").status,
            200
        );
    }
    assert_eq!(
        post_signed(&url, samples::ACK_UPDATE.as_bytes(), "k").status,
        200
    ); // duplicate
    assert_eq!(
        post(&url, samples::ACK_UPDATE.as_bytes(), Some("00")).status,
        401
    );
    assert_eq!(post_signed(&url, b"[]", "k").status, 400);
    assert_eq!(
        post_signed(&url, &vec![b' '; (1 << 20) + 1], "k").status,
        413
    );
    assert_eq!(post(&s.url("/webhook/nobody"), b"{}", None).status, 404);
    assert_eq!(
        post(
            &s.url("/webhook/acme"),
            samples::ACK_UPDATE.as_bytes(),
            None
        )
        .status,
        200
    );
    // Types the gateway may add are stored, but counted as `other`: a
    // sender cannot add series with invented names.
    for (i, t) in ["presence_update", &"x".repeat(128)].iter().enumerate() {
        let body = format!(r#"{{"event_type":"{t}","id":"U{i}","chat_id":"c"}}"#);
        assert_eq!(
            post(&s.url("/webhook/acme"), body.as_bytes(), None).status,
            200
        );
    }
    wait_settled(&s.data_dir(), 3, SETTLE);
    let m = get(&s.url("/metrics"));
    let text = m.body.as_str().unwrap();
    let rx = |labels: &str| metric(text, &format!("hookhost_events_received_total{{{labels}}}"));
    for labels in [
        "tenant=\"default\",event_type=\"message_received\",outcome=\"stored\"",
        "tenant=\"default\",event_type=\"ack_update\",outcome=\"stored\"",
        "tenant=\"default\",event_type=\"ack_update\",outcome=\"duplicate\"",
        "tenant=\"default\",event_type=\"test_webhook\",outcome=\"stored\"",
        "tenant=\"default\",event_type=\"-\",outcome=\"bad_signature\"",
        "tenant=\"default\",event_type=\"-\",outcome=\"bad_request\"",
        "tenant=\"default\",event_type=\"-\",outcome=\"too_large\"",
        "tenant=\"-\",event_type=\"-\",outcome=\"unknown_tenant\"",
        "tenant=\"acme\",event_type=\"ack_update\",outcome=\"stored\"",
    ] {
        assert_eq!(rx(labels), Some("1".into()), "{labels}");
    }
    assert_eq!(
        rx("tenant=\"acme\",event_type=\"other\",outcome=\"stored\""),
        Some("2".into())
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("hookhost_events_received_total{"))
            .count(),
        10,
        "{text}"
    );
    assert_eq!(
        metric(
            text,
            "hookhost_deliveries_total{tenant=\"default\",plugin=\"recorder\",outcome=\"done\"}"
        ),
        Some("3".into())
    );
    assert_eq!(
        metric(text, "hookhost_delivery_seconds_count{plugin=\"recorder\"}"),
        Some("3".into())
    );
    assert_eq!(
        metric(text, "hookhost_fuel_used_count{plugin=\"recorder\"}"),
        Some("3".into())
    );
    assert!(text.contains("# TYPE hookhost_instantiate_seconds histogram"));
    // Every webhook request above was timed, whatever its answer.
    for line in [
        "hookhost_webhook_seconds_count ",
        "hookhost_webhook_seconds_bucket{le=\"+Inf\"} ",
    ] {
        assert_eq!(metric(text, line), Some("11".into()), "{line}\n{text}");
    }
    // The writer's batches: each timed, and the seven events' writes
    // (a duplicate's included) among what they committed.
    let number = |line: &str| -> f64 { metric(text, line).unwrap().parse().unwrap() };
    let batches = number("hookhost_store_batch_writes_count ");
    assert!(batches >= 1.0, "{text}");
    assert_eq!(number("hookhost_store_batch_seconds_count "), batches);
    assert!(number("hookhost_store_batch_writes_sum ") >= 7.0, "{text}");
    assert!(number("hookhost_store_batch_seconds_sum ") > 0.0, "{text}");
    // Gauges are refreshed by the dispatcher every second.
    assert!(wait_until(SETTLE, || {
        let t = metrics_text(&s.url("/metrics"));
        metric(&t, "hookhost_inbox_lag ") == Some("0".into())
            && metric(&t, "hookhost_deliveries_open ") == Some("0".into())
    }));
    // The dispatcher's heartbeat: under a second old while it runs (it
    // passes at least twice a second), worked out at the scrape.
    let age: f64 = metric(
        &metrics_text(&s.url("/metrics")),
        "hookhost_dispatcher_pass_age_seconds ",
    )
    .unwrap()
    .parse()
    .unwrap();
    assert!((0.0..5.0).contains(&age), "{age}");
    // So is the store's size, as SQLite counts it.
    let c = hookhost::store::open_read_only(&s.data_dir()).unwrap();
    let pragma = |p: &str| {
        c.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let size = (pragma("page_count") * pragma("page_size")).to_string();
    assert!(size.parse::<i64>().unwrap() > 0);
    assert!(wait_until(SETTLE, || {
        let t = metrics_text(&s.url("/metrics"));
        metric(&t, "hookhost_store_bytes ") == Some(size.clone())
            && metric(&t, "hookhost_store_free_bytes ").is_some()
    }));
}

/// A webhook whose body arrives slowly is timed from its routing, not from
/// its last byte: `hookhost_webhook_seconds` shows a slow sender.
#[test]
fn a_slow_upload_counts_in_the_webhook_answer_time() {
    use std::io::{Read, Write};
    let s = TestServer::start("[tenants.default]");
    let addr = s.url("").trim_start_matches("http://").to_string();
    let body = samples::ACK_UPDATE.as_bytes();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        c,
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    c.write_all(rest).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let text = metrics_text(&s.url("/metrics"));
    let number = |line: &str| -> f64 { metric(&text, line).unwrap().parse().unwrap() };
    assert_eq!(number("hookhost_webhook_seconds_count "), 1.0, "{text}");
    let seconds = number("hookhost_webhook_seconds_sum ");
    // The timer starts once the headers are read, a little after they were
    // sent; before it covered the body it read about a millisecond.
    assert!(
        seconds >= 0.3,
        "timed {seconds} s of a 0.4 s upload\n{text}"
    );
}

#[test]
fn admin_refuses_missing_or_wrong_token_and_is_off_without_one() {
    let s = TestServer::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]"));
    for path in [
        "/admin/events",
        "/admin/dead-letters",
        "/admin/plugins",
        "/admin/deliveries",
    ] {
        let missing = admin("GET", &s.url(path), None, None);
        assert_eq!(missing.status, 401, "{path}");
        assert_eq!(
            missing.body["error"],
            "admin token required (header `Authorization: Bearer TOKEN`)"
        );
        let wrong = admin("GET", &s.url(path), Some("wrong"), None);
        assert_eq!(wrong.status, 401, "{path}");
        assert_eq!(wrong.body["error"], "wrong admin token");
        assert_eq!(
            admin("GET", &s.url(path), Some(TOKEN), None).status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        admin("POST", &s.url("/admin/events/1/replay"), None, None).status,
        401
    );
    // A state that no delivery has is a mistake to say, not an empty list.
    let r = admin(
        "GET",
        &s.url("/admin/deliveries?state=dead-letter"),
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body["error"],
        "unknown state `dead-letter`: one of pending, running, done, failed, dead, discarded"
    );
    let out = run(&["deliveries", "--state", "dead-letter"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[possible values: pending,"));
    let off = TestServer::start("[tenants.default]");
    let r = admin("GET", &off.url("/admin/events"), Some(TOKEN), None);
    assert_eq!(r.status, 404);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("admin API is off"),
        "{:?}",
        r.body
    );
    // The CLI says so too.
    let out = run(&["events", "list", "--url", &off.url(""), "--token", TOKEN]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404: the admin API is off"), "{err}");
    // A reload without the admin API is pointed at the signal, and a
    // server started without a file has nothing to reload.
    let out = run(&["reload", "--url", &off.url("")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`kill -HUP PID` reloads a server without it"),
        "{err}"
    );
    let r = admin("POST", &s.url("/admin/reload"), Some(TOKEN), None);
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("started without a configuration file"),
        "{:?}",
        r.body
    );
    assert_eq!(
        admin("POST", &s.url("/admin/reload"), None, None).status,
        401
    );
    // A path nothing serves names where webhooks go; `hookhost send` given
    // only the server's address posts to its /webhook.
    let r = post(&off.url("/"), samples::MESSAGE_RECEIVED.as_bytes(), None);
    assert_eq!(r.status, 404);
    assert!(
        r.body["error"].as_str().unwrap().contains("POST /webhook"),
        "{:?}",
        r.body
    );
    let sent = cli(&["send", "--url", &off.url("")]);
    assert!(sent.starts_with("message_received: 200"), "{sent}");
    assert_eq!(off.stored().len(), 1);
}

/// Writes `plugin`'s sidecar and waits until the server says it is in
/// force (`sidecar` in `GET /admin/plugins` is the new content's hash).
fn fix_sidecar(s: &TestServer, plugin: &str, text: &str) {
    std::fs::write(s.plugins_dir().join(format!("{plugin}.toml")), text).unwrap();
    let hash = hookhost::runtime::plugin::hash(text.as_bytes());
    let in_force = || {
        admin("GET", &s.url("/admin/plugins"), Some(TOKEN), None).body["plugins"]
            .as_array()
            .and_then(|rows| rows.iter().find(|p| p["name"] == plugin).cloned())
            .is_some_and(|p| p["sidecar"] == hash.as_str())
    };
    assert!(wait_until(SETTLE, in_force), "{plugin}.toml not applied");
}

#[test]
fn a_dead_letter_retried_after_fixing_the_plugin_succeeds() {
    let tp = test_plugins();
    let s = TestServer::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n[dispatch]\nmax_attempts = 2\nbackoff_base_ms = 10\n[tenants.default]"));
    deploy(
        &tp,
        "probe",
        &s.plugins_dir(),
        "fixme",
        Some("[settings]\nattack = \"panic\"\n"),
    );
    s.wait_loaded(&["fixme"]);
    post(
        &s.url("/webhook"),
        samples::MESSAGE_RECEIVED.as_bytes(),
        None,
    );
    let rows = wait_settled(&s.data_dir(), 1, SETTLE);
    assert_eq!(rows[0].state, "dead");
    let dead = admin("GET", &s.url("/admin/dead-letters"), Some(TOKEN), None);
    assert_eq!(dead.body["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(dead.body["more"], false);
    // The operator fixes the plugin's settings, sees them in force, then
    // retries.
    fix_sidecar(&s, "fixme", "[settings]\n");
    let r = admin(
        "POST",
        &s.url(&format!(
            "/admin/dead-letters/{}/fixme/retry",
            rows[0].event_seq
        )),
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(wait_until(SETTLE, || deliveries(&s.data_dir())[0].state == "done"));
    // Retrying something that is not a dead letter is a clear 400.
    let again = admin(
        "POST",
        &s.url(&format!(
            "/admin/dead-letters/{}/fixme/retry",
            rows[0].event_seq
        )),
        Some(TOKEN),
        None,
    );
    assert_eq!(again.status, 400);
    assert!(again.body["error"]
        .as_str()
        .unwrap()
        .contains("no dead letter"));
}

/// A plugin named in the configuration whose file does not load: its
/// deliveries end as dead letters without running. Once a good file loads,
/// the log says how many there are and the command that runs them; they
/// do not run by themselves.
#[test]
fn dead_letters_of_a_plugin_that_was_not_loaded_are_pointed_out_when_it_loads() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("late.wasm"), "not yet a plugin").unwrap();
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        "[dispatch]\nmax_attempts = 1\n[tenants.default]\nplugins = [\"late\"]\n\
         [tenants.default.plugin.late]\ngrants = [\"log\", \"kv\", \"sql\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = process::Proc::start(&cfg, &data, &plugins);
    for id in ["L1", "L2"] {
        let body = format!(r#"{{"event_type":"message_received","id":"{id}","body":"x"}}"#);
        assert_eq!(
            post(&server.url("/webhook"), body.as_bytes(), None).status,
            200
        );
    }
    let rows = wait_settled(&data, 2, SETTLE);
    assert!(
        rows.iter().all(|d| d.state == "dead"
            && d.last_error
                .as_deref()
                .unwrap_or("")
                .starts_with("instantiate: plugin is not loaded")),
        "{rows:?}"
    );
    let said = "dead letters of this plugin from while it was not loaded";
    assert_eq!(server.count_lines(said), 0);
    deploy(&test_plugins(), "probe", &plugins, "late", None);
    assert!(wait_until(SETTLE, || server.count_lines(said) == 1));
    let line = server
        .logs
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["message"].as_str().is_some_and(|m| m.contains(said)))
        .cloned()
        .unwrap();
    assert_eq!(line["dead_letters"], 2, "{line}");
    assert_eq!(line["tenant"], "default", "{line}");
    assert!(
        line["message"].as_str().unwrap().ends_with(
            "`hookhost dead-letters retry --all --tenant default --plugin late` runs them"
        ),
        "{line}"
    );
    // Left alone until the operator says so; then they run.
    assert!(deliveries(&data).iter().all(|d| d.state == "dead"));
    cli(&[
        "dead-letters",
        "retry",
        "--all",
        "--tenant",
        "default",
        "--plugin",
        "late",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(wait_until(SETTLE, || deliveries(&data)
        .iter()
        .all(|d| d.state == "done")));
}

#[test]
fn replay_to_one_plugin_does_not_touch_the_others_and_does_not_resend() {
    let tp = test_plugins();
    let whapi = FakeWhapi::start();
    let s = TestServer::start(&format!(
        r#"
[admin]
token = "{TOKEN}"
[tenants.default]
plugins = ["one", "two"]
[tenants.default.whapi]
base_url = "{}"
instance_id = "1"
token = "t"
[tenants.default.plugin.one]
grants = ["log", "kv", "sql", "config", "messaging"]
settings = {{ reply = "hola" }}
"#,
        whapi.url
    ));
    deploy(&tp, "probe", &s.plugins_dir(), "one", None);
    deploy(&tp, "probe", &s.plugins_dir(), "two", None);
    s.wait_loaded(&["one", "two"]);
    post(
        &s.url("/webhook"),
        samples::MESSAGE_RECEIVED.as_bytes(),
        None,
    );
    let before = wait_settled(&s.data_dir(), 2, SETTLE);
    assert_eq!(whapi.sent().len(), 1);
    let two_before = before.iter().find(|d| d.plugin == "two").unwrap().clone();

    let r = admin(
        "POST",
        &s.url("/admin/events/1/replay"),
        Some(TOKEN),
        Some(serde_json::json!({"plugin": "one"})),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["plugins"], serde_json::json!(["one"]));
    let ok = wait_until(Duration::from_secs(10), || {
        plugin_sql(&s.data_dir(), "default", "one", "SELECT count(*) FROM seen")
            == vec![vec!["2".to_string()]]
    });
    assert!(
        ok,
        "{:?} {:?}",
        deliveries(&s.data_dir()),
        plugin_sql(&s.data_dir(), "default", "one", "SELECT * FROM seen")
    );
    wait_settled(&s.data_dir(), 2, SETTLE);
    assert_eq!(
        plugin_sql(&s.data_dir(), "default", "two", "SELECT count(*) FROM seen"),
        vec![vec!["1".to_string()]]
    );
    let two_after = deliveries(&s.data_dir())
        .into_iter()
        .find(|d| d.plugin == "two")
        .unwrap();
    assert_eq!(
        (two_after.updated_at, two_after.attempts),
        (two_before.updated_at, two_before.attempts)
    );
    // The replay went through the messaging idempotency: nothing resent.
    assert_eq!(whapi.sent().len(), 1);

    // With resend, the CLI against the running server sends again.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args([
            "replay",
            "1",
            "--plugin",
            "one",
            "--resend",
            "--url",
            &s.url(""),
            "--token",
            TOKEN,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "queued: event 1 → one (resend)"
    );
    let ok = wait_until(Duration::from_secs(10), || whapi.sent().len() == 2);
    assert!(
        ok,
        "{:?} {:?} {:?}",
        deliveries(&s.data_dir()),
        plugin_sql(
            &s.data_dir(),
            "default",
            "one",
            "SELECT key, attempt FROM seen"
        ),
        whapi.sent().len()
    );
    // Unknown plugins and events are clear errors.
    let r = admin(
        "POST",
        &s.url("/admin/events/1/replay"),
        Some(TOKEN),
        Some(serde_json::json!({"plugin": "nope"})),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        admin("POST", &s.url("/admin/events/99/replay"), Some(TOKEN), None).status,
        404
    );
}

#[test]
fn rate_limit_answers_429_and_recovers() {
    let s = TestServer::start(
        "[tenants.default]\nrate_limit = { per_second = 5, burst = 5 }\n[tenants.other]",
    );
    let mut statuses = vec![];
    let mut retry_after = None;
    for i in 0..12 {
        let body = serde_json::json!({"event_type":"ack_update","id":format!("r{i}"),"ack":"read"});
        let r = post(&s.url("/webhook"), body.to_string().as_bytes(), None);
        if r.status == 429 {
            retry_after = r
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                .map(|(_, v)| v.clone());
            assert!(r.body["error"].as_str().unwrap().contains("rate"));
        }
        statuses.push(r.status);
    }
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 5);
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Another tenant is not affected.
    assert_eq!(
        post(
            &s.url("/webhook/other"),
            samples::ACK_UPDATE.as_bytes(),
            None
        )
        .status,
        200
    );
    std::thread::sleep(Duration::from_millis(1100));
    let r = post(
        &s.url("/webhook"),
        br#"{"event_type":"ack_update","id":"late","ack":"read"}"#,
        None,
    );
    assert_eq!(r.status, 200);
    // Refused events were not stored.
    let stored = s.stored().iter().filter(|(t, _, _)| t == "default").count();
    assert_eq!(stored, statuses.iter().filter(|s| **s == 200).count() + 1);
}

fn plugin_test(file: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(["plugin", "test"])
        .arg(file)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn plugin_test_runs_a_conversation_with_state_kept_between_runs() {
    let sp = sample_plugins();
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("s.toml");
    std::fs::write(
        &settings,
        "greeting = \"Hola!\"\nrules = [{ keywords = [\"precio\"], reply = \"10 USD\" }]\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let sends = |extra: &[&str]| -> Vec<String> {
        let r = plugin_test(
            &sp.join("auto-reply.wasm"),
            &[&["--settings", settings.to_str().unwrap()], extra].concat(),
        );
        assert_eq!(r["ok"], true, "{r}");
        r["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "send")
            .map(|a| a["text"].as_str().unwrap().to_string())
            .collect()
    };
    let with_state = ["--state", state.to_str().unwrap()];
    // The chat's first message is greeted; the next one, another message of
    // the same chat (--id), is not, and --body makes it ask for the price.
    assert_eq!(
        sends(&[&with_state[..], &["--id", "A1"]].concat()),
        ["Hola!"]
    );
    assert!(sends(&[&with_state[..], &["--id", "A2"]].concat()).is_empty());
    assert_eq!(
        sends(&[&with_state[..], &["--id", "A3", "--body", "¿el precio?"]].concat()),
        ["10 USD"]
    );
    // Without --state every run starts empty.
    assert_eq!(sends(&["--id", "A4"]), ["Hola!"]);
    assert_eq!(sends(&["--id", "A5"]), ["Hola!"]);
    // The plugin's SQL database is kept there too.
    for id in ["P1", "P2"] {
        let r = plugin_test(
            &sp.join("persistence.wasm"),
            &["--id", id, "--state", state.to_str().unwrap()],
        );
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["event_key"], format!("message_received:[\"{id}\"]"));
    }
    let c = rusqlite::Connection::open(state.join("plugin.sqlite")).unwrap();
    let ids: Vec<String> = c
        .prepare("SELECT id FROM messages ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids, ["P1", "P2"]);
}

#[test]
fn plugin_test_reports_what_the_sample_plugins_do() {
    let sp = sample_plugins();
    let logger = plugin_test(&sp.join("logger.wasm"), &["--event", "ack_update"]);
    assert_eq!(logger["ok"], true);
    assert_eq!(logger["actions"][0]["kind"], "log");
    assert_eq!(
        logger["actions"][0]["message"],
        "✅ ACK: WXYZ5678 -> delivered"
    );
    assert!(logger["fuel_used"].as_u64().unwrap() > 0);
    assert_eq!(logger["server_would_refuse"], serde_json::json!([]));

    let persistence = plugin_test(
        &sp.join("persistence.wasm"),
        &["--event", "message_received"],
    );
    assert_eq!(persistence["ok"], true);
    let sql: Vec<&str> = persistence["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "sql")
        .map(|a| a["statement"].as_str().unwrap())
        .collect();
    assert!(sql
        .iter()
        .any(|s| s.contains("CREATE TABLE IF NOT EXISTS messages")));
    assert!(sql.iter().any(|s| s.contains("INSERT INTO messages")));

    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("s.toml");
    std::fs::write(
        &settings,
        "greeting = \"Hola!\"\nrules = [{ keywords = [\"menu\"], reply = \"Menú\" }]\n",
    )
    .unwrap();
    let mut ev = serde_json::from_str::<serde_json::Value>(samples::MESSAGE_RECEIVED).unwrap();
    ev["body"] = "quiero el MENU".into();
    let ev_file = dir.path().join("ev.json");
    std::fs::write(&ev_file, ev.to_string()).unwrap();
    let ar = plugin_test(
        &sp.join("auto-reply.wasm"),
        &[
            "--file",
            ev_file.to_str().unwrap(),
            "--settings",
            settings.to_str().unwrap(),
        ],
    );
    assert_eq!(ar["ok"], true, "{ar}");
    let sends: Vec<(&str, &str)> = ar["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "send")
        .map(|a| (a["to"].as_str().unwrap(), a["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        sends,
        vec![
            ("573001112233@c.us", "Hola!"),
            ("573001112233@c.us", "Menú")
        ]
    );
    // Run with every grant, it is told what a server would refuse it.
    assert_eq!(ar["server_would_refuse"], serde_json::json!(["messaging"]));
    let text = cli(&[
        "plugin",
        "test",
        sp.join("auto-reply.wasm").to_str().unwrap(),
        "--file",
        ev_file.to_str().unwrap(),
        "--settings",
        settings.to_str().unwrap(),
    ]);
    assert!(
        text.contains("would refuse `messaging`: add it to the sidecar's `grants`"),
        "{text}"
    );
    // Reading settings counts too: a sidecar that grants sends but not
    // `config` leaves the plugin on its defaults in a server.
    let noconfig = dir.path().join("noconfig");
    std::fs::create_dir(&noconfig).unwrap();
    std::fs::copy(sp.join("auto-reply.wasm"), noconfig.join("auto-reply.wasm")).unwrap();
    std::fs::write(
        noconfig.join("auto-reply.toml"),
        "grants = [\"log\", \"kv\", \"messaging\"]\n",
    )
    .unwrap();
    let r = plugin_test(
        &noconfig.join("auto-reply.wasm"),
        &["--settings", settings.to_str().unwrap()],
    );
    assert_eq!(
        r["server_would_refuse"],
        serde_json::json!(["config"]),
        "{r}"
    );
    assert!(
        r["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "config"),
        "{r}"
    );
    // As the server would run it for a tenant: the configuration's limits,
    // the tenant's grants and settings over the sidecar's.
    let config = dir.path().join("hookhost.toml");
    std::fs::write(
        &config,
        r#"
[limits]
fuel = 5_000_000
[tenants.acme.plugin.auto-reply]
grants = ["log", "kv", "config"]
limits = { timeout_ms = 700 }
settings = { greeting = "Hi from acme" }
[tenants.default.plugin.auto-reply]
grants = ["log", "kv", "config", "messaging"]
"#,
    )
    .unwrap();
    let copy = dir.path().join("auto-reply.wasm");
    std::fs::copy(sp.join("auto-reply.wasm"), &copy).unwrap();
    std::fs::write(
        dir.path().join("auto-reply.toml"),
        "[settings]\ngreeting = \"From the sidecar\"\nquote = false\n",
    )
    .unwrap();
    let as_tenant = |tenant: &str| {
        plugin_test(
            &copy,
            &["--config", config.to_str().unwrap(), "--tenant", tenant],
        )
    };
    let acme = as_tenant("acme");
    assert_eq!(acme["grants"], serde_json::json!(["log", "kv", "config"]));
    assert!(acme["server_would_refuse"].is_null(), "{acme}");
    assert_eq!(
        acme["limits"],
        serde_json::json!({ "fuel": 5_000_000, "memory_mb": 64, "timeout_ms": 700 })
    );
    // The reply is refused: messaging is not granted to acme.
    assert_eq!(acme["ok"], false, "{acme}");
    assert!(
        acme["result"].as_str().unwrap().contains("access denied"),
        "{acme}"
    );
    let kinds: Vec<&str> = acme["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"denied") && !kinds.contains(&"send"),
        "{acme}"
    );
    let denied = acme["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "denied");
    assert_eq!(denied.unwrap()["capability"], "messaging");
    let default = as_tenant("default");
    assert_eq!(default["ok"], true, "{default}");
    let send = default["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "send");
    let send = send.unwrap_or_else(|| panic!("{default}"));
    assert_eq!(send["text"], "From the sidecar");
    assert!(
        send["quoted_message_id"].is_null(),
        "the sidecar's quote = false: {default}"
    );
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(["plugin", "test"])
        .arg(&copy)
        .args(["--config", config.to_str().unwrap(), "--tenant", "nobody"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("no tenant `nobody` (it has: acme, default)"),
        "{missing:?}"
    );
    // An event the plugin does not subscribe to is skipped, not failed.
    let skipped = plugin_test(&sp.join("auto-reply.wasm"), &["--event", "ack_update"]);
    assert_eq!(
        (
            skipped["ok"].clone(),
            skipped["result"].as_str().unwrap().starts_with("skipped")
        ),
        (serde_json::json!(true), true)
    );
}

/// After an outage (a plugin's bad settings, the gateway down) the
/// operator retries every dead letter of a plugin at once, or gives a
/// plugin's up, through the server or on the data directory.
#[test]
fn dead_letters_are_retried_and_discarded_in_bulk() {
    let tp = test_plugins();
    let s = TestServer::start(&format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[dispatch]\nmax_attempts = 1\n\
         [tenants.a]\nplugins = [\"fixme\", \"other\"]\n[tenants.b]\nplugins = [\"fixme\", \"other\"]"
    ));
    for name in ["fixme", "other"] {
        deploy(
            &tp,
            "probe",
            &s.plugins_dir(),
            name,
            Some("[settings]\nattack = \"panic\"\n"),
        );
    }
    s.wait_loaded(&["fixme", "other"]);
    for (tenant, id) in [("a", "A1"), ("a", "A2"), ("b", "B1")] {
        let r = post(
            &s.url(&format!("/webhook/{tenant}")),
            hola_event(id, id).as_bytes(),
            None,
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let rows = wait_settled(&s.data_dir(), 6, SETTLE);
    assert!(rows.iter().all(|d| d.state == "dead"), "{rows:?}");
    // Counted for the operator's alert, per tenant and plugin.
    let dead_gauge = |tenant: &str, plugin: &str| {
        metric(
            &metrics_text(&s.url("/metrics")),
            &format!("hookhost_dead_letters{{tenant=\"{tenant}\",plugin=\"{plugin}\"}} "),
        )
    };
    assert!(wait_until(SETTLE, || {
        dead_gauge("a", "fixme") == Some("2".into())
            && dead_gauge("a", "other") == Some("2".into())
            && dead_gauge("b", "fixme") == Some("1".into())
            && dead_gauge("b", "other") == Some("1".into())
    }));
    let state = |tenant: &str, plugin: &str| -> Vec<String> {
        deliveries(&s.data_dir())
            .into_iter()
            .filter(|d| d.tenant == tenant && d.plugin == plugin)
            .map(|d| d.state)
            .collect()
    };
    // Listed by tenant and plugin, on the data directory and through the
    // server, before deciding (the options before or after the action).
    let data = s.data_dir();
    let data = data.to_str().unwrap();
    let url = s.url("");
    let remote = ["--url", &url, "--token", TOKEN];
    let local = json_lines(&cli(&[
        "dead-letters",
        "list",
        "--tenant",
        "a",
        "--plugin",
        "fixme",
        "--json",
        "--data-dir",
        data,
    ]));
    assert_eq!(local.len(), 2, "{local:?}");
    assert!(local
        .iter()
        .all(|d| d["tenant"] == "a" && d["plugin"] == "fixme"));
    let b = json_lines(&cli(&[
        &["deliveries"],
        &remote[..],
        &["--json", "--tenant", "b"],
    ]
    .concat()));
    assert_eq!(b.len(), 2, "{b:?}");
    assert!(b.iter().all(|d| d["tenant"] == "b"));
    let other = admin(
        "GET",
        &s.url("/admin/dead-letters?plugin=other"),
        Some(TOKEN),
        None,
    );
    assert_eq!(other.body["dead_letters"].as_array().unwrap().len(), 3);
    let misspelt = admin(
        "GET",
        &s.url("/admin/dead-letters?plugn=other"),
        Some(TOKEN),
        None,
    );
    assert_eq!(misspelt.status, 400, "{:?}", misspelt.body);
    // `fixme` is fixed; its dead letters for tenant `a` go back, through
    // the server.
    fix_sidecar(&s, "fixme", "[settings]\n");
    let out = cli(&[
        &["dead-letters"],
        &remote[..],
        &["retry", "--all", "--tenant", "a", "--plugin", "fixme"],
    ]
    .concat());
    assert_eq!(out.trim(), "retried 2 dead letters (queued again)");
    assert!(
        wait_until(SETTLE, || state("a", "fixme") == ["done", "done"]),
        "{:?}",
        deliveries(&s.data_dir())
    );
    assert_eq!(state("b", "fixme"), ["dead"]);
    // `other` is given up for every tenant, on the data directory.
    let out = cli(&[
        "dead-letters",
        "--data-dir",
        data,
        "discard",
        "--all",
        "--plugin",
        "other",
    ]);
    assert_eq!(out.trim(), "discarded 3 dead letters");
    assert_eq!(state("a", "other"), ["discarded", "discarded"]);
    assert_eq!(state("b", "other"), ["discarded"]);
    // A misspelt filter is refused, not read as "all of them".
    let typo = admin(
        "POST",
        &s.url("/admin/dead-letters/retry"),
        Some(TOKEN),
        Some(serde_json::json!({ "plugins": "fixme" })),
    );
    assert_eq!(typo.status, 422, "{:?}", typo.body);
    assert_eq!(state("b", "fixme"), ["dead"]);
    // The admin API with no filter: what is left (`b`'s fixme).
    let r = admin(
        "POST",
        &s.url("/admin/dead-letters/retry"),
        Some(TOKEN),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["retried"], 1);
    assert!(wait_until(SETTLE, || state("b", "fixme") == ["done"]));
    let none = cli(&[&["dead-letters"], &remote[..], &["retry", "--all"]].concat());
    assert_eq!(none.trim(), "retried 0 dead letters (queued again)");
    // None left: the gauge's series are gone, and the alert resolves.
    assert!(wait_until(SETTLE, || !metrics_text(&s.url("/metrics"))
        .contains("hookhost_dead_letters{")));
    // Neither one dead letter nor --all: a clear refusal.
    for args in [
        &["retry"][..],
        &["retry", "1"],
        &["discard", "--tenant", "a"],
        &["retry", "1", "fixme", "--all"],
    ] {
        let out = run(&[&["dead-letters", "--data-dir", data], args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

/// Runs `hookhost ARGS`, whatever its outcome.
fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `hookhost ARGS`, which must succeed; its standard output.
fn cli(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One JSON value per line (the CLI's `--json` output).
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn cli_reads_the_data_directory_and_the_running_server() {
    let s = TestServer::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]"));
    post(
        &s.url("/webhook"),
        samples::MESSAGE_RECEIVED.as_bytes(),
        None,
    );
    post(&s.url("/webhook"), samples::ACK_UPDATE.as_bytes(), None);
    let data = s.data_dir();
    let local = cli(&[
        "events",
        "list",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let remote = cli(&[
        "events",
        "list",
        "--json",
        "--url",
        &s.url(""),
        "--token",
        TOKEN,
    ]);
    let (l, r) = (json_lines(&local), json_lines(&remote));
    assert_eq!(l.len(), 2);
    assert_eq!(l, r);
    assert_eq!(l[0]["tenant"], "default");
    assert_eq!(l[0]["key"], r#"message_received:["ABCD1234"]"#);
    assert_eq!(l[1]["event_type"], "ack_update");
    assert!(l[0]["received_at"].as_i64().unwrap() > 0);
    let shown = cli(&["events", "show", "1", "--data-dir", data.to_str().unwrap()]);
    assert!(shown.contains("\"sender_name\": \"Juan Pérez\""), "{shown}");
    // Paging and the newest N, the same both ways.
    let url = s.url("");
    for place in [
        vec!["--data-dir", data.to_str().unwrap()],
        vec!["--url", &url, "--token", TOKEN],
    ] {
        let list = |args: &[&str]| {
            json_lines(&cli(&[&["events", "list", "--json"], args, &place].concat()))
        };
        assert_eq!(list(&["--last", "1"]), vec![l[1].clone()]);
        assert_eq!(list(&["--last", "5"]), l);
        assert_eq!(list(&["--after", "1"]), vec![l[1].clone()]);
        assert_eq!(list(&["--limit", "1"]), vec![l[0].clone()]);
        assert!(list(&["--after", "2"]).is_empty());
        // An event that is not there is named, both ways.
        for cmd in [&["events", "show", "99"][..], &["replay", "99"]] {
            let out = run(&[cmd, &place[..]].concat());
            assert!(!out.status.success(), "{cmd:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("no event 99"), "{cmd:?} {place:?}: {err}");
        }
    }
    // The table for people: a header, times in UTC.
    let table = cli(&["events", "list", "--data-dir", data.to_str().unwrap()]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0]
            .split_whitespace()
            .eq(["SEQ", "RECEIVED", "TENANT", "TYPE", "KEY"]),
        "{table}"
    );
    let received = lines[1].split_whitespace().nth(1).unwrap();
    assert!(
        received.starts_with("20") && received.ends_with('Z') && received.len() == 24,
        "{table}"
    );
    let empty = TestServer::start("[tenants.default]");
    assert!(wait_until(SETTLE, || get(&empty.url("/readyz")).status == 200));
    let none = cli(&[
        "events",
        "list",
        "--data-dir",
        empty.data_dir().to_str().unwrap(),
    ]);
    assert_eq!(none.trim(), "no events");
}

/// `hookhost events list --follow --json ARGS`, its standard error piped;
/// the sequence numbers it prints arrive on the receiver.
fn follow_events(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<i64>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(["events", "list", "--follow", "--json"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if tx.send(v["seq"].as_i64().unwrap()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// `events list --follow` through a server that restarts: it says so
/// once, waits, and goes on from where it was.
#[test]
fn events_follow_waits_for_a_restarting_server() {
    use std::io::Read;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        dir.path(),
        &format!("[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]"),
    );
    // A fixed port, so that the server is found again after its restart.
    cfg.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TestServer::start_in(dir, cfg);
    let ack = |s: &TestServer, id: &str| {
        let body = format!(r#"{{"event_type":"ack_update","id":"{id}","ack":"read"}}"#);
        assert_eq!(post(&s.url("/webhook"), body.as_bytes(), None).status, 200);
    };
    ack(&s, "r1");
    let (mut child, rx) = follow_events(&["--url", &s.url(""), "--token", TOKEN]);
    assert_eq!(rx.recv_timeout(SETTLE).ok(), Some(1));
    s.stop();
    std::thread::sleep(Duration::from_millis(1500));
    s.start_again();
    ack(&s, "r2");
    let next = rx.recv_timeout(SETTLE).ok();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(next, Some(2));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].ends_with("; trying again every second"), "{err}");
    assert_eq!(lines[1], "reached again; following on after event 1");
}

/// The admin API answers events in pages of at most 10 000; `events list
/// --url` asks on until it has what `--limit` said, as it does offline.
#[test]
fn events_list_through_a_server_pages_past_the_servers_maximum() {
    let s = server_with_events(10_050);
    let url = s.url("");
    let count = |extra: &[&str]| -> Vec<i64> {
        let mut args = vec!["events", "list", "--json", "--url", &url, "--token", TOKEN];
        args.extend_from_slice(extra);
        json_lines(&cli(&args))
            .iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect()
    };
    let all = count(&["--limit", "20000"]);
    assert_eq!(all.len(), 10_050);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    assert_eq!(count(&["--limit", "10020"]).len(), 10_020);
    assert_eq!(
        count(&["--after", "10040"]),
        (10_041..=10_050).collect::<Vec<_>>()
    );
    // The newest N, past a page too: the last 10 020, oldest first.
    assert_eq!(
        count(&["--last", "10020"]),
        (31..=10_050).collect::<Vec<_>>()
    );
    assert_eq!(count(&["--last", "20000"]), all);
}

/// A listing cut short by `--limit` (or `--last`) says so, on standard
/// error, with the `--after` (`--before`) that shows the rest; an event's
/// deliveries are never split between two pages. The same offline and
/// through a server.
#[test]
fn a_listing_cut_short_says_how_to_see_the_rest() {
    let s = server_with_events(5);
    // Two deliveries for each of the five events, written straight in.
    {
        let c = hookhost::store::open_for_update(&s.data_dir()).unwrap();
        for seq in 1..=5 {
            for plugin in ["a", "b"] {
                c.execute(
                    "INSERT INTO deliveries (event_seq, plugin, tenant, ordering_key, state, next_at, updated_at)
                     VALUES (?1, ?2, 'default', '', 'done', 0, 0)",
                    rusqlite::params![seq, plugin],
                )
                .unwrap();
            }
        }
    }
    let data = s.data_dir();
    let url = s.url("");
    for place in [
        vec!["--data-dir", data.to_str().unwrap()],
        vec!["--url", &url, "--token", TOKEN],
    ] {
        let list = |args: &[&str]| {
            let out = run(&[args, &place].concat());
            assert!(out.status.success(), "{args:?}");
            let shown: Vec<(i64, String)> = json_lines(&String::from_utf8_lossy(&out.stdout))
                .iter()
                .map(|r| {
                    let seq = r.get("event_seq").unwrap_or(&r["seq"]);
                    (
                        seq.as_i64().unwrap(),
                        r["plugin"].as_str().unwrap_or("").into(),
                    )
                })
                .collect();
            (
                shown,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            )
        };
        let d = |seq: i64, p: &str| (seq, p.to_string());
        // Three asked for; the third is event 2's first delivery, so event
        // 2 is left for the next page whole.
        let (rows, said) = list(&["deliveries", "--json", "--limit", "3"]);
        assert_eq!(rows, vec![d(1, "a"), d(1, "b")]);
        assert_eq!(said, "(2 shown; more with --after 1)");
        let (rows, said) = list(&["deliveries", "--json", "--limit", "4", "--after", "1"]);
        assert_eq!(rows, vec![d(2, "a"), d(2, "b"), d(3, "a"), d(3, "b")]);
        assert_eq!(said, "(4 shown; more with --after 3)");
        let (rows, said) = list(&["deliveries", "--json", "--after", "3"]);
        assert_eq!(rows, vec![d(4, "a"), d(4, "b"), d(5, "a"), d(5, "b")]);
        assert_eq!(said, "", "all shown: nothing said");
        // Exactly as many as asked for: nothing more to say.
        let (rows, said) = list(&["deliveries", "--json", "--limit", "10"]);
        assert_eq!(rows.len(), 10);
        assert_eq!(said, "");
        // Events the same way.
        let (rows, said) = list(&["events", "list", "--json", "--limit", "2"]);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(said, "(2 shown; more with --after 2)");
        let (rows, said) = list(&["events", "list", "--json", "--after", "2", "--limit", "3"]);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(said, "");
        // The newest, paging back: event 4's deliveries are left whole
        // for the page before.
        let (rows, said) = list(&["deliveries", "--json", "--last", "3"]);
        assert_eq!(rows, vec![d(5, "a"), d(5, "b")]);
        assert_eq!(said, "(2 shown; older with --last 3 --before 5)");
        let (rows, said) = list(&["deliveries", "--json", "--last", "4", "--before", "5"]);
        assert_eq!(rows, vec![d(3, "a"), d(3, "b"), d(4, "a"), d(4, "b")]);
        assert_eq!(said, "(4 shown; older with --last 4 --before 3)");
        let (rows, said) = list(&["deliveries", "--json", "--last", "10"]);
        assert_eq!((rows.len(), said.as_str()), (10, ""));
        let (rows, said) = list(&["events", "list", "--json", "--last", "2"]);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(said, "(2 shown; older with --last 2 --before 4)");
        let (rows, said) = list(&["events", "list", "--json", "--last", "3", "--before", "4"]);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(said, "");
    }
}

/// More than 10 000 dead letters (a plugin broken for a busy day): the
/// listing says there are more, and how to page through them.
#[test]
fn a_long_list_of_dead_letters_says_there_are_more() {
    let s = server_with_events(10_001);
    {
        let mut c = hookhost::store::open_for_update(&s.data_dir()).unwrap();
        let tx = c.transaction().unwrap();
        tx.execute(
            "INSERT INTO deliveries (event_seq, plugin, tenant, ordering_key, state, next_at, updated_at)
             SELECT seq, 'broken', 'default', '', 'dead', 0, 0 FROM events",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let dead = admin("GET", &s.url("/admin/dead-letters"), Some(TOKEN), None);
    let rows = dead.body["dead_letters"].as_array().unwrap();
    assert_eq!(rows.len(), 10_000);
    assert_eq!(rows[9_999]["event_seq"], 10_000);
    assert_eq!(dead.body["more"], true);
    let out = run(&["dead-letters", "--url", &s.url(""), "--token", TOKEN]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "(10000 shown; more with hookhost deliveries --state dead --after 10000)"
    );
    let rest = cli(&[
        "deliveries",
        "--state",
        "dead",
        "--after",
        "10000",
        "--json",
        "--url",
        &s.url(""),
        "--token",
        TOKEN,
    ]);
    let rest = json_lines(&rest);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["event_seq"], 10_001);
}

/// A page larger than the server answers (100 000 rows, some 30 MB of
/// JSON) is read whole, cut there, and says so, with where the next one
/// starts.
#[test]
fn a_page_larger_than_the_server_answers_says_there_are_more() {
    let s = server_with_events(50_001);
    {
        let c = hookhost::store::open_for_update(&s.data_dir()).unwrap();
        c.execute(
            "INSERT INTO deliveries (event_seq, plugin, tenant, ordering_key, state, next_at, updated_at)
             SELECT seq, p.name, 'default', '', 'done', 0, 0
             FROM events, (SELECT 'a' AS name UNION ALL SELECT 'b') AS p",
            [],
        )
        .unwrap();
    }
    let out = run(&[
        "deliveries",
        "--json",
        "--limit",
        "200000",
        "--url",
        &s.url(""),
        "--token",
        TOKEN,
    ]);
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(out.status.success(), "{said}");
    let rows = json_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(rows.len(), 100_000, "{said}");
    assert_eq!(rows[99_999]["event_seq"], 50_000);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "(100000 shown; more with --after 50000)"
    );
}

/// A server with an admin token whose store holds `n` events: one through
/// the webhook (the store is made at the first write), the rest written
/// straight into it.
fn server_with_events(n: usize) -> TestServer {
    let s = TestServer::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]"));
    let first = br#"{"event_type":"ack_update","id":"p0","ack":"read"}"#;
    assert_eq!(post(&s.url("/webhook"), first, None).status, 200);
    insert_events(&s.data_dir(), n - 1);
    s
}

/// Writes `n` small events of the default tenant straight into the store
/// of `data_dir` (made by a first event through the webhook), in one
/// transaction: many more than posting them would allow in a test.
fn insert_events(data_dir: &std::path::Path, n: usize) {
    let mut c = hookhost::store::open_for_update(data_dir).unwrap();
    let tx = c.transaction().unwrap();
    for i in 1..=n {
        tx.execute(
            "INSERT INTO events (tenant, key, event_type, ordering_key, body, received_at)
             VALUES ('default', ?1, 'test_webhook', '', X'7b7d', 0)",
            [format!("bulk:{i}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// `hookhost events list | head -1`: once the reader has gone, the command
/// ends quietly (status 0, nothing on standard error) instead of panicking
/// over the broken pipe, and a standard output that cannot be written for
/// another reason is a one-line error.
#[test]
fn a_command_whose_reader_has_gone_ends_quietly() {
    use std::io::BufRead;
    // Well over a pipe's 64 KiB of table: the command is still writing when
    // the reader goes, whenever that is.
    let s = server_with_events(3_001);
    let data = s.data_dir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(["events", "list", "--limit", "5000", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("SEQ"), "{first}");
    // The reader is dropped here, as `head` exits.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    // A full disk is said, not panicked over.
    let full = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(["events", "list", "--data-dir"])
        .arg(&data)
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: cannot write to standard output") && !err.contains("panicked"),
        "{err}"
    );
}

/// `hookhost events list --follow`: the events asked for, then each new
/// one as it is stored, through the server and from the data directory.
#[test]
fn events_follow_prints_new_events_as_they_arrive() {
    let s = TestServer::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]"));
    let ack = |i: usize| {
        let body = format!(r#"{{"event_type":"ack_update","id":"f{i}","ack":"read"}}"#);
        assert_eq!(post(&s.url("/webhook"), body.as_bytes(), None).status, 200);
    };
    ack(1);
    ack(2);
    let url = s.url("");
    let data = s.data_dir();
    let data = data.to_str().unwrap();
    for remote in [true, false] {
        // Either way, the newest event first.
        let newest = s.stored().len() as i64;
        let after = (newest - 1).to_string();
        let args = if remote {
            vec!["--last", "1", "--url", &url, "--token", TOKEN]
        } else {
            vec!["--after", &after, "--data-dir", data]
        };
        let (mut child, rx) = follow_events(&args);
        let next = || rx.recv_timeout(SETTLE).ok();
        let first = next();
        let before = s.stored().len();
        ack(before + 1);
        ack(before + 2);
        let seen = [first, next(), next()];
        let _ = child.kill();
        let _ = child.wait();
        let n = before as i64;
        assert_eq!(seen, [Some(newest), Some(n + 1), Some(n + 2)], "{args:?}");
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "{args:?}"
        );
    }
}

#[test]
fn cli_plugins_lists_the_folder_and_the_running_servers_view() {
    let s = TestServer::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]"));
    let tp = test_plugins();
    deploy(
        &tp,
        "probe",
        &s.plugins_dir(),
        "good",
        Some("[settings]\nx = \"1\"\n"),
    );
    deploy(&tp, "probe", &s.plugins_dir(), "bad", Some("[settings\n"));
    s.wait_loaded(&["good", "bad"]);
    let rows = |args: &[&str]| json_lines(&cli(&[&["plugins", "--json"], args].concat()));
    let dir = s.plugins_dir();
    let remote = rows(&["--url", &s.url(""), "--token", TOKEN]);
    // In text, a server's view says whom each plugin runs for.
    let text = cli(&["plugins", "--url", &s.url(""), "--token", TOKEN]);
    let good = text.lines().find(|l| l.starts_with("good ")).unwrap();
    assert!(good.contains("  for default"), "{text}");
    // Offline, files that cannot be plugins are told apart without a
    // compile. (Written after the server's listing: it refuses them.)
    let folder = tempfile::tempdir().unwrap();
    for name in ["bad", "good"] {
        for ext in ["wasm", "toml"] {
            let f = format!("{name}.{ext}");
            std::fs::copy(dir.join(&f), folder.path().join(&f)).unwrap();
        }
    }
    let core = wat::parse_str("(module)").unwrap();
    std::fs::write(folder.path().join("core.wasm"), core).unwrap();
    std::fs::write(folder.path().join("text.wasm"), "not wasm").unwrap();
    let wat = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/plugins/wat");
    let wrong = wat::parse_file(wat.join("wrong-world.wat")).unwrap();
    std::fs::write(folder.path().join("wrong-world.wasm"), wrong).unwrap();
    // Valid components whose names do not fit: an import no host provides,
    // and the handler of an interface version this host does not speak.
    let handler = |version: &str, import: &str| {
        wat::parse_str(format!(
            r#"(component {import}
                 (instance $h)
                 (export "hookhost:plugin/handler@{version}" (instance $h)))"#
        ))
        .unwrap()
    };
    let foreign = handler("0.1.0", r#"(import "acme:thing/clock@1.0.0" (instance))"#);
    std::fs::write(folder.path().join("foreign.wasm"), foreign).unwrap();
    let newer = handler("0.2.0", "");
    std::fs::write(folder.path().join("newer.wasm"), newer).unwrap();
    let mut cut = std::fs::read(dir.join("good.wasm")).unwrap();
    cut.truncate(cut.len() / 2);
    std::fs::write(folder.path().join("cut.wasm"), cut).unwrap();
    let all = rows(&["--plugins-dir", folder.path().to_str().unwrap()]);
    let problem = |name: &str| {
        all.iter().find(|r| r["name"] == name).unwrap()["component_error"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(problem("good"), None, "{all:?}");
    assert_eq!(problem("bad"), None, "{all:?}");
    assert!(
        problem("core").unwrap().contains("not a component"),
        "{all:?}"
    );
    assert!(
        problem("text").unwrap().contains("not a WebAssembly file"),
        "{all:?}"
    );
    assert!(
        problem("cut").unwrap().contains("not a valid component"),
        "{all:?}"
    );
    assert!(
        problem("wrong-world")
            .unwrap()
            .contains("does not export hookhost:plugin/handler (it exports: run)"),
        "{all:?}"
    );
    assert!(
        problem("foreign")
            .unwrap()
            .contains("imports acme:thing/clock@1.0.0, which hookhost does not provide"),
        "{all:?}"
    );
    assert!(
        problem("newer")
            .unwrap()
            .contains("exports hookhost:plugin/handler@0.2.0; this hookhost speaks 0.1.x"),
        "{all:?}"
    );
    let text = cli(&["plugins", "--plugins-dir", folder.path().to_str().unwrap()]);
    assert!(
        text.contains("a core WebAssembly module, not a component"),
        "{text}"
    );
    // Offline, each file is a `file`, and the last line says how to see more.
    let good = text.lines().find(|l| l.starts_with("good ")).unwrap();
    assert_eq!(good.split_whitespace().nth(1), Some("file"), "{text}");
    assert!(
        text.ends_with("(files, not loaded: --url URL --token T for a running server's view)\n"),
        "{text}"
    );
    let offline: Vec<_> = all
        .into_iter()
        .filter(|r| r["name"] == "bad" || r["name"] == "good")
        .collect();
    for rows in [&offline, &remote] {
        let names: Vec<_> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["bad", "good"], "{rows:?}");
        assert!(rows[0]["sidecar_error"].is_string(), "{rows:?}");
        assert!(rows[1]["sidecar_error"].is_null(), "{rows:?}");
        assert_eq!(rows[0]["hash"], rows[1]["hash"]);
    }
    assert_eq!(remote[0]["status"], "loaded");
    // The sidecar by its content's hash: offline the file's, through the
    // server the one in force (none for `bad`, refused from the start).
    let good = hookhost::runtime::plugin::hash(b"[settings]\nx = \"1\"\n");
    assert_eq!(offline[1]["sidecar"], good.as_str());
    assert_eq!(remote[1]["sidecar"], good.as_str());
    assert_eq!(
        offline[0]["sidecar"],
        hookhost::runtime::plugin::hash(b"[settings\n").as_str()
    );
    assert!(remote[0]["sidecar"].is_null(), "{remote:?}");
    assert!(text.contains(&format!("sidecar {}", &good[..12])), "{text}");
    let empty = tempfile::tempdir().unwrap();
    let none = cli(&["plugins", "--plugins-dir", empty.path().to_str().unwrap()]);
    assert_eq!(none, "no plugins\n");
}

/// Files in the plugins folder that cannot be plugins are named with the
/// reason: in the log (once each, not at every rescan), in
/// `GET /admin/plugins` and by `hookhost plugins`, through the server and
/// offline; a file that is not a component says what it is instead of the
/// compiler's first complaint. Renamed to a valid name, a file loads.
#[test]
fn files_the_plugins_folder_cannot_use_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let probe = test_plugins().join("probe.wasm");
    std::fs::copy(&probe, plugins.join("my plugin.wasm")).unwrap();
    std::fs::copy(&probe, plugins.join("Loud.WASM")).unwrap();
    std::fs::create_dir(plugins.join("folder.wasm")).unwrap();
    std::os::unix::fs::symlink(plugins.join("gone.wasm"), plugins.join("dangling.wasm")).unwrap();
    std::fs::write(plugins.join("text.wasm"), "hello").unwrap();
    std::fs::write(
        plugins.join("core.wasm"),
        wat::parse_str("(module)").unwrap(),
    )
    .unwrap();
    std::fs::write(plugins.join("empty.wasm"), b"").unwrap();
    // A sidecar with no plugin of its name (misnamed, or not a sidecar).
    std::fs::write(plugins.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
    // Passed over in silence: another extension, a hidden file.
    std::fs::write(plugins.join("notes.txt"), "x").unwrap();
    std::fs::write(plugins.join(".probe.tmp"), "x").unwrap();
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        format!("[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]\n"),
    )
    .unwrap();
    let server = process::Proc::start(&cfg, &dir.path().join("data"), &plugins);
    let status = || -> serde_json::Value {
        agent()
            .get(&server.url("/admin/plugins"))
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    };
    let failed = |name: &str| -> String {
        status()["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name && p["status"] == "failed")
            .map(|p| p["last_error"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(wait_until(SETTLE, || ["text", "core", "empty"]
        .iter()
        .all(|n| !failed(n).is_empty())));
    assert!(
        failed("text").starts_with("not a WebAssembly file"),
        "{}",
        failed("text")
    );
    assert!(
        failed("core").starts_with("a core WebAssembly module, not a component"),
        "{}",
        failed("core")
    );
    assert_eq!(failed("empty"), "an empty file");
    let expected = [
        ("Cargo.toml", "no `Cargo.wasm` beside it"),
        ("Loud.WASM", "the extension must be `.wasm`, in lower case"),
        ("dangling.wasm", "cannot be read: "),
        ("folder.wasm", "a directory"),
        ("my plugin.wasm", "`my plugin` is not a plugin name"),
    ];
    let check = |ignored: Vec<(String, String)>| {
        assert_eq!(ignored.len(), expected.len(), "{ignored:?}");
        for ((file, reason), (want_file, want_reason)) in ignored.iter().zip(expected) {
            assert_eq!(file, want_file, "{ignored:?}");
            assert!(reason.starts_with(want_reason), "{ignored:?}");
        }
    };
    let pairs = |rows: &[serde_json::Value]| -> Vec<(String, String)> {
        rows.iter()
            .filter(|r| r["file"].is_string())
            .map(|r| {
                (
                    r["file"].as_str().unwrap().to_string(),
                    r["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let answer = status();
    check(pairs(answer["ignored"].as_array().unwrap()));
    let names: Vec<_> = answer["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["core", "empty", "text"], "{answer}");
    // The CLI, through the server and offline.
    let url = server.url("");
    let remote = json_lines(&cli(&[
        "plugins", "--json", "--url", &url, "--token", TOKEN,
    ]));
    check(pairs(&remote));
    assert!(remote
        .iter()
        .filter(|r| r["file"].is_string())
        .all(|r| r["status"] == "ignored"));
    let offline = json_lines(&cli(&[
        "plugins",
        "--json",
        "--plugins-dir",
        plugins.to_str().unwrap(),
    ]));
    check(pairs(&offline));
    let problem = |name: &str| {
        offline.iter().find(|r| r["name"] == name).unwrap()["component_error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(problem("text").starts_with("not a WebAssembly file"));
    assert_eq!(problem("empty"), "an empty file");
    let text = cli(&["plugins", "--url", &url, "--token", TOKEN]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("folder.wasm") && l.ends_with("ignored: a directory")),
        "{text}"
    );
    // Said once each in the log, though the folder is read again every
    // two seconds.
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(
        server.count_lines("file in the plugins folder ignored"),
        expected.len()
    );
    // Given a plugin name, the file loads and is no longer listed as ignored.
    std::fs::rename(
        plugins.join("my plugin.wasm"),
        plugins.join("my-plugin.wasm"),
    )
    .unwrap();
    wait_loaded(&server.url("/metrics"), &["my-plugin"]);
    assert!(wait_until(SETTLE, || status()["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["file"] != "my plugin.wasm")));
    assert_eq!(status()["ignored"].as_array().unwrap().len(), 4);
    // The misnamed sidecar's error was not logged as a refused sidecar.
    assert_eq!(server.count_lines("invalid sidecar"), 0);
}

fn chat_event(i: usize) -> Vec<u8> {
    hola_event(&format!("r{i}"), "c").into_bytes()
}

/// `[store] retention`: events older than the age go once every plugin is
/// done with them; a dead letter keeps its event. The offline command does
/// the same on the data directory.
#[test]
fn retention_prunes_handled_events_and_keeps_dead_letters() {
    let tp = test_plugins();
    let s = TestServer::start(
        r#"
[store]
retention = "2s"
[dispatch]
max_attempts = 1
[tenants.a]
plugins = ["good"]
[tenants.b]
plugins = ["bad"]
"#,
    );
    deploy(&tp, "probe", &s.plugins_dir(), "good", None);
    deploy(
        &tp,
        "probe",
        &s.plugins_dir(),
        "bad",
        Some("[settings]\nattack = \"panic\"\n"),
    );
    s.wait_loaded(&["good", "bad"]);
    for i in 0..3 {
        assert_eq!(post(&s.url("/webhook/a"), &chat_event(i), None).status, 200);
    }
    assert_eq!(post(&s.url("/webhook/b"), &chat_event(9), None).status, 200);
    let rows = wait_settled(&s.data_dir(), 4, SETTLE);
    assert_eq!(rows.iter().filter(|d| d.state == "dead").count(), 1);
    let pruned = || {
        metric(
            &metrics_text(&s.url("/metrics")),
            "hookhost_events_pruned_total",
        )
        .and_then(|v| v.parse::<f64>().ok())
    };
    assert!(
        wait_until(Duration::from_secs(30), || pruned() == Some(3.0)),
        "{:?}",
        s.stored()
    );
    let left = s.stored();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "b", "the dead letter's event stays");
    let ledger = deliveries(&s.data_dir());
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0].state, "dead");
    // The idempotency memory goes with the event: the same event again is
    // stored again.
    let again = post(&s.url("/webhook/a"), &chat_event(0), None);
    assert_eq!(again.body["duplicate"], false, "{:?}", again.body);
    // A dead letter the operator gives up no longer keeps its event (the
    // newest event, `again`, stays whatever its state).
    let data = s.data_dir();
    let data = data.to_str().unwrap();
    let seq = ledger[0].event_seq.to_string();
    let discard =
        |args: &[&str]| run(&[&["dead-letters", "--data-dir", data, "discard"], args].concat());
    let out = discard(&[&seq, "bad"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("discarded: event {seq} → bad")
    );
    let twice = discard(&[&seq, "bad"]);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("no dead letter"));
    assert!(
        wait_until(Duration::from_secs(30), || pruned() == Some(4.0)),
        "{:?}",
        s.stored()
    );
    let left = s.stored();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].0, "a");

    // On demand, on a server without retention configured: offline on its
    // data directory, then through its admin API.
    let s2 = TestServer::start(&format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[tenants.a]\nplugins = [\"good\"]"
    ));
    deploy(&tp, "probe", &s2.plugins_dir(), "good", None);
    s2.wait_loaded(&["good"]);
    let data = s2.data_dir();
    let data = data.to_str().unwrap();
    let url = s2.url("");
    let mut posted = 0;
    for (offline, expected) in [(true, "pruned 1 event"), (false, "pruned 2 events")] {
        let ledger = deliveries(&s2.data_dir()).len();
        for _ in 0..2 {
            let r = post(&s2.url("/webhook/a"), &chat_event(posted), None);
            assert_eq!(r.status, 200);
            posted += 1;
        }
        let settled = wait_settled(&s2.data_dir(), ledger + 2, SETTLE);
        assert_eq!(settled.len(), ledger + 2, "{settled:?}");
        let place: &[&str] = if offline {
            &["--data-dir", data]
        } else {
            &["--url", &url, "--token", TOKEN]
        };
        let prune = |age: &str| cli(&[&["events", "prune", "--older-than", age], place].concat());
        assert_eq!(prune("1h").trim(), "pruned 0 events");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(prune("1s").trim(), expected, "offline: {offline}");
    }
    let left = s2.stored();
    assert_eq!(left.len(), 1, "the newest event stays: {left:?}");
    assert!(left[0].2.contains("r3"), "{left:?}");
    let bad = admin(
        "POST",
        &s2.url("/admin/events/prune"),
        Some(TOKEN),
        Some(serde_json::json!({ "older_than": "30 days" })),
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.body["error"]
            .as_str()
            .unwrap()
            .contains("invalid length of time"),
        "{:?}",
        bad.body
    );
    let zero = run(&["events", "prune", "--older-than", "0", "--data-dir", data]);
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("above zero"));
}

/// A backlog longer than one admin request may take is pruned in parts:
/// each answer comes within the request timeout with where it stopped, and
/// `hookhost events prune --url` goes on until nothing is left.
#[test]
fn an_admin_prune_of_a_long_backlog_answers_in_parts() {
    // A 400 ms request timeout gives each prune request about 100 ms, far
    // less than 20,000 events take (40 writer transactions, each followed
    // by a pause four times its length, at least 2 ms).
    let s = TestServer::start(&format!(
        "[server]\nrequest_timeout_ms = 400\n[admin]\ntoken = \"{TOKEN}\"\n[tenants.a]\nrate_limit = {{ per_second = 0 }}\n"
    ));
    const EVENTS: usize = 20_000;
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = &s;
            scope.spawn(move || {
                for i in (t..EVENTS).step_by(4) {
                    // The short timeout may also catch a post behind a slow
                    // commit: post it again until it is stored.
                    let stored = (0..20)
                        .any(|_| post(&s.url("/webhook/a"), &chat_event(i), None).status == 200);
                    assert!(stored, "event {i}");
                }
            });
        }
    });
    assert_eq!(s.stored().len(), EVENTS);
    std::thread::sleep(Duration::from_millis(1100));
    let first = admin(
        "POST",
        &s.url("/admin/events/prune"),
        Some(TOKEN),
        Some(serde_json::json!({ "older_than": "1s" })),
    );
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["more"], true, "{:?}", first.body);
    let part = first.body["pruned"].as_u64().unwrap() as usize;
    let resume = first.body["resume_after"].as_i64().unwrap();
    assert!(part > 0 && part < EVENTS - 1, "{:?}", first.body);
    assert!(resume as usize >= part, "{:?}", first.body);
    assert_eq!(s.stored().len(), EVENTS - part);
    let rest = cli(&[
        "events",
        "prune",
        "--older-than",
        "1s",
        "--url",
        &s.url(""),
        "--token",
        TOKEN,
    ]);
    // Exact, unless a part timed out on a busy machine and was asked for
    // again (then the CLI says so, and the metric below still counts all).
    let exact = format!("pruned {} events", EVENTS - 1 - part);
    assert!(
        rest.trim() == exact || rest.starts_with("pruned at least"),
        "{rest}"
    );
    assert_eq!(s.stored().len(), 1, "the newest event stays");
    let counted = metric(
        &metrics_text(&s.url("/metrics")),
        "hookhost_events_pruned_total",
    );
    assert_eq!(counted.as_deref(), Some(&*(EVENTS - 1).to_string()));
}

/// A plugin added later gets the history it missed with `replay --from`:
/// through the server, the events of the tenants it runs for; offline, a
/// range runs again through the plugins that had it.
#[test]
fn a_range_replay_gives_a_new_plugin_the_history() {
    let tp = test_plugins();
    let s = TestServer::start(&format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[tenants.a]\nplugins = [\"first\", \"second\"]\n[tenants.b]\nplugins = [\"first\"]\n"
    ));
    deploy(&tp, "probe", &s.plugins_dir(), "first", None);
    s.wait_loaded(&["first"]);
    for i in 0..5 {
        assert_eq!(post(&s.url("/webhook/a"), &chat_event(i), None).status, 200);
    }
    assert_eq!(post(&s.url("/webhook/b"), &chat_event(9), None).status, 200);
    let data = s.data_dir();
    assert_eq!(wait_settled(&data, 6, SETTLE).len(), 6);
    // `second` arrives: new events reach it, the five old ones did not.
    deploy(&tp, "probe", &s.plugins_dir(), "second", None);
    s.wait_loaded(&["second"]);
    assert_eq!(post(&s.url("/webhook/a"), &chat_event(5), None).status, 200);
    let rows = wait_settled(&data, 8, SETTLE);
    let of = |rows: &[hookhost::store::DeliveryRow], p: &str| -> Vec<i64> {
        rows.iter()
            .filter(|d| d.plugin == p)
            .map(|d| d.event_seq)
            .collect()
    };
    assert_eq!(of(&rows, "second"), vec![7]);
    let url = s.url("");
    let remote =
        |args: &[&str]| cli(&[&["replay"], args, &["--url", &url, "--token", TOKEN]].concat());
    assert_eq!(
        remote(&["--from", "1", "--to", "6", "--plugin", "second"]).trim(),
        "queued 5 deliveries for 5 events"
    );
    let after = wait_settled(&data, 13, SETTLE);
    assert_eq!(of(&after, "second"), vec![1, 2, 3, 4, 5, 7]);
    assert!(after.iter().all(|d| d.state == "done"), "{after:?}");
    // `first` was not touched.
    let first = |rows: &[hookhost::store::DeliveryRow]| -> Vec<(i64, i64)> {
        rows.iter()
            .filter(|d| d.plugin == "first")
            .map(|d| (d.event_seq, d.updated_at))
            .collect()
    };
    assert_eq!(first(&after), first(&rows));
    // A plugin that does not run for the tenant asked for is refused.
    let refused = run(&[
        "replay", "--from", "1", "--plugin", "second", "--tenant", "b", "--url", &url, "--token",
        TOKEN,
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("400: plugin `second` does not run for tenant `b`"),
        "{refused:?}"
    );
    let bad = admin(
        "POST",
        &s.url("/admin/events/replay"),
        Some(TOKEN),
        Some(serde_json::json!({ "from": 0 })),
    );
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    // Offline, tenant b's part of the range again: only what b's event had.
    let offline = cli(&[
        "replay",
        "--from",
        "1",
        "--tenant",
        "b",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(offline.trim(), "queued 1 delivery for 1 event");
    assert!(wait_until(SETTLE, || {
        let now = deliveries(&data);
        now.iter().all(|d| d.state == "done")
            && now.iter().any(|d| {
                d.event_seq == 6
                    && d.updated_at > after.iter().find(|a| a.event_seq == 6).unwrap().updated_at
            })
    }));
    assert_eq!(deliveries(&data).len(), 13);
    // The newest deliveries, the same both ways, oldest first.
    for place in [
        vec!["--data-dir", data.to_str().unwrap()],
        vec!["--url", &url, "--token", TOKEN],
    ] {
        let last = json_lines(&cli(&[
            &["deliveries", "--json", "--last", "3"],
            &place[..],
        ]
        .concat()));
        let keys: Vec<(i64, &str)> = last
            .iter()
            .map(|d| {
                (
                    d["event_seq"].as_i64().unwrap(),
                    d["plugin"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![(6, "first"), (7, "first"), (7, "second")],
            "{place:?}"
        );
    }
}

/// `hookhost backup` copies a running server's store and its plugins'
/// databases; the copy is a data directory a server starts from, with the
/// events, the ledger, the plugins' rows and the idempotency memory.
#[test]
fn a_backup_taken_while_running_is_a_data_directory() {
    let tp = test_plugins();
    let s = TestServer::start("[tenants.a]\nplugins = [\"rec\"]");
    deploy(&tp, "probe", &s.plugins_dir(), "rec", None);
    s.wait_loaded(&["rec"]);
    for i in 0..3 {
        assert_eq!(post(&s.url("/webhook/a"), &chat_event(i), None).status, 200);
    }
    wait_settled(&s.data_dir(), 3, SETTLE);
    let dest = tempfile::tempdir().unwrap();
    let copy = dest.path().join("copy");
    let (data, to) = (s.data_dir(), copy.to_str().unwrap().to_string());
    let data = data.to_str().unwrap();
    let out = cli(&["backup", "--to", &to, "--data-dir", data]);
    assert!(out.contains("backed up 2 database(s)"), "{out}");
    // Ingest goes on meanwhile and does not reach the copy.
    assert_eq!(post(&s.url("/webhook/a"), &chat_event(7), None).status, 200);
    let again = run(&["backup", "--to", &to, "--data-dir", data]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    // A backup that fails part way (here a plugin database that is not
    // one) leaves nothing that looks like a backup, nor its staging folder.
    let broken = s.data_dir().join("plugin-data/a/broken.sqlite");
    std::fs::write(&broken, vec![7u8; 8192]).unwrap();
    let failed = dest.path().join("failed");
    let out = run(&[
        "backup",
        "--to",
        failed.to_str().unwrap(),
        "--data-dir",
        data,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.sqlite"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["copy"], "{err}");
    std::fs::remove_file(&broken).unwrap();

    let c = hookhost::store::open_read_only(&copy).unwrap();
    assert_eq!(
        hookhost::store::list_events(&c, None, 0, 100)
            .unwrap()
            .len(),
        3
    );
    let rows = plugin_sql(&copy, "a", "rec", "SELECT key FROM seen");
    assert_eq!(rows.len(), 3, "{rows:?}");
    drop(c);
    let mut config = common::config(dest.path(), "[tenants.a]\nplugins = [\"rec\"]");
    config.server.data_dir = copy.clone();
    let restored = TestServer::start_in(tempfile::tempdir().unwrap(), config);
    let dup = post(&restored.url("/webhook/a"), &chat_event(1), None);
    assert_eq!(dup.body["duplicate"], true, "{:?}", dup.body);
    assert_eq!(deliveries(&copy).len(), 3);
}

#[test]
fn a_reload_applies_new_tenants_secrets_and_grants_without_a_restart() {
    use common::process::Proc;
    let dir = tempfile::tempdir().unwrap();
    let (data, plugins) = (dir.path().join("data"), dir.path().join("plugins"));
    deploy(&test_plugins(), "probe", &plugins, "probe", None);
    let cfg = dir.path().join("hookhost.toml");
    // Tenant a's secret is a file (as an orchestrator mounts one): a reload
    // reads it again.
    let secret_file = dir.path().join("a.secret");
    let write = |server: &str, secret: &str, more: &str| {
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        let text = format!(
            "{server}[admin]\ntoken = \"{TOKEN}\"\n[tenants.a]\nsecrets = [\"file:{}\"]\n{more}",
            secret_file.display()
        );
        std::fs::write(&cfg, text).unwrap()
    };
    write("", "old", "");
    let mut server = Proc::start(&cfg, &data, &plugins);
    let event = |i: usize| hola_event(&format!("reload-{i}"), "573001112233@s.whatsapp.net");
    let to_a = |i: usize, secret: &str| {
        post_signed(&server.url("/webhook/a"), event(i).as_bytes(), secret).status
    };
    let to_b = |i: usize| post(&server.url("/webhook/b"), event(i).as_bytes(), None).status;
    assert_eq!(to_a(1, "old"), 200);
    assert_eq!(to_b(2), 404);

    // SIGHUP: tenant a's secret rotated, tenant b added with the probe
    // (granted log and config only), a start-only setting changed.
    let b = |grants: &str| {
        format!("[tenants.b]\nplugins = [\"probe\"]\n[tenants.b.plugin.probe]\ngrants = [{grants}]\nsettings = {{ probe = \"1\" }}\n")
    };
    let busier = "[server]\nmax_inflight = 7\n";
    write(busier, "new", &b("\"log\", \"config\""));
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    assert!(wait_until(SETTLE, || {
        server.count_lines("configuration reloaded") == 1
    }));
    assert_eq!(server.count_lines("takes effect at the next restart"), 1);
    assert_eq!(to_a(3, "old"), 401);
    assert_eq!(to_a(4, "new"), 200);
    assert_eq!(to_b(5), 200);
    // The error the probe reports for tenant b's newest event.
    let probe_report = |n: usize| {
        let rows = wait_settled(&data, n, SETTLE);
        let b = rows.iter().filter(|d| d.tenant == "b");
        let last = b.max_by_key(|d| d.event_seq);
        last.and_then(|d| d.last_error.clone()).unwrap_or_default()
    };
    assert_eq!(
        probe_report(1),
        "reject: log=ok kv=access-denied sql=access-denied send=access-denied config=ok (`kv` is not granted)"
    );

    // An invalid file changes nothing, and says why.
    std::fs::write(&cfg, "[tenants.a]\nsecrets = 3\n").unwrap();
    let url = server.url("");
    let refused = run(&["reload", "--url", &url, "--token", TOKEN]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        why.contains("the running configuration is unchanged"),
        "{why}"
    );
    assert_eq!(to_a(6, "new"), 200);
    let m = metrics_text(&server.url("/metrics"));
    for (outcome, n) in [("applied", 1), ("refused", 1)] {
        let line = format!("hookhost_config_reloads_total{{outcome=\"{outcome}\"}} {n}");
        assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
    }

    // Through the CLI: the probe may now use kv, and the next event sees it.
    write(busier, "new", &b("\"log\", \"config\", \"kv\""));
    assert_eq!(
        cli(&["reload", "--url", &url, "--token", TOKEN]).trim(),
        "reloaded: tenants changed: b\nneeds a restart: [server]"
    );
    assert_eq!(to_b(7), 200);
    assert_eq!(
        probe_report(2),
        "reject: log=ok kv=ok sql=access-denied send=access-denied config=ok (`sql` is not granted)"
    );
    // A delivery of b's waits for a retry when b goes: b's webhook is
    // unknown again, and the delivery does not run (under default grants)
    // but fails, saying why; with fewer attempts allowed now, it is dead.
    let retrying = "[tenants.b]\nplugins = [\"probe\"]\n[tenants.b.plugin.probe]\nsettings = { fail_until_attempt = \"100\" }\n";
    write(busier, "new", retrying);
    cli(&["reload", "--url", &url, "--token", TOKEN]);
    assert_eq!(to_b(8), 200);
    let b_row = || {
        let rows = deliveries(&data);
        rows.into_iter()
            .filter(|d| d.tenant == "b")
            .max_by_key(|d| d.event_seq)
    };
    assert!(wait_until(SETTLE, || b_row().is_some_and(|d| d.state == "failed")));
    write("[dispatch]\nmax_attempts = 2\n", "new", "");
    assert_eq!(
        cli(&["reload", "--url", &url, "--token", TOKEN]).trim(),
        "reloaded: tenants removed: b; dispatch settings changed"
    );
    assert_eq!(to_b(9), 404);
    assert!(wait_until(SETTLE, || b_row().is_some_and(|d| d.state == "dead")));
    let dead = b_row().unwrap();
    let why = dead.last_error.clone().unwrap_or_default();
    assert!(
        why.contains("plugin does not run for tenant `b` in the configuration"),
        "{dead:?}"
    );
    assert!(server.terminate());
}

#[test]
fn config_check_says_what_a_file_gives_and_refuses_what_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    deploy(&test_plugins(), "probe", &plugins, "logger", None);
    // A file the server would not read: named, with the reason.
    std::fs::copy(plugins.join("logger.wasm"), plugins.join("loger v2.wasm")).unwrap();
    // A sidecar the server would refuse, and one with no plugin of its name.
    std::fs::write(
        plugins.join("logger.toml"),
        "grants = [\"log\"]\nfuel = 5\n",
    )
    .unwrap();
    std::fs::write(plugins.join("loger.toml"), "grants = [\"log\"]\n").unwrap();
    // A sidecar naming a tenant the file does not have.
    std::fs::copy(plugins.join("logger.wasm"), plugins.join("extra.wasm")).unwrap();
    std::fs::write(plugins.join("extra.toml"), "tenants = [\"a\", \"c\"]\n").unwrap();
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        "[tenants.a]\nsecrets = [\"s\"]\nplugins = [\"logger\", \"loger\"]\n\
         [tenants.a.plugin.logger]\ngrants = [\"log\", \"messaging\"]\nsettings = { level = \"debug\" }\n\
         [tenants.b]\n",
    )
    .unwrap();
    let p = plugins.to_str().unwrap();
    let check = |file: &std::path::Path| {
        cli(&[
            "config",
            "check",
            "-c",
            file.to_str().unwrap(),
            "--plugins-dir",
            p,
        ])
    };
    let out = check(&cfg);
    let expected = [
        format!("{}: valid (2 tenants)", cfg.display()),
        "tenant a: 1 secret, plugins logger, loger, gateway account no".into(),
        "  runs logger; named by their sidecar: extra".into(),
        "  plugin logger: grants log, messaging".into(),
        "tenant b: 0 secrets, plugins none named, gateway account no".into(),
        "  runs no plugin".into(),
        "warning: tenant a, plugin logger: settings are given but `config` is not in the plugin's grants: it reads none of them".into(),
        "warning: tenant a, plugin logger: plugin may send messages but the tenant has no gateway account ([tenants.T.whapi] token and instance_id): its sends will be refused".into(),
        "warning: tenant b: tenant has no secret: unsigned events are accepted".into(),
        "warning: tenant a, plugin loger: not in the plugins folder".into(),
        "warning: plugins folder: loger v2.wasm ignored: `loger v2` is not a plugin name: 1 to 64 ASCII letters, digits, `-` or `_`".into(),
        "warning: plugins folder: loger.toml ignored: no `loger.wasm` beside it: a sidecar configures the plugin of its name".into(),
        "warning: plugins folder: extra.toml names tenant `c`, which this file does not have: the plugin does not run for it".into(),
        "warning: plugins folder: logger.toml refused: line 2, column 1: unknown field `fuel`, expected one of `tenants`, `grants`, `limits`, `settings`".into(),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    // A plugin no tenant names runs for the default tenant, and says so.
    let with_default = dir.path().join("default.toml");
    std::fs::write(&with_default, "[tenants.default]\nplugins = [\"extra\"]\n").unwrap();
    let out = check(&with_default);
    assert!(
        out.lines()
            .any(|l| l == "  runs extra; named by no tenant: logger"),
        "{out}"
    );

    // What `serve` would refuse, with the reason and exit code 1.
    for (text, why) in [
        ("[tenants.a]\nsecrets = 3\n", "invalid type: integer `3`"),
        ("[tenants.a]\nsecret = [\"s\"]\n", "unknown field `secret`"),
        (
            "[tenants.a]\nsecrets = [\"env:HOOKHOST_TEST_NOT_SET\"]\n",
            "environment variable HOOKHOST_TEST_NOT_SET is not set",
        ),
        ("[tenants.\"a b\"]\n", "a b"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = run(&[
            "config",
            "check",
            "-c",
            cfg.to_str().unwrap(),
            "--plugins-dir",
            p,
        ]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("invalid") && err.contains(why),
            "{text}: {err}"
        );
    }
    // A file that is not there, said once, by `config check` and `serve`.
    let missing = dir.path().join("missing.toml");
    let m = missing.to_str().unwrap();
    for args in [&["config", "check", "-c", m][..], &["serve", "--config", m]] {
        let out = run(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("cannot read config file {m}: ")),
            "{err}"
        );
        assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    }
}

/// `[store] retention` turned on by a reload: handled events go without a
/// restart.
#[test]
fn a_reload_turns_retention_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hookhost.toml");
    let base = format!("[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]\n");
    std::fs::write(&cfg, &base).unwrap();
    let read = {
        let (dir, cfg) = (dir.path().to_path_buf(), cfg.clone());
        move || -> anyhow::Result<hookhost::config::Config> {
            Ok(config(&dir, &std::fs::read_to_string(&cfg)?))
        }
    };
    let server = hookhost::server::spawn_with(read().unwrap(), Some(Box::new(read))).unwrap();
    for i in 0..3 {
        let ev = hola_event(&format!("keep-{i}"), "c");
        assert_eq!(
            post(&server.url("/webhook"), ev.as_bytes(), None).status,
            200
        );
    }
    std::thread::sleep(Duration::from_millis(1200));
    std::fs::write(&cfg, format!("[store]\nretention = \"1s\"\n{base}")).unwrap();
    let r = admin("POST", &server.url("/admin/reload"), Some(TOKEN), None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["retention_changed"], true);
    assert_eq!(r.body["restart_needed"], serde_json::json!([]));
    // The newest event always stays.
    assert!(wait_until(SETTLE, || {
        metric(
            &metrics_text(&server.url("/metrics")),
            "hookhost_events_pruned_total ",
        )
        .as_deref()
            == Some("2")
    }));
    let left = admin("GET", &server.url("/admin/events"), Some(TOKEN), None);
    assert_eq!(
        left.body["events"].as_array().map(Vec::len),
        Some(1),
        "{:?}",
        left.body
    );
}

#[test]
fn cli_kv_shows_a_plugins_data_and_deletes_what_the_operator_names() {
    let tp = test_plugins();
    let s = TestServer::start(&format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]\nplugins = [\"recorder\"]\n[tenants.b]\nplugins = [\"recorder\"]"
    ));
    deploy(&tp, "probe", &s.plugins_dir(), "recorder", None);
    s.wait_loaded(&["recorder"]);
    for (i, path) in ["/webhook", "/webhook", "/webhook", "/webhook/b"]
        .iter()
        .enumerate()
    {
        let r = post(
            &s.url(path),
            hola_event(&format!("M{i}"), "chat").as_bytes(),
            None,
        );
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    wait_settled(&s.data_dir(), 4, SETTLE);
    let data = s.data_dir();
    let url = s.url("");
    let offline = vec!["--data-dir", data.to_str().unwrap()];
    let server = vec!["--url", url.as_str(), "--token", TOKEN];
    let kv = |args: &[&str], place: &[&str]| cli(&[&["kv"], args, place].concat());
    for place in [&offline, &server] {
        // Usage: each (tenant, plugin) with the bytes its quota counts.
        let usage = json_lines(&kv(&["usage", "--json"], place));
        let seen_bytes = |tenant: &str, n: i64| {
            // Each key is "seen/" + the event's key, each value the tenant's name.
            let keys = json_lines(&kv(&["list", tenant, "recorder", "--json"], place));
            assert_eq!(keys.len() as i64, n, "{keys:?}");
            keys.iter()
                .map(|k| k["key"].as_str().unwrap().len() as i64 + k["bytes"].as_i64().unwrap())
                .sum::<i64>()
        };
        assert_eq!(
            usage,
            vec![
                serde_json::json!({"tenant": "b", "plugin": "recorder", "keys": 1, "bytes": seen_bytes("b", 1)}),
                serde_json::json!({"tenant": "default", "plugin": "recorder", "keys": 3, "bytes": seen_bytes("default", 3)}),
            ]
        );
        let only_b = json_lines(&kv(&["usage", "--tenant", "b", "--json"], place));
        assert_eq!(only_b, vec![usage[0].clone()]);
        // A value, as stored.
        let first = json_lines(&kv(
            &["list", "default", "recorder", "--json", "--limit", "1"],
            place,
        ));
        let key = first[0]["key"].as_str().unwrap().to_string();
        assert!(key.starts_with("seen/"), "{key}");
        assert_eq!(kv(&["get", "default", "recorder", &key], place), "default");
        let missing = run(&[
            &["kv", "get", "default", "recorder", "seen/none"],
            &place[..],
        ]
        .concat());
        assert_eq!(missing.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&missing.stderr).contains("no key `seen/none`"));
        // A table cut at its limit says so.
        let cut = kv(&["list", "default", "recorder", "--limit", "2"], place);
        assert_eq!(cut.lines().count(), 4, "{cut}");
        assert!(
            cut.ends_with("(the first 2 keys: --limit or --prefix for the others)\n"),
            "{cut}"
        );
        // Another prefix lists nothing; the table says so.
        assert_eq!(
            kv(
                &["list", "default", "recorder", "--prefix", "other/"],
                place
            )
            .trim(),
            "no keys"
        );
    }
    // The same usage in the metrics, against the quota (10 000 keys by default).
    let gauge = |name: &str, tenant: &str| {
        metric(
            &metrics_text(&s.url("/metrics")),
            &format!("{name}{{tenant=\"{tenant}\",plugin=\"recorder\"}} "),
        )
    };
    assert!(wait_until(SETTLE, || gauge("hookhost_kv_keys", "default")
        .as_deref()
        == Some("3")));
    assert_eq!(gauge("hookhost_kv_keys", "b").as_deref(), Some("1"));
    assert_eq!(
        gauge("hookhost_kv_quota_used_ratio", "default").as_deref(),
        Some("0.0003")
    );
    // Deletes: one key offline, then a prefix through the server.
    let keys = |tenant: &str| {
        json_lines(&cli(&[
            &["kv", "list", tenant, "recorder", "--json"],
            &offline[..],
        ]
        .concat()))
    };
    let one = keys("default")[0]["key"].as_str().unwrap().to_string();
    let out = cli(&[&["kv", "delete", "default", "recorder", &one], &offline[..]].concat());
    assert_eq!(
        out.trim(),
        "deleted 1 key of plugin `recorder` for tenant `default`"
    );
    assert_eq!(keys("default").len(), 2);
    let out = cli(&[
        &["kv", "delete", "default", "recorder", "--prefix", "seen/"],
        &server[..],
    ]
    .concat());
    assert_eq!(
        out.trim(),
        "deleted 2 keys of plugin `recorder` for tenant `default`"
    );
    assert!(keys("default").is_empty());
    // The other tenant's data is untouched, and the usage follows.
    assert_eq!(keys("b").len(), 1);
    let usage = json_lines(&cli(&[&["kv", "usage", "--json"], &offline[..]].concat()));
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["tenant"], "b");
    assert!(wait_until(SETTLE, || gauge("hookhost_kv_keys", "default")
        .as_deref()
        == Some("0")));
    // The plugin writes again once its data is gone.
    let r = post(
        &s.url("/webhook"),
        hola_event("M9", "chat").as_bytes(),
        None,
    );
    assert_eq!(r.status, 200);
    wait_settled(&s.data_dir(), 5, SETTLE);
    assert_eq!(keys("default").len(), 1);
    // A delete names what it removes.
    let r = admin(
        "POST",
        &s.url("/admin/kv/default/recorder/delete"),
        Some(TOKEN),
        Some(serde_json::json!({})),
    );
    assert_eq!(r.status, 400);
    assert!(r.body["error"]
        .as_str()
        .unwrap()
        .contains("either `key` or `prefix`"));
    let neither = run(&[&["kv", "delete", "default", "recorder"], &offline[..]].concat());
    assert!(!neither.status.success());
}

#[test]
fn the_admin_api_answers_malformed_requests_in_json() {
    let s = TestServer::start(&format!("[admin]\ntoken = \"{TOKEN}\"\n[tenants.default]"));
    let agent = agent();
    let auth = format!("Bearer {TOKEN}");
    let answer = |mut r: ureq::http::Response<ureq::Body>| {
        let status = r.status().as_u16();
        let body: serde_json::Value = r
            .body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("{status}: not JSON: {e}"));
        (
            status,
            body["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    for (path, says) in [
        ("/admin/events/abc", "Cannot parse `abc`"),
        ("/admin/events?limit=x", "limit"),
        (
            "/admin/events?limit=-1",
            "`limit` must be at least 1 (got -1)",
        ),
        ("/admin/events?last=0", "`last` must be at least 1 (got 0)"),
        (
            "/admin/deliveries?limit=0",
            "`limit` must be at least 1 (got 0)",
        ),
        (
            "/admin/kv/default/p?limit=0",
            "`limit` must be at least 1 (got 0)",
        ),
        ("/admin/kv/default/p/value", "missing field `key`"),
    ] {
        let (status, error) = answer(
            agent
                .get(s.url(path))
                .header("Authorization", &auth)
                .call()
                .unwrap(),
        );
        assert_eq!(status, 400, "{path}");
        assert!(error.contains(says), "{path}: {error}");
    }
    let (status, error) = answer(
        agent
            .post(s.url("/admin/events/prune"))
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send("{not json")
            .unwrap(),
    );
    assert_eq!(status, 400);
    assert!(error.contains("JSON"), "{error}");
    let (status, error) = answer(
        agent
            .post(s.url("/admin/kv/default/p/delete"))
            .header("Authorization", &auth)
            .send("{\"key\": \"x\"}")
            .unwrap(),
    );
    assert_eq!(status, 415);
    assert!(error.contains("application/json"), "{error}");
    // The operator commands refuse the same counts before asking.
    for args in [
        &["events", "list", "--limit", "0"][..],
        &["events", "list", "--last", "0"][..],
        &["deliveries", "--limit=-1"][..],
        &["kv", "list", "default", "p", "--limit", "0"][..],
    ] {
        let out = run(&[args, &["--url", &s.url(""), "--token", TOKEN][..]].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not in 1.."), "{args:?}: {err}");
    }
}

#[test]
fn cli_kv_names_a_store_an_older_server_made_and_a_change_upgrades_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        // A store as the release before key-value usage left it, with data.
        let store =
            hookhost::store::Store::open(&data, (&hookhost::config::StoreConfig::default()).into());
        for k in ["greeted/1", "greeted/2", "rate/1"] {
            store
                .kv_set("acme", "auto-reply", k.into(), b"x".to_vec(), 100, 1000)
                .unwrap();
        }
        store.close();
        let c = rusqlite::Connection::open(data.join("hookhost.sqlite")).unwrap();
        c.execute_batch(
            "DROP INDEX deliveries_dead; DROP TRIGGER kv_usage_insert;
             DROP TRIGGER kv_usage_update; DROP TRIGGER kv_usage_delete; DROP TABLE kv_usage;
             PRAGMA user_version = 6;",
        )
        .unwrap();
    }
    let place = ["--data-dir", data.to_str().unwrap()];
    let old = run(&[&["kv", "usage"], &place[..]].concat());
    assert!(!old.status.success());
    let said = String::from_utf8_lossy(&old.stderr);
    assert!(
        said.contains("schema version 6, older than this hookhost's")
            && said.contains("start this version's `hookhost serve`"),
        "{said}"
    );
    // A command that changes the store upgrades it, counting what it holds.
    let out = cli(&[
        &["kv", "delete", "acme", "auto-reply", "rate/1"],
        &place[..],
    ]
    .concat());
    assert!(out.contains("deleted 1 key"), "{out}");
    let usage = json_lines(&cli(&[&["kv", "usage", "--json"], &place[..]].concat()));
    assert_eq!(
        usage,
        vec![serde_json::json!({"tenant": "acme", "plugin": "auto-reply", "keys": 2, "bytes": 20})]
    );
}

#[test]
fn a_store_a_newer_hookhost_upgraded_is_neither_served_read_nor_changed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store =
            hookhost::store::Store::open(&data, (&hookhost::config::StoreConfig::default()).into());
        store
            .kv_set("acme", "auto-reply", "k".into(), b"x".to_vec(), 100, 1000)
            .unwrap();
        store.close();
        // A release far ahead of this one upgraded it.
        let c = rusqlite::Connection::open(data.join("hookhost.sqlite")).unwrap();
        c.execute_batch("PRAGMA user_version = 999;").unwrap();
    }
    let place = ["--data-dir", data.to_str().unwrap()];
    let refused = |out: std::process::Output| {
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            said.contains("schema version 999, newer than this hookhost's")
                && said.contains("restore a backup"),
            "{said}"
        );
    };
    refused(run(&[&["events", "list"], &place[..]].concat()));
    refused(run(&[&["kv", "usage"], &place[..]].concat()));
    refused(run(&[&["replay", "1"], &place[..]].concat()));
    refused(run(&[
        &["kv", "delete", "acme", "auto-reply", "k"],
        &place[..],
    ]
    .concat()));

    // The server does not start on it (bounded: a server that did start is
    // killed and the test fails).
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookhost"))
        .args(["serve", "--listen", "127.0.0.1:0", "--plugins-dir"])
        .arg(&plugins)
        .args(place)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if exited.is_none() {
        let _ = child.kill();
    }
    refused(child.wait_with_output().unwrap());
    assert!(exited.is_some(), "the server kept running on a newer store");

    // Nothing was changed: the version and the data are as they were.
    let c = rusqlite::Connection::open(data.join("hookhost.sqlite")).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 999);
    let keys: i64 = c
        .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 1);
}

/// A range replay through the server goes in parts; when a later part
/// fails, the CLI does not ask again by itself (deliveries finished in
/// between would run once more) and says where to go on from. The server
/// here is a local HTTP server that answers the first part and fails the
/// second, recording what it was asked.
#[test]
fn a_range_replay_whose_later_part_fails_says_where_to_go_on() {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let record = asked.clone();
    std::thread::spawn(move || {
        let answers = [
            (
                "200 OK",
                r#"{"events":500,"deliveries":700,"running":2,"more":true,"resume_after":500}"#,
            ),
            (
                "503 Service Unavailable",
                r#"{"error":"store unavailable"}"#,
            ),
            (
                "200 OK",
                r#"{"events":1,"deliveries":1,"running":0,"more":false}"#,
            ),
        ];
        for (status, body) in answers {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut request = vec![0; length];
            let _ = reader.read_exact(&mut request);
            record
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&request).unwrap_or_default());
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let out = run(&[
        "replay",
        "--from",
        "1",
        "--tenant",
        "a",
        "--url",
        &format!("http://{addr}"),
        "--token",
        TOKEN,
    ]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("700 deliveries queued before event 501; `replay --from 501` goes on")
            && said.contains("503: store unavailable"),
        "{said}"
    );
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[0]["from"], 1);
    assert_eq!(asked[0]["tenant"], "a");
    assert_eq!(asked[1]["from"], 501);
    assert_eq!(asked[1]["tenant"], "a");
}
