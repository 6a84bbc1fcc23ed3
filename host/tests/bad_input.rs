//! The bad-input corpus (`tests/corpus/bad-requests.toml`), slow senders and
//! idle connections: each gets a 4xx or is cut off, nothing is stored, and
//! the server keeps serving others.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SECRET: &str = "corpus";
const CONFIG: &str = r#"
[server]
request_timeout_ms = 1500
header_timeout_ms = 1000
[tenants.default]
secrets = ["corpus"]
rate_limit = { per_second = 0, burst = 0 }
"#;

#[derive(serde::Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    expect: u16,
    body: Option<String>,
    body_hex: Option<String>,
    repeat_open: Option<String>,
    repeat_close: Option<String>,
    repeat: Option<usize>,
    signature: Option<String>,
    path: Option<String>,
    raw: Option<String>,
}

impl Case {
    fn body(&self) -> Vec<u8> {
        if let Some(h) = &self.body_hex {
            return hex::decode(h).unwrap();
        }
        let mut b = Vec::new();
        if let (Some(o), Some(n)) = (&self.repeat_open, self.repeat) {
            b.extend(o.repeat(n).into_bytes());
        }
        b.extend(self.body.clone().unwrap_or_default().into_bytes());
        if let (Some(c), Some(n)) = (&self.repeat_close, self.repeat) {
            b.extend(c.repeat(n).into_bytes());
        }
        b
    }
}

/// Sends raw bytes; returns the status code, or None if the server closed
/// the connection without one.
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

#[test]
fn every_corpus_case_is_refused_and_nothing_is_stored() {
    let corpus: Corpus = toml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/corpus/bad-requests.toml"
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(
        corpus.case.len() >= 40,
        "the corpus has {} cases",
        corpus.case.len()
    );
    let s = TestServer::start(CONFIG);
    let addr = s.handle.as_ref().unwrap().addr;
    let mut by_status = std::collections::BTreeMap::new();
    for c in &corpus.case {
        let status = if let Some(r) = &c.raw {
            raw(addr, r.as_bytes())
        } else {
            let body = c.body();
            let sig = match c.signature.as_deref() {
                None => Some(hookhost::signature::sign(SECRET.as_bytes(), &body)),
                Some("") => None,
                Some("other-body") => Some(hookhost::signature::sign(SECRET.as_bytes(), b"{}")),
                Some("SPLIT") => {
                    let s = hookhost::signature::sign(SECRET.as_bytes(), &body);
                    Some(format!("{} {}", &s[..32], &s[32..]))
                }
                Some(other) => Some(other.to_string()),
            };
            let url = s.url(c.path.as_deref().unwrap_or("/webhook"));
            let r = post(&url, &body, sig.as_deref());
            assert!(
                r.body["error"].is_string(),
                "{}: not a JSON error: {:?}",
                c.name,
                r.body
            );
            Some(r.status)
        };
        // Protocol errors may be answered by the HTTP layer or by closing.
        match status {
            Some(code) => assert_eq!(code, c.expect, "{}", c.name),
            None => assert!(
                c.raw.is_some(),
                "{}: connection closed without an answer",
                c.name
            ),
        }
        *by_status
            .entry(status.map(|s| s.to_string()).unwrap_or("closed".into()))
            .or_insert(0) += 1;
        // The server keeps serving others after every case.
        assert_eq!(get(&s.url("/healthz")).status, 200, "after {}", c.name);
    }
    assert!(s.stored().is_empty(), "{:?}", s.stored());
    println!(
        "corpus: {} cases, by answer: {by_status:?}",
        corpus.case.len()
    );
}

#[test]
fn slow_senders_and_idle_connections_are_cut_off() {
    let s = TestServer::start(CONFIG);
    let addr = s.handle.as_ref().unwrap().addr;
    // Many idle connections: they do not stop anyone else.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let body = hookhost::samples::TEST_WEBHOOK.as_bytes();
    assert_eq!(post_signed(&s.url("/webhook"), body, SECRET).status, 200);
    // A slow-loris sender: one header byte every 200 ms.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let request = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n{}";
    let mut cut = false;
    for b in request.iter() {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert!(
        cut || n == 0 || buf.starts_with(b"HTTP/1.1 408"),
        "slow sender still connected: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "cut off after {:?}",
        start.elapsed()
    );
    // The idle connections were closed by the server too.
    let closed = idle
        .into_iter()
        .filter(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            matches!(c.read(&mut [0u8; 1]), Ok(0) | Err(_))
        })
        .count();
    assert_eq!(closed, 200);
    // A slow body (headers sent, body trickling) is cut by the request timeout.
    let mut trickle = TcpStream::connect(addr).unwrap();
    trickle
        .write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = Instant::now();
    let n = trickle.read(&mut buf).unwrap_or(0);
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 408") || n == 0,
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(t.elapsed() < Duration::from_secs(4));
    // Still serving.
    let r = post_signed(
        &s.url("/webhook"),
        br#"{"event_type":"test_webhook","timestamp":2}"#,
        SECRET,
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.stored().len(), 2);
}

/// Past `max_inflight` requests at once, the next is answered 503 with
/// `Retry-After` at once (not queued behind them), and the permits come
/// back when the requests holding them end: here one held by a body that
/// never finishes, until the request timeout cuts it off.
#[test]
fn requests_past_the_in_flight_cap_are_shed_until_a_place_frees() {
    let s = TestServer::start(&CONFIG.replace("[server]", "[server]\nmax_inflight = 1"));
    let addr = s.handle.as_ref().unwrap().addr;
    let body = hookhost::samples::TEST_WEBHOOK.as_bytes();
    let hold = || {
        let mut held = TcpStream::connect(addr).unwrap();
        held.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            .unwrap();
        held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        held
    };
    // The held request must take the place first: had the other reached
    // the server before it, the held one is the one shed. Try again then.
    let mut tries = 0;
    let (mut held, shed) = loop {
        tries += 1;
        assert!(tries <= 20, "the held request never took the place");
        let held = hold();
        std::thread::sleep(Duration::from_millis(100));
        let r = post_signed(&s.url("/webhook"), body, SECRET);
        if r.status == 503 {
            break (held, r);
        }
    };
    assert!(
        shed.headers
            .iter()
            .any(|(k, v)| k == "retry-after" && v == "1"),
        "{:?}",
        shed.headers
    );
    assert!(shed.body["error"].is_string());
    // Answered at once, not queued behind the held request: that one is
    // still unanswered.
    held.set_nonblocking(true).unwrap();
    let unanswered = held.peek(&mut [0u8; 1]);
    assert!(
        matches!(&unanswered, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{unanswered:?}"
    );
    held.set_nonblocking(false).unwrap();
    // The timeout ends the held request and gives its place back.
    let mut buf = [0u8; 256];
    let n = held.read(&mut buf).unwrap_or(0);
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 408") || n == 0,
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(post_signed(&s.url("/webhook"), body, SECRET).status, 200);
    assert_eq!(s.stored().len(), 1);
}

/// A server out of file descriptors (its limit lowered under it, then
/// more connections than it can take): it says so once, not at every
/// accept it retries, keeps its open connections, and says when accepting
/// works again.
#[test]
fn running_out_of_file_descriptors_is_logged_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hookhost.toml");
    std::fs::write(&cfg, "[tenants.default]\n").unwrap();
    let server =
        common::process::Proc::start(&cfg, &dir.path().join("data"), &dir.path().join("plugins"));
    assert_eq!(get(&server.url("/readyz")).status, 200);
    let pid = server.child.id() as libc::pid_t;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    // Room for five more descriptors.
    let limit = libc::rlimit {
        rlim_cur: open + 5,
        rlim_max: open + 5,
    };
    // SAFETY: sets the resource limit of our own child from a valid struct.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    let addr = server.addr.clone();
    let flood: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let failing = "accepting connections: failing";
    assert!(wait_until(Duration::from_secs(10), || server
        .count_lines(failing)
        == 1));
    // Two seconds of retried accepts (and of the odd one taken when the
    // server frees a descriptor for a moment): still one line.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.count_lines(failing), 1);
    drop(flood);
    // Connections taken again for a second after the last refused one:
    // the failure is over, said once.
    assert!(wait_until(Duration::from_secs(10), || {
        get(&server.url("/healthz"));
        server.count_lines("accepting connections: working again") == 1
    }));
    assert_eq!(get(&server.url("/readyz")).status, 200);
}
