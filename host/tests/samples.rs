//! The sample plugins (logger, persistence, auto-reply) end to end: signed
//! events over HTTP, the real hookhost binary, and a local stand-in for the
//! gateway's send API.

mod common;
use common::process::Proc;
use common::whapi::FakeWhapi;
use common::*;
use std::path::PathBuf;
use std::time::Duration;

const SECRET: &str = "sample-secret";
const SETTLE: Duration = Duration::from_secs(60);
/// Loading the JavaScript and Python components: with a cold compile cache
/// each takes 10–20 s of Cranelift, more on a machine busy with other work.
const LOAD: Duration = Duration::from_secs(300);

struct Env {
    _dir: tempfile::TempDir,
    data: PathBuf,
    server: Proc,
    whapi: FakeWhapi,
}

fn start(auto_reply_settings: &str) -> Env {
    start_with(auto_reply_settings, "")
}

/// The shared compiled-code cache: the JS and Python components take
/// seconds to compile, once per test run rather than once per test.
fn cache_dir() -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string());
    format!("{target}/test-compile-cache")
}

fn start_with(auto_reply_settings: &str, extra: &str) -> Env {
    let samples = sample_plugins();
    let whapi = FakeWhapi::start();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    let mut names = vec!["logger", "persistence", "auto-reply"];
    if !extra.is_empty() {
        names.extend(["stats", "keyword-alert"]);
    }
    for p in &names {
        deploy(&samples, p, &plugins, p, None);
    }
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[runtime]
cache_dir = "{}"
[tenants.default]
secrets = ["{SECRET}"]
plugins = {names:?}
[tenants.default.whapi]
base_url = "{}"
instance_id = "123"
token = "tok"
[tenants.default.plugin.auto-reply]
grants = ["log", "kv", "config", "messaging"]
[tenants.default.plugin.auto-reply.settings]
{auto_reply_settings}
{extra}
"#,
            cache_dir(),
            whapi.url
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Proc::start(&cfg, &data, &plugins);
    // Wait for the plugins to be loaded before sending events.
    assert!(wait_until(LOAD, || all_loaded(
        &server.url("/metrics"),
        &names
    )));
    Env {
        _dir: dir,
        data,
        server,
        whapi,
    }
}

const RULES: &str = r#"
greeting = "¡Hola! Bienvenido."
quote = true
max_replies = 10
rules = [
  { keywords = ["menu"], reply = "Nuestro menú: https://example.com/menu" },
  { keywords = ["precio"], reply = "Precios en camino." },
]
"#;

fn msg(id: &str, chat: &str, body: &str) -> serde_json::Value {
    serde_json::json!({
        "event_type": "message_received", "id": id, "instance_id": "123", "chat_id": chat,
        "from": chat, "to": "573009998877@c.us", "from_me": 0, "sender_name": "Cliente",
        "body": body, "type": "text", "timestamp": 1724716800, "is_group": 0,
        "status": "received", "ack": "pending"
    })
}

impl Env {
    fn send(&self, v: &serde_json::Value) -> u16 {
        post_signed(
            &self.server.url("/webhook"),
            v.to_string().as_bytes(),
            SECRET,
        )
        .status
    }

    fn settle(&self, min: usize) -> Vec<hookhost::store::DeliveryRow> {
        let rows = wait_settled(&self.data, min, SETTLE);
        assert!(rows.iter().all(|d| d.state == "done"), "{rows:?}");
        rows
    }

    fn sql(&self, query: &str) -> Vec<Vec<String>> {
        plugin_sql(&self.data, "default", "persistence", query)
    }
}

#[test]
fn a_keyword_gets_one_reply_and_the_greeting_happens_once_per_chat() {
    let env = start(RULES);
    assert_eq!(env.send(&msg("A1", "111@c.us", "Hola, ¿tienen MENÚ?")), 200);
    env.settle(3);
    let sent = env.whapi.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].body["message"], "¡Hola! Bienvenido.");
    assert_eq!(
        sent[1].body["message"],
        "Nuestro menú: https://example.com/menu"
    );
    for s in &sent {
        assert_eq!(s.body["to"], "111@c.us");
        assert_eq!(s.body["quotedMessageId"], "A1");
    }
    // Same chat again: no greeting, one keyword reply.
    env.send(&msg("A2", "111@c.us", "y el precio?"));
    env.settle(6);
    let sent = env.whapi.sent();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2].body["message"], "Precios en camino.");
    // Another chat is greeted.
    env.send(&msg("B1", "222@c.us", "buenas"));
    env.settle(9);
    let sent = env.whapi.sent();
    assert_eq!(sent.len(), 4);
    assert_eq!(
        (
            sent[3].body["to"].as_str(),
            sent[3].body["message"].as_str()
        ),
        (Some("222@c.us"), Some("¡Hola! Bienvenido."))
    );
}

#[test]
fn no_reply_to_own_sent_or_group_messages() {
    let env = start(RULES);
    let mut own = msg("O1", "333@c.us", "menu");
    own["from_me"] = serde_json::json!(1);
    env.send(&own);
    let mut sent_event = msg("S1", "333@c.us", "menu");
    sent_event["event_type"] = "message_sent".into();
    env.send(&sent_event);
    let mut group = msg("G1", "444@g.us", "menu");
    group["is_group"] = serde_json::json!(1);
    env.send(&group);
    // logger+persistence for 3 events, auto-reply for the 2 received ones.
    env.settle(8);
    assert!(env.whapi.sent().is_empty(), "{:?}", env.whapi.sent());
}

#[test]
fn away_message_outside_business_hours_and_reply_limit() {
    let env = start(
        r#"
away_message = "Fuera de horario."
max_replies = 2
period_minutes = 60
business_hours = { days = ["mon", "tue", "wed", "thu", "fri"], open = "09:00", close = "18:00", utc_offset = "-05:00" }
"#,
    );
    // 1724716800 is Monday 19:00 in UTC-5: closed.
    for i in 0..4 {
        env.send(&msg(&format!("W{i}"), "555@c.us", "hola"));
    }
    env.settle(12);
    let sent = env.whapi.sent();
    assert_eq!(sent.len(), 2, "at most 2 replies per hour: {sent:?}");
    assert!(sent
        .iter()
        .all(|s| s.body["message"] == "Fuera de horario."));
}

#[test]
fn business_hours_follow_the_named_time_zone() {
    let env = start(
        r#"
away_message = "Fuera de horario."
business_hours = { open = "09:00", close = "18:00", utc_offset = "+03:00", time_zone = "Europe/Madrid" }
"#,
    );
    // Tuesday 2024-08-27, summer time in Madrid (UTC+2): 06:30 UTC is
    // 08:30 there, closed (09:30 by the fixed offset, which the zone
    // overrides); 07:30 UTC is 09:30 there, open.
    let at = |id: &str, chat: &str, ts: i64| {
        let mut m = msg(id, chat, "hola");
        m["timestamp"] = serde_json::json!(ts);
        m
    };
    env.send(&at("TZ1", "901@c.us", 1724716800 + 6 * 3600 + 1800));
    env.send(&at("TZ2", "902@c.us", 1724716800 + 7 * 3600 + 1800));
    env.settle(6);
    let sent = env.whapi.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].body["to"], "901@c.us");
    assert_eq!(sent[0].body["message"], "Fuera de horario.");
}

#[test]
fn persistence_keeps_messages_acks_and_reactions() {
    let env = start(RULES);
    let mut out = msg("OUT1", "666@c.us", "pedido listo");
    out["event_type"] = "message_sent".into();
    out["status"] = "sent".into();
    env.send(&out);
    for ack in ["sent", "delivered", "read", "delivered"] {
        env.send(&serde_json::json!({"event_type":"ack_update","id":"OUT1","ack":ack}));
        // Each ack in its own step: arrival order is what is being tested.
        env.settle(1);
    }
    env.send(&msg("IN1", "666@c.us", "gracias"));
    let react = |from: &str, emoji: &str, ts: i64| serde_json::json!({"event_type":"message_reaction","instance_id":"123","message_id":"OUT1","from_number":from,"reaction":emoji,"timestamp":ts});
    env.send(&react("666@c.us", "👍", 10));
    env.send(&react("777@c.us", "❤️", 11));
    env.send(&react("666@c.us", "😂", 12));
    // A late, older reaction does not replace the newer one.
    env.send(&react("666@c.us", "😮", 5));
    env.settle(10);
    assert_eq!(
        env.sql("SELECT id, direction, ack, body FROM messages ORDER BY id"),
        vec![
            vec![
                "IN1".to_string(),
                "in".into(),
                "pending".into(),
                "gracias".into()
            ],
            vec![
                "OUT1".to_string(),
                "out".into(),
                "read".into(),
                "pedido listo".into()
            ],
        ]
    );
    let full = env.sql("SELECT chat_id, from_number, to_number, from_me, sender_name, type, timestamp, is_group, status FROM messages WHERE id = 'IN1'");
    assert_eq!(
        full,
        vec![vec![
            "666@c.us".to_string(),
            "666@c.us".into(),
            "573009998877@c.us".into(),
            "0".into(),
            "Cliente".into(),
            "text".into(),
            "1724716800".into(),
            "0".into(),
            "received".into()
        ]]
    );
    assert_eq!(
        env.sql("SELECT from_number, reaction FROM message_reactions ORDER BY from_number"),
        vec![
            vec!["666@c.us".to_string(), "😂".into()],
            vec!["777@c.us".to_string(), "❤️".into()]
        ]
    );
    // Every event sent twice: duplicates are refused and nothing changes.
    let before = (
        env.sql("SELECT * FROM messages ORDER BY id"),
        env.sql("SELECT * FROM message_reactions ORDER BY from_number"),
    );
    env.send(&out);
    env.send(&serde_json::json!({"event_type":"ack_update","id":"OUT1","ack":"read"}));
    env.send(&msg("IN1", "666@c.us", "gracias"));
    env.send(&react("777@c.us", "❤️", 11));
    let after = (
        env.sql("SELECT * FROM messages ORDER BY id"),
        env.sql("SELECT * FROM message_reactions ORDER BY from_number"),
    );
    assert_eq!(before, after);
    assert_eq!(
        deliveries(&env.data).len(),
        wait_settled(&env.data, 0, SETTLE).len()
    );
}

#[test]
fn the_logger_writes_one_line_per_event() {
    let env = start(RULES);
    for name in hookhost::samples::NAMES {
        post_signed(
            &env.server.url("/webhook"),
            hookhost::samples::get(name).unwrap().as_bytes(),
            SECRET,
        );
    }
    post_signed(
        &env.server.url("/webhook"),
        br#"{"event_type":"presence","id":"z"}"#,
        SECRET,
    );
    env.settle(6);
    assert!(wait_until(SETTLE, || env
        .server
        .plugin_lines("logger")
        .len()
        >= 6));
    // Different chats run in parallel: compare the lines as a set.
    let mut lines = env.server.plugin_lines("logger");
    lines.sort();
    let mut expected: Vec<String> = vec![
        "📥 In: 573001112233@c.us -> 573009998877@c.us | text | Hola, ¿tienen menú?".to_string(),
        "📤 Out: 573001112233@c.us | text | sent".into(),
        "✅ ACK: WXYZ5678 -> delivered".into(),
        "😍 Reaction: WXYZ5678 👍 by 573001112233@c.us".into(),
        "🧪 Test: This is a test webhook message from WhApi.co".into(),
        "ℹ️ Unknown event: presence".into(),
    ];
    expected.sort();
    assert_eq!(lines, expected);
}

#[test]
fn javascript_and_python_plugins_handle_events_end_to_end() {
    let env = start_with(
        RULES,
        r#"
[tenants.default.plugin.keyword-alert]
grants = ["log", "config", "messaging"]
settings = { notify_to = "573000000001", words = ["urgente", "queja"] }
"#,
    );
    // The stats plugin's database as its previous version left it: a
    // total of an earlier day, and J2 already counted in today's (its key
    // in the `counted` table). It gains the new table and trigger, keeps
    // what it held, and does not count J2 again.
    let j2 = msg("J2", "888@c.us", "todo bien");
    let j2_key = hookhost::event::parse(j2.to_string().as_bytes())
        .unwrap()
        .key;
    let stats_db = env.data.join("plugin-data/default/stats.sqlite");
    std::fs::create_dir_all(stats_db.parent().unwrap()).unwrap();
    let old = rusqlite::Connection::open(&stats_db).unwrap();
    old.execute_batch(
        "CREATE TABLE daily_stats (day TEXT, metric TEXT, n INTEGER NOT NULL, PRIMARY KEY (day, metric));
         CREATE TABLE counted (event_key TEXT PRIMARY KEY);
         INSERT INTO daily_stats VALUES ('2000-01-01', 'in.text', 7), ('2024-08-27', 'in.text', 1);",
    )
    .unwrap();
    old.execute("INSERT INTO counted VALUES (?1)", [&j2_key])
        .unwrap();
    drop(old);
    env.send(&msg("J1", "888@c.us", "Hola, tengo una QUEJA urgénte"));
    env.send(&j2);
    let mut out = msg("J3", "888@c.us", "respuesta");
    out["event_type"] = "message_sent".into();
    env.send(&out);
    env.send(&serde_json::json!({"event_type":"ack_update","id":"J3","ack":"delivered"}));
    // logger, persistence, stats: 4 each; auto-reply and keyword-alert: 2 each.
    let rows = env.settle(16);
    assert_eq!(
        rows.iter()
            .filter(|d| d.plugin == "stats" && d.state == "done")
            .count(),
        4
    );
    // JavaScript: the stats plugin's table, in its private database.
    let stats = plugin_sql(
        &env.data,
        "default",
        "stats",
        "SELECT metric, n FROM daily_stats ORDER BY metric, day",
    );
    assert_eq!(
        stats,
        vec![
            vec!["ack.delivered".to_string(), "1".into()],
            vec!["in.text".to_string(), "7".into()],
            vec!["in.text".to_string(), "2".into()],
            vec!["out.text".to_string(), "1".into()],
        ]
    );
    let tables = plugin_sql(
        &env.data,
        "default",
        "stats",
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
    );
    assert_eq!(
        tables,
        vec![
            vec!["daily_stats".to_string()],
            vec!["events_counted".into()]
        ]
    );
    assert!(env
        .server
        .plugin_lines("stats")
        .contains(&"stats 2024-08-27 in.text already counted".to_string()));
    // Python: one alert for the urgent message, none for the other.
    let alerts: Vec<_> = env
        .whapi
        .sent()
        .into_iter()
        .filter(|r| r.body["to"] == "573000000001")
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let text = alerts[0].body["message"].as_str().unwrap();
    assert!(
        text.contains("queja, urgente") && text.contains("Cliente (888@c.us)"),
        "{text}"
    );
}

#[test]
fn events_wait_for_a_plugin_that_is_still_compiling() {
    let samples = sample_plugins();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    // A large component, compiled from scratch (its own empty cache).
    deploy(&samples, "stats", &plugins, "stats", None);
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        "[runtime]\nparallel_compile = true\n[tenants.default]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Proc::start(&cfg, &data, &plugins);
    // Sent while stats compiles: the delivery waits instead of failing.
    assert_eq!(
        post(
            &server.url("/webhook"),
            hookhost::samples::MESSAGE_RECEIVED.as_bytes(),
            None
        )
        .status,
        200
    );
    let loaded_early = all_loaded(&server.url("/metrics"), &["stats"]);
    assert!(
        !loaded_early,
        "the component compiled too fast to show anything"
    );
    let rows = wait_settled(&data, 1, Duration::from_secs(180));
    assert_eq!(
        (rows[0].state.as_str(), rows[0].attempts),
        ("done", 1),
        "{rows:?}"
    );
    assert_eq!(
        plugin_sql(
            &data,
            "default",
            "stats",
            "SELECT metric, n FROM daily_stats"
        ),
        vec![vec!["in.text".to_string(), "1".into()]]
    );
}

/// A server running one sample plugin for the default tenant, with these
/// grants, loaded: its folder (kept while the test runs), data directory
/// and process.
fn one_sample(name: &str, grants: &str) -> (tempfile::TempDir, PathBuf, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    deploy(&sample_plugins(), name, &plugins, name, None);
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\ncache_dir = \"{}\"\n[tenants.default]\nsecrets = [\"{SECRET}\"]\n\
             plugins = [\"{name}\"]\n[tenants.default.plugin.{name}]\ngrants = {grants}\n",
            cache_dir()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = Proc::start(&cfg, &data, &plugins);
    assert!(wait_until(LOAD, || all_loaded(
        &server.url("/metrics"),
        &[name]
    )));
    (dir, data, server)
}

/// The C sample: the time from a sent message to its `delivered` and
/// `read` acks, from the message's timestamp to when each ack was stored,
/// whichever of them is handled first.
#[test]
fn the_c_plugin_times_how_long_sent_messages_took_to_be_delivered_and_read() {
    let (_dir, data, server) = one_sample("read-times", r#"["log", "sql"]"#);
    let mut handled = 0;
    let mut send = |v: serde_json::Value, delivered: bool| {
        let status = post_signed(&server.url("/webhook"), v.to_string().as_bytes(), SECRET).status;
        assert_eq!(status, 200);
        handled += usize::from(delivered);
        let rows = wait_settled(&data, handled, SETTLE);
        assert!(rows.iter().all(|d| d.state == "done"), "{rows:?}");
        assert_eq!(rows.len(), handled, "{rows:?}");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sent = |id: &str, ago: i64| {
        let mut m = msg(id, "555@c.us", "su pedido está listo");
        m["event_type"] = "message_sent".into();
        m["from_me"] = 1.into();
        m["timestamp"] = (now - ago).into();
        m
    };
    let ack = |id: &str, state: &str| serde_json::json!({"event_type": "ack_update", "id": id, "ack": state});

    // Sent 90 s ago (as the gateway stamps it), then delivered and read.
    send(sent("C1", 90), true);
    send(ack("C1", "delivered"), true);
    send(ack("C1", "read"), true);
    // A received message: not subscribed to, no delivery.
    send(msg("C2", "555@c.us", "gracias"), false);
    // C3's read ack handled before its message: timed when the message comes.
    send(ack("C3", "read"), true);
    send(sent("C3", 30), true);

    assert!(wait_until(SETTLE, || server
        .plugin_lines("read-times")
        .len()
        >= 3));
    let lines = server.plugin_lines("read-times");
    assert_eq!(lines.len(), 3, "{lines:?}");
    let expected = [
        ("📬 Delivered", "C1", 90),
        ("👀 Read", "C1", 90),
        ("👀 Read", "C3", 30),
    ];
    for (line, (what, id, ago)) in lines.iter().zip(expected) {
        let seconds: i64 = line
            .strip_prefix(&format!("{what} after "))
            .and_then(|rest| rest.strip_suffix(&format!(" s: 555@c.us (message {id})")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!((ago..ago + 60).contains(&seconds), "{line}");
    }
    // One row per message, with every time known.
    let rows = plugin_sql(
        &data,
        "default",
        "read-times",
        "SELECT id, chat, sent_at, delivered_at IS NOT NULL, read_at IS NOT NULL FROM messages ORDER BY id",
    );
    assert_eq!(
        rows,
        vec![
            vec![
                "C1".to_string(),
                "555@c.us".into(),
                (now - 90).to_string(),
                "1".into(),
                "1".into()
            ],
            vec![
                "C3".to_string(),
                "555@c.us".into(),
                (now - 30).to_string(),
                "0".into(),
                "1".into()
            ],
        ]
    );
}

/// The Go sample: how long a customer waited for the number's first answer.
#[test]
fn the_go_plugin_times_how_long_customers_waited_for_an_answer() {
    let (_dir, data, server) = one_sample("first-response", r#"["log", "kv"]"#);
    let send = |v: serde_json::Value| {
        let status = post_signed(&server.url("/webhook"), v.to_string().as_bytes(), SECRET).status;
        assert_eq!(status, 200);
    };
    let at = |mut m: serde_json::Value, ts: i64, sent: bool| {
        m["timestamp"] = ts.into();
        if sent {
            m["event_type"] = "message_sent".into();
            m["from_me"] = 1.into();
        }
        m
    };
    let chat = "573001112233@c.us";
    // The customer writes twice; the chat waits from the first message.
    send(at(msg("G1", chat, "hola"), 1_000_000, false));
    send(at(msg("G2", chat, "¿hay alguien?"), 1_000_100, false));
    // Our answer, five minutes after the first; a second one times nothing.
    send(at(msg("G3", chat, "¡Hola! Sí, dígame"), 1_000_300, true));
    send(at(msg("G4", chat, "¿en qué le ayudo?"), 1_000_310, true));
    // A group: left out.
    let mut group = at(msg("G5", "120363@g.us", "hola grupo"), 1_000_000, false);
    group["is_group"] = 1.into();
    send(group);
    send(at(
        {
            let mut m = msg("G6", "120363@g.us", "respuesta");
            m["is_group"] = 1.into();
            m
        },
        1_000_050,
        true,
    ));
    let rows = wait_settled(&data, 6, SETTLE);
    assert!(rows.iter().all(|d| d.state == "done"), "{rows:?}");
    assert!(wait_until(SETTLE, || !server
        .plugin_lines("first-response")
        .is_empty()));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        server.plugin_lines("first-response"),
        vec![format!(
            "⏱️ Answered after 5 min: {chat} (waited since message G1)"
        )]
    );
    // Nothing waits any more.
    let c = hookhost::store::open_read_only(&data).unwrap();
    let keys: i64 = c
        .query_row(
            "SELECT count(*) FROM kv WHERE plugin = 'first-response'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keys, 0);
}
