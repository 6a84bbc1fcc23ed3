//! A stand-in for the gateway's send API: a real HTTP server on 127.0.0.1
//! that records every request and answers as told. Like the real gateway it
//! can announce each accepted message with a `message_sent` webhook (the
//! echo), retried until the receiver answers 200.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

pub struct FakeWhapi {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Answer 500 to this many requests first.
    pub fail_first: Arc<AtomicUsize>,
    /// Accept this many requests first but answer only after `slow_ms`.
    pub slow_first: Arc<AtomicUsize>,
    pub slow_ms: Arc<AtomicU64>,
    /// Where to post the echo of each accepted message (none: no echo).
    pub echo_to: Arc<Mutex<Option<String>>>,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl FakeWhapi {
    pub fn start() -> FakeWhapi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let fail_first = Arc::new(AtomicUsize::new(0));
        let slow_first = Arc::new(AtomicUsize::new(0));
        let slow_ms = Arc::new(AtomicU64::new(0));
        let echo_to: Arc<Mutex<Option<String>>> = Arc::default();
        let (echo_tx, echo_rx) = mpsc::channel::<String>();
        let target = echo_to.clone();
        std::thread::spawn(move || post_echoes(echo_rx, target));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let (r, f, sf, sm, et) = (
            requests.clone(),
            fail_first.clone(),
            slow_first.clone(),
            slow_ms.clone(),
            echo_to.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (r, f, sf, sm, et) = (r.clone(), f.clone(), sf.clone(), sm.clone(), et.clone());
                let echo_tx = echo_tx.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(s.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        let mut headers = Vec::new();
                        let mut len = 0usize;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    len = v.trim().parse().unwrap_or(0);
                                }
                                headers.push((k.to_lowercase(), v.trim().to_string()));
                            }
                        }
                        let mut body = vec![0; len];
                        if reader.read_exact(&mut body).is_err() {
                            // The sender died mid-request: nothing was sent.
                            return;
                        }
                        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        let n = {
                            let mut g = r.lock().unwrap();
                            g.push(Recorded {
                                path,
                                headers,
                                body: body.clone(),
                            });
                            g.len()
                        };
                        let fail = f
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                            .is_ok();
                        if !fail && et.lock().unwrap().is_some() {
                            let to = body["to"].as_str().unwrap_or_default();
                            let echo = serde_json::json!({
                                "event_type": "message_sent",
                                "id": format!("gw-{n}"),
                                "instance_id": body["instanceId"],
                                "chat_id": to,
                                "from": "me",
                                "to": to,
                                "body": body["message"],
                                "type": "text",
                                "timestamp": 1724716890,
                                "status": "sent",
                            });
                            let _ = echo_tx.send(echo.to_string());
                        }
                        if !fail
                            && sf
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                                    v.checked_sub(1)
                                })
                                .is_ok()
                        {
                            std::thread::sleep(Duration::from_millis(sm.load(Ordering::SeqCst)));
                        }
                        let (status, text) = if fail {
                            (
                                "500 Internal Server Error",
                                r#"{"error":"try later"}"#.to_string(),
                            )
                        } else {
                            (
                                "200 OK",
                                format!(r#"{{"sent":true,"message":{{"id":"gw-{n}"}}}}"#),
                            )
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if s.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeWhapi {
            url,
            requests,
            fail_first,
            slow_first,
            slow_ms,
            echo_to,
            connections,
        }
    }

    /// The Idempotency-Key header of every request, in order.
    pub fn idempotency_keys(&self) -> Vec<String> {
        self.sent()
            .iter()
            .map(|r| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == "idempotency-key")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Announce accepted messages to this webhook URL from now on.
    pub fn echo_to(&self, url: &str) {
        *self.echo_to.lock().unwrap() = Some(url.to_string());
    }

    pub fn sent(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Posts each echo in order, retrying every 50 ms (for up to a minute)
/// until the receiver, which may be restarting, answers 200.
fn post_echoes(rx: mpsc::Receiver<String>, target: Arc<Mutex<Option<String>>>) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .new_agent();
    for echo in rx {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let Some(url) = target.lock().unwrap().clone() else {
                break;
            };
            let ok = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(echo.as_str())
                .map(|r| r.status() == 200)
                .unwrap_or(false);
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
