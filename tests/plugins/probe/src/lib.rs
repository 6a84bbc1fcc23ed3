//! A test plugin whose behaviour comes from its settings, so one build can
//! be deployed under several names (each with a sidecar) to exercise the
//! host: recording events, capability probes, retries, replies, and attacks
//! on the sandbox.

use hookhost_sdk::prelude::*;
use hookhost_sdk::sql::Value;

struct Probe;

fn setting(key: &str) -> Option<String> {
    settings::get(key)
}

fn fields(event: &Event) -> serde_json::Value {
    use serde_json::json;
    match event {
        Event::MessageReceived(m) | Event::MessageSent(m) => json!({
            "id": m.id, "instance_id": m.instance_id, "chat_id": m.chat_id, "from": m.sender,
            "to": m.recipient, "from_me": m.from_me, "sender_name": m.sender_name, "body": m.body,
            "type": m.message_type.as_str(), "timestamp": m.timestamp, "is_group": m.is_group,
            "quoted_message_id": m.quoted_message_id, "reaction": m.reaction, "media_url": m.media_url,
            "latitude": m.latitude, "longitude": m.longitude, "vcard": m.vcard, "status": m.status,
            "ack": m.ack.as_ref().map(|a| a.as_str().to_string()), "group_sender": m.group_sender,
        }),
        Event::AckUpdate(a) => json!({"id": a.id, "ack": a.ack.as_str()}),
        Event::MessageReaction(r) => json!({
            "instance_id": r.instance_id, "message_id": r.message_id, "from_number": r.from_number,
            "reaction": r.reaction, "timestamp": r.timestamp,
        }),
        Event::TestWebhook(t) => {
            json!({"instance_id": t.instance_id, "timestamp": t.timestamp, "message": t.message})
        }
        Event::Unknown(u) => json!({"event_type": u.event_type, "raw_json": u.raw_json}),
    }
}

fn kind(event: &Event) -> &'static str {
    match event {
        Event::MessageReceived(_) => "message_received",
        Event::MessageSent(_) => "message_sent",
        Event::AckUpdate(_) => "ack_update",
        Event::MessageReaction(_) => "message_reaction",
        Event::TestWebhook(_) => "test_webhook",
        Event::Unknown(_) => "unknown",
    }
}

fn outcome<T>(r: std::result::Result<T, HostError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(HostError::AccessDenied) => "access-denied".into(),
        Err(HostError::QuotaExceeded) => "quota-exceeded".into(),
        Err(HostError::Invalid(_)) => "invalid".into(),
        Err(HostError::Unavailable(_)) => "unavailable".into(),
        Err(HostError::Other(_)) => "other".into(),
    }
}

#[inline(never)]
fn deep(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    std::hint::black_box(deep(std::hint::black_box(n - 1))) + 1
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(n % 256) as usize] = n as u8;
    let mut next = *pad;
    recurse(n + 1, &mut next) + next[0] as u64
}

/// Host pages in each of the two `scribble` arrays.
const SCRIBBLE_PAGES: usize = 128;
const HOST_PAGE: usize = 4096;
/// Initialised data: part of the module's memory image.
static mut SCRIBBLE_DATA: [u8; SCRIBBLE_PAGES * HOST_PAGE] = [7; SCRIBBLE_PAGES * HOST_PAGE];
/// Zeroed data: past the image.
static mut SCRIBBLE_ZERO: [u8; SCRIBBLE_PAGES * HOST_PAGE] = [0; SCRIBBLE_PAGES * HOST_PAGE];

/// Counts the pages of both arrays that differ from their initial contents,
/// then writes to every other page of each: a hundred separate dirty regions
/// that the host must reset before the next instance.
fn scribble() -> usize {
    // SAFETY: one call at a time; an instance runs one delivery.
    let (data, zero) = unsafe {
        (
            &mut *std::ptr::addr_of_mut!(SCRIBBLE_DATA),
            &mut *std::ptr::addr_of_mut!(SCRIBBLE_ZERO),
        )
    };
    let mut left = 0;
    for p in 0..SCRIBBLE_PAGES {
        let at = p * HOST_PAGE;
        left += usize::from(std::hint::black_box(data[at]) != 7);
        left += usize::from(std::hint::black_box(zero[at]) != 0);
    }
    for p in (0..SCRIBBLE_PAGES).step_by(2) {
        data[p * HOST_PAGE + 1] = 0xAA;
        zero[p * HOST_PAGE + 1] = 0xAA;
        data[p * HOST_PAGE] = 0xAA;
        zero[p * HOST_PAGE] = 0xAA;
    }
    std::hint::black_box((data, zero));
    left
}

fn attack(name: &str) -> Result {
    match name {
        "scribble" => match scribble() {
            0 => Ok(()),
            n => Err(Error::reject(format!(
                "{n} pages still hold an earlier delivery's writes"
            ))),
        },
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "membomb" => {
            let mut v: Vec<Vec<u8>> = Vec::new();
            loop {
                v.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&v);
            }
        }
        "recurse" => {
            let mut pad = [0u8; 256];
            let n = recurse(0, &mut pad);
            Err(Error::reject(format!("recursion ended at {n}")))
        }
        "panic" => panic!("probe was told to panic"),
        // 200 KB on stderr, then a panic: its message comes last.
        "chatter" => {
            let line = "y".repeat(99);
            for _ in 0..2000 {
                eprintln!("{line}");
            }
            panic!("probe was told to panic after talking")
        }
        "logflood" => {
            let line = "x".repeat(10_000);
            for i in 0..1_000_000u32 {
                log::info(&line, &[("i", &i.to_string())]);
            }
            Ok(())
        }
        "sleep" => {
            let ms: u128 = setting("sleep_ms")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1000);
            let start = std::time::Instant::now();
            while start.elapsed().as_millis() < ms {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(())
        }
        "stack" => {
            // Frames with no locals in linear memory: the wasm call stack
            // itself overflows (not Rust's shadow stack).
            Err(Error::reject(format!("depth {}", deep(u64::MAX))))
        }
        "hostloop" => {
            // An endless loop whose body is a host call.
            loop {
                let _ = kv::get(std::hint::black_box("k"));
            }
        }
        "kvflood" => {
            let value = vec![7u8; 64 * 1024];
            for i in 0..100_000u32 {
                if let Err(e) = kv::set(&format!("flood/{i}"), &value) {
                    return Err(Error::reject(format!(
                        "kv stopped at {i}: {}",
                        outcome::<()>(Err(e))
                    )));
                }
            }
            Err(Error::reject("kv never refused"))
        }
        "sqlbig" => {
            // A recursive CTE producing far more rows than allowed.
            let r = sql::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i, randomblob(1000) FROM n",
                &[],
            );
            Err(Error::reject(format!("big query: {}", outcome(r))))
        }
        "sqlfill" => {
            // Rows of 64 KiB until the database (or the disk) is full.
            sql::execute("CREATE TABLE IF NOT EXISTS fill (b BLOB)", &[])?;
            for i in 0..100_000 {
                if let Err(e) = sql::execute("INSERT INTO fill VALUES (randomblob(65536))", &[]) {
                    return Err(Error::reject(format!(
                        "sql stopped at {i}: {}",
                        outcome(Err::<(), _>(e))
                    )));
                }
            }
            Err(Error::reject("sql never refused"))
        }
        "sqlescape" => {
            let tries = [
                (
                    "attach",
                    "ATTACH DATABASE '/tmp/hookhost-escape.sqlite' AS x",
                ),
                ("load_extension", "SELECT load_extension('/tmp/evil.so')"),
                ("writable_schema", "PRAGMA writable_schema = ON"),
                ("master", "UPDATE sqlite_master SET sql = 'x'"),
                (
                    "vacuum_into",
                    "VACUUM INTO '/tmp/hookhost-escape-copy.sqlite'",
                ),
                ("pragma_file", "PRAGMA journal_mode = OFF"),
            ];
            let report: Vec<String> = tries
                .iter()
                .map(|(name, stmt)| format!("{name}={}", outcome(sql::execute(stmt, &[]))))
                .collect();
            Err(Error::reject(report.join(" ")))
        }
        "crosskv" => {
            // Names that would reach other tenants' or plugins' data if the
            // host built paths or prefixes from them.
            let names = [
                "../b/recorder/seen",
                "b/recorder/seen",
                "%",
                "seen/%",
                "\0b",
            ];
            let mut found = Vec::new();
            for n in names {
                if let Ok(Some(_)) = kv::get(n) {
                    found.push(n);
                }
            }
            let listed = kv::list("").map(|v| v.len()).unwrap_or(0);
            Err(Error::reject(format!("found={found:?} listed={listed}")))
        }
        "wasi" => {
            let file = std::fs::read("/etc/passwd").is_ok();
            let dir = std::fs::read_dir("/").is_ok();
            let write = std::fs::write("/tmp/hookhost-wasi-escape", b"x").is_ok();
            let env = std::env::vars().count();
            let net = std::net::TcpStream::connect("127.0.0.1:22").is_ok();
            Err(Error::reject(format!(
                "file={file} dir={dir} write={write} env={env} net={net}"
            )))
        }
        other => Err(Error::reject(format!("unknown attack {other}"))),
    }
}

impl Plugin for Probe {
    fn subscriptions() -> Vec<EventKind> {
        match setting("subscribe").as_deref() {
            Some("messages") => vec![EventKind::MessageReceived],
            _ => vec![],
        }
    }

    fn on_event(event: &Event, ctx: &Context) -> Result {
        if let Some(a) = setting("attack") {
            attack(&a)?;
        }
        if setting("probe").is_some() {
            // Try every capability and report the outcomes in a reject.
            let report = format!(
                "log=ok kv={} sql={} send={} config={}",
                outcome(kv::set("probe", b"1")),
                outcome(sql::query("SELECT 1", &[])),
                outcome(send("573001112233", "probe", None)),
                if settings::get("probe").is_some() {
                    "ok"
                } else {
                    "none"
                },
            );
            return Err(Error::reject(report));
        }
        if let Some(key) = setting("read_kv") {
            // Report what this plugin's kv holds under `key`.
            let v = kv::get_string(&key)?;
            return Err(Error::reject(format!("kv[{key}]={v:?}")));
        }
        if setting("record").as_deref() != Some("false") {
            sql::execute(
                "CREATE TABLE IF NOT EXISTS seen (n INTEGER PRIMARY KEY, key TEXT, kind TEXT, fields TEXT, attempt INTEGER, tenant TEXT)",
                &[],
            )?;
            sql::execute(
                "INSERT INTO seen (key, kind, fields, attempt, tenant) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    Value::from(ctx.event_key.as_str()),
                    Value::from(kind(event)),
                    Value::from(fields(event).to_string()),
                    Value::Integer(ctx.attempt as i64),
                    Value::from(ctx.tenant.as_str()),
                ],
            )?;
            kv::set(&format!("seen/{}", ctx.event_key), ctx.tenant.as_bytes())?;
        }
        if let Some(text) = setting("reply") {
            if let Event::MessageReceived(m) = event {
                ctx.reply_quoting(m, &text)?;
            }
        }
        if let Some(n) = setting("fail_until_attempt").and_then(|s| s.parse::<u32>().ok()) {
            if ctx.attempt < n {
                return Err(Error::retry(format!("attempt {} < {n}", ctx.attempt)));
            }
        }
        if let Event::MessageReceived(m) = event {
            if m.body.contains("please reject") {
                return Err(Error::reject("asked to reject"));
            }
            if m.body.contains("please sleep") {
                attack("sleep")?;
            }
        }
        Ok(())
    }
}

export_plugin!(Probe);
