//! A stand-in for the gateway's send API: a real HTTP server on 127.0.0.1
//! that records every request and answers as told.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
}

impl FakeWhapi {
    pub fn start() -> FakeWhapi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let fail_first = Arc::new(AtomicUsize::new(0));
        let (r, f) = (requests.clone(), fail_first.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let (r, f) = (r.clone(), f.clone());
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
                            reader.read_line(&mut h).unwrap();
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
                        reader.read_exact(&mut body).unwrap();
                        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        let n = {
                            let mut g = r.lock().unwrap();
                            g.push(Recorded {
                                path,
                                headers,
                                body,
                            });
                            g.len()
                        };
                        let fail = f
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                            .is_ok();
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
        }
    }

    pub fn sent(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl FakeWhapi {
    /// Accepted sends, one per idempotency key (a gateway that honours the
    /// key keeps the first).
    pub fn unique_sends(&self) -> Vec<Recorded> {
        let mut seen = std::collections::HashSet::new();
        self.sent()
            .into_iter()
            .filter(|r| {
                let key = r
                    .headers
                    .iter()
                    .find(|(k, _)| k == "idempotency-key")
                    .map(|(_, v)| v.clone());
                seen.insert(key.unwrap_or_default())
            })
            .collect()
    }
}
