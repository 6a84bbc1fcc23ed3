//! The ingest half of the pipeline over real HTTP with a real SQLite file.

mod common;
use common::*;
use hookhost::samples;
use std::time::Duration;

const CONFIG: &str = r#"
[tenants.default]
secrets = ["s3cret"]
[tenants.acme]
secrets = ["old-secret", "new-secret"]
[tenants.open]
"#;

#[test]
fn every_event_type_is_accepted_and_stored() {
    let s = TestServer::start(CONFIG);
    for name in samples::NAMES {
        let body = samples::get(name).unwrap().as_bytes();
        let r = post_signed(&s.url("/webhook"), body, "s3cret");
        assert_eq!(r.status, 200, "{name}: {:?}", r.body);
        assert_eq!(r.body["duplicate"], false);
    }
    // An unknown type is stored too.
    let r = post_signed(
        &s.url("/webhook"),
        br#"{"event_type":"presence_update","chat_id":"x"}"#,
        "s3cret",
    );
    assert_eq!(r.status, 200);
    let stored = s.stored();
    let types: Vec<&str> = stored.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "message_received",
            "message_sent",
            "ack_update",
            "message_reaction",
            "test_webhook",
            "presence_update"
        ]
    );
    assert!(stored.iter().all(|(t, _, _)| t == "default"));
}

#[test]
fn duplicates_are_refused_but_real_events_are_kept() {
    let s = TestServer::start(CONFIG);
    let url = s.url("/webhook");
    let delivered = br#"{"event_type":"ack_update","id":"M1","ack":"delivered"}"#;
    let read = br#"{"event_type":"ack_update","id":"M1","ack":"read"}"#;
    assert_eq!(
        post_signed(&url, delivered, "s3cret").body["duplicate"],
        false
    );
    assert_eq!(post_signed(&url, read, "s3cret").body["duplicate"], false);
    let again = post_signed(&url, delivered, "s3cret");
    assert_eq!(again.status, 200);
    assert_eq!(again.body["duplicate"], true);
    // Two people reacting with the same emoji are two events.
    let react = |from: &str| {
        serde_json::json!({"event_type":"message_reaction","message_id":"M1","from_number":from,"reaction":"👍","timestamp":1}).to_string()
    };
    assert_eq!(
        post_signed(&url, react("a@c.us").as_bytes(), "s3cret").body["duplicate"],
        false
    );
    assert_eq!(
        post_signed(&url, react("b@c.us").as_bytes(), "s3cret").body["duplicate"],
        false
    );
    assert_eq!(
        post_signed(&url, react("b@c.us").as_bytes(), "s3cret").body["duplicate"],
        true
    );
    // The same key for another tenant is not a duplicate.
    let r = post_signed(&s.url("/webhook/acme"), delivered, "new-secret");
    assert_eq!(r.body["duplicate"], false);
    assert_eq!(s.stored().len(), 5);
}

#[test]
fn signatures_good_bad_missing_rotated() {
    let s = TestServer::start(CONFIG);
    let body = samples::TEST_WEBHOOK.as_bytes();
    let url = s.url("/webhook/acme");
    assert_eq!(post(&url, body, None).status, 401);
    assert_eq!(post(&url, body, Some("deadbeef")).status, 401);
    assert_eq!(post_signed(&url, body, "wrong").status, 401);
    let r = post_signed(&url, body, "old-secret");
    assert_eq!(r.status, 200);
    // Rotation: the new secret works too (same body: a duplicate, still 200).
    let r = post_signed(&url, body, "new-secret");
    assert_eq!(
        (r.status, r.body["duplicate"].clone()),
        (200, serde_json::json!(true))
    );
    // Uppercase hex and the sha256= prefix.
    let sig = hookhost::signature::sign(b"new-secret", body);
    assert_eq!(post(&url, body, Some(&sig.to_uppercase())).status, 200);
    assert_eq!(post(&url, body, Some(&format!("sha256={sig}"))).status, 200);
    // A signature checked by an independent implementation (Python's hmac).
    if let Ok(out) = std::process::Command::new("python3")
        .args(["-c", "import hmac,hashlib,sys;print(hmac.new(b'old-secret',sys.stdin.buffer.read(),hashlib.sha256).hexdigest())"])
        .stdin(std::fs::File::open(write_tmp(body)).unwrap())
        .output()
    {
        let py = String::from_utf8(out.stdout).unwrap();
        assert_eq!(py.trim(), hookhost::signature::sign(b"old-secret", body));
        let other = br#"{"event_type":"test_webhook","instance_id":"9","timestamp":5}"#;
        let out = std::process::Command::new("python3")
            .args(["-c", "import hmac,hashlib,sys;print(hmac.new(b'old-secret',sys.stdin.buffer.read(),hashlib.sha256).hexdigest())"])
            .stdin(std::fs::File::open(write_tmp(other)).unwrap())
            .output()
            .unwrap();
        let sig = String::from_utf8(out.stdout).unwrap();
        assert_eq!(post(&url, other, Some(sig.trim())).status, 200);
    }
    // 401 bodies are JSON errors and nothing was stored from them.
    let r = post(
        &url,
        br#"{"event_type":"test_webhook","timestamp":99}"#,
        None,
    );
    assert_eq!(r.status, 401);
    assert!(r.body["error"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("signature"));
    assert_eq!(s.stored().len(), 2);
}

fn write_tmp(body: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "hookhost-sig-{}-{}",
        std::process::id(),
        body.len()
    ));
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn unsigned_tenant_accepts_unsigned_events() {
    let s = TestServer::start(CONFIG);
    let r = post(
        &s.url("/webhook/open"),
        samples::ACK_UPDATE.as_bytes(),
        None,
    );
    assert_eq!(r.status, 200);
}

#[test]
fn malformed_bodies_are_4xx_and_nothing_is_stored() {
    let s = TestServer::start(CONFIG);
    let url = s.url("/webhook");
    let truncated = &samples::MESSAGE_RECEIVED.as_bytes()[..40];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"hello".to_vec()),
        ("array", b"[1,2]".to_vec()),
        ("string", b"\"x\"".to_vec()),
        ("truncated", truncated.to_vec()),
        (
            "invalid utf-8",
            b"{\"event_type\":\"message_received\",\"id\":\"\xff\"}".to_vec(),
        ),
        ("empty", b"".to_vec()),
        (
            "missing id",
            br#"{"event_type":"message_received","body":"x"}"#.to_vec(),
        ),
        (
            "missing ack",
            br#"{"event_type":"ack_update","id":"x"}"#.to_vec(),
        ),
        ("missing event_type", br#"{"id":"x"}"#.to_vec()),
        (
            "wrong type",
            br#"{"event_type":"message_received","id":"x","from_me":"yes"}"#.to_vec(),
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        ),
        (
            "duplicate keys",
            br#"{"event_type":"ack_update","id":"a","ack":"read","ack":"sent"}"#.to_vec(),
        ),
    ];
    for (name, body) in &cases {
        let r = post_signed(&url, body, "s3cret");
        assert_eq!(r.status, 400, "{name}: {:?}", r.body);
        assert!(r.body["error"].is_string(), "{name}: JSON error body");
    }
    assert!(s.stored().is_empty());
}

/// A sender that asks before it sends (`Expect: 100-continue`) a body
/// larger than the limit is answered 413 at once, not `100 Continue`
/// (nor left waiting: the request timeout is 10 s). The metric names only
/// configured tenants.
#[test]
fn a_body_declared_too_large_is_refused_before_it_is_sent() {
    use std::io::{Read, Write};
    let s = TestServer::start(CONFIG);
    let addr = s.url("").trim_start_matches("http://").to_string();
    let ask = |path: &str| {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            c,
            "POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
             Content-Length: 99999999999\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the whole answer is in (the server closes the connection,
        // whose body it did not read), or 5 s.
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    for path in ["/webhook", "/webhook/acme", "/webhook/invented/"] {
        let answer = ask(path);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{path}: {answer}");
        assert!(
            answer.contains("body too large (limit 1048576 bytes)"),
            "{answer}"
        );
        assert!(!answer.contains("100 Continue"), "{answer}");
    }
    let text = metrics_text(&s.url("/metrics"));
    for tenant in ["default", "acme", "-"] {
        let line = format!(
            "hookhost_events_received_total{{tenant=\"{tenant}\",event_type=\"-\",outcome=\"too_large\"}} 1"
        );
        assert!(text.contains(&line), "{line}\n{text}");
    }
    assert!(!text.contains("invented"), "{text}");
    assert!(s.stored().is_empty());
}

#[test]
fn oversize_unknown_tenant_and_wrong_method() {
    let s = TestServer::start(CONFIG);
    let mut big = br#"{"event_type":"message_received","id":"big","body":""#.to_vec();
    big.resize(1024 * 1024 + 1, b'a');
    let r = post_signed(&s.url("/webhook"), &big, "s3cret");
    assert_eq!(r.status, 413);
    assert!(r.body["error"].is_string());
    let r = post_signed(
        &s.url("/webhook/nobody"),
        samples::ACK_UPDATE.as_bytes(),
        "s3cret",
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"], "unknown tenant `nobody`");
    // A name that cannot be a tenant's is not echoed back.
    let r = post_signed(
        &s.url("/webhook/%3Cscript%3E"),
        samples::ACK_UPDATE.as_bytes(),
        "s3cret",
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"], "unknown tenant");
    let r = get(&s.url("/webhook"));
    assert_eq!(r.status, 405);
    assert!(r.body["error"].is_string());
    assert_eq!(get(&s.url("/nothing")).status, 404);
    assert!(s.stored().is_empty());
    assert_eq!(get(&s.url("/healthz")).status, 200);
    assert_eq!(get(&s.url("/readyz")).status, 200);
}

/// A receiver URL configured with a trailing slash reaches the same
/// tenant as without one.
#[test]
fn a_trailing_slash_reaches_the_same_tenant() {
    let s = TestServer::start(CONFIG);
    let r = post_signed(
        &s.url("/webhook/"),
        samples::ACK_UPDATE.as_bytes(),
        "s3cret",
    );
    assert_eq!((r.status, &r.body["duplicate"]), (200, &false.into()));
    let r = post_signed(
        &s.url("/webhook/acme/"),
        samples::ACK_UPDATE.as_bytes(),
        "new-secret",
    );
    assert_eq!((r.status, &r.body["duplicate"]), (200, &false.into()));
    // Each tenant's secret still holds.
    let r = post_signed(
        &s.url("/webhook/acme/"),
        samples::TEST_WEBHOOK.as_bytes(),
        "s3cret",
    );
    assert_eq!(r.status, 401);
    let tenants: Vec<String> = s.stored().into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(tenants, ["default", "acme"]);
    assert_eq!(post(&s.url("/webhook//"), b"{}", None).status, 404);
}

#[test]
fn restart_keeps_idempotency_memory() {
    let mut s = TestServer::start(CONFIG);
    let body = samples::MESSAGE_RECEIVED.as_bytes();
    assert_eq!(
        post_signed(&s.url("/webhook"), body, "s3cret").body["duplicate"],
        false
    );
    s.restart();
    let r = post_signed(&s.url("/webhook"), body, "s3cret");
    assert_eq!(r.status, 200);
    assert_eq!(r.body["duplicate"], true);
    assert_eq!(s.stored().len(), 1);
}

#[test]
fn vanished_data_directory_answers_503_not_a_crash() {
    let s = TestServer::start(CONFIG);
    let url = s.url("/webhook");
    assert_eq!(
        post_signed(&url, samples::ACK_UPDATE.as_bytes(), "s3cret").status,
        200
    );
    std::fs::remove_dir_all(s.data_dir()).unwrap();
    let r = post_signed(&url, samples::TEST_WEBHOOK.as_bytes(), "s3cret");
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("retry-after")));
    assert_eq!(get(&s.url("/readyz")).status, 503);
    assert_eq!(get(&s.url("/healthz")).status, 200);
}

#[test]
fn unusable_data_directory_at_start_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), CONFIG);
    // A file where the data directory should be: nothing can be created.
    std::fs::write(dir.path().join("blocker"), b"x").unwrap();
    config.server.data_dir = dir.path().join("blocker").join("data");
    let s = TestServer::start_in(dir, config);
    let r = post_signed(&s.url("/webhook"), samples::ACK_UPDATE.as_bytes(), "s3cret");
    assert_eq!(r.status, 503);
    assert_eq!(get(&s.url("/readyz")).status, 503);
}

#[test]
fn full_store_answers_503_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), CONFIG);
    config.store.max_size_mb = 1;
    let s = TestServer::start_in(dir, config);
    let url = s.url("/webhook");
    let mut acked = 0;
    let mut full = 0;
    for i in 0..400 {
        let body = serde_json::json!({"event_type":"message_received","id":format!("m{i}"),"body":"x".repeat(8000)}).to_string();
        match post_signed(&url, body.as_bytes(), "s3cret").status {
            200 => acked += 1,
            503 => full += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(full > 0, "the store never filled up");
    assert_eq!(
        s.stored().len(),
        acked,
        "every acknowledged event is stored"
    );
}

/// A store capped by `max_size_mb` that fills up answers 503; with
/// retention, the space of handled events comes back and ingest resumes
/// without a restart.
#[test]
fn retention_frees_a_full_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path(), CONFIG);
    config.store.max_size_mb = 1;
    config.store.retention = hookhost::config::Age::parse("1s").unwrap();
    let s = TestServer::start_in(dir, config);
    let url = s.url("/webhook");
    let body = |i: usize| {
        serde_json::json!({"event_type":"message_received","id":format!("f{i}"),"body":"x".repeat(8000)})
            .to_string()
    };
    let mut i = 0;
    while post_signed(&url, body(i).as_bytes(), "s3cret").status == 200 {
        i += 1;
        assert!(i < 1000, "the store never filled up");
    }
    let full_at = s.stored().len();
    assert!(full_at > 10, "{full_at}");
    // Within a few retention passes every event but the newest goes, and
    // new ones fit again.
    assert!(
        wait_until(std::time::Duration::from_secs(30), || s.stored().len() <= 1),
        "{} events left",
        s.stored().len()
    );
    for j in 0..full_at / 2 {
        let status = post_signed(&url, body(i + j).as_bytes(), "s3cret").status;
        assert_eq!(status, 200, "event {j} after the store was freed");
    }
}
