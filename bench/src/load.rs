//! A closed-loop HTTP load generator: N keep-alive connections, each sending
//! one request after the other for a fixed time. Bodies follow the gateway's
//! event mix with unique ids (a configurable share reuses an earlier id, a
//! duplicate) and are signed like the gateway signs them.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use rand::Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    /// Connection i posts to `paths[i % paths.len()]` (one path per tenant).
    pub paths: Vec<String>,
    pub connections: usize,
    pub duration: Duration,
    pub duplicate_share: f64,
    pub secret: Option<String>,
}

#[derive(Default, Clone)]
pub struct LoadResult {
    pub requests: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: u64,
    /// (start, latency) of every request in µs since the run began.
    pub timeline: Vec<(u64, u64)>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
    /// p99 in ms of the requests that started inside / outside [from, to) µs.
    pub fn p99_split(&self, from: u64, to: u64) -> (f64, f64, usize) {
        let (mut inside, mut outside): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
        for (start, lat) in &self.timeline {
            if *start >= from && *start < to {
                inside.push(*lat);
            } else {
                outside.push(*lat);
            }
        }
        let p = |v: &mut Vec<u64>| {
            v.sort_unstable();
            if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * 0.99) as usize] as f64 / 1000.0
            }
        };
        let n = inside.len();
        (p(&mut inside), p(&mut outside), n)
    }

    pub fn max_ms(&self) -> f64 {
        self.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0
    }
    pub fn status_line(&self) -> String {
        let mut s: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect();
        if self.errors > 0 {
            s.push(format!("errors×{}", self.errors));
        }
        s.join(" ")
    }
}

/// How many chats the events are spread over (`BENCH_CHATS`, 500): fewer
/// chats make longer queues per chat, which the scheduler holds in order.
fn chats() -> u64 {
    static CHATS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CHATS.get_or_init(|| crate::env_num("BENCH_CHATS", 500).max(1))
}

/// The body of request `n` (unique per run thanks to `run_id`).
pub fn body(n: u64, run_id: u64, dup: bool) -> Vec<u8> {
    // Duplicates repeat an earlier message exactly.
    let n = if dup && n > 10 { n / 2 } else { n };
    let id = format!("B{run_id}-{n}");
    let chat = format!("57300{:07}@c.us", n % chats());
    let ts = 1_724_716_800 + n as i64;
    let v = match n % 10 {
        0..=3 => serde_json::json!({
            "event_type": "message_received", "id": id, "instance_id": "123", "chat_id": chat,
            "from": chat, "to": "573009998877@c.us", "from_me": 0, "sender_name": "Cliente",
            "body": "Hola, ¿tienen menú?", "type": "text", "timestamp": ts, "is_group": 0,
            "quoted_message_id": null, "reaction": null, "media_url": null, "latitude": null,
            "longitude": null, "vcard": null, "status": "received", "ack": "pending", "group_sender": null
        }),
        4..=5 => serde_json::json!({
            "event_type": "message_sent", "id": id, "instance_id": "123", "chat_id": chat,
            "from": "573009998877@c.us", "to": chat, "body": "¡Hola! Te comparto el menú 👇",
            "type": "text", "timestamp": ts, "is_group": 0, "status": "sent"
        }),
        6..=8 => serde_json::json!({
            "event_type": "ack_update", "id": format!("B{run_id}-{}", n.saturating_sub(2)),
            "ack": (["sent", "delivered", "read"][(n % 3) as usize])
        }),
        _ => serde_json::json!({
            "event_type": "message_reaction", "instance_id": "123", "message_id": id,
            "from_number": chat, "reaction": "👍", "timestamp": ts
        }),
    };
    serde_json::to_vec(&v).unwrap()
}

pub async fn run(spec: LoadSpec) -> LoadResult {
    let counter = Arc::new(AtomicU64::new(0));
    let run_id: u64 = rand::rng().random_range(0..1_000_000_000);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..spec.connections {
        let spec = spec.clone();
        let path = spec.paths[i % spec.paths.len()].clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            connection(spec, path, counter, run_id, start).await
        }));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        let r = t.await.unwrap_or_default();
        total.requests += r.requests;
        total.errors += r.errors;
        total.latencies_us.extend(r.latencies_us);
        total.timeline.extend(r.timeline);
        for (k, v) in r.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
    }
    total.elapsed = start.elapsed();
    total.latencies_us.sort_unstable();
    total
}

async fn connection(
    spec: LoadSpec,
    path: String,
    counter: Arc<AtomicU64>,
    run_id: u64,
    start: Instant,
) -> LoadResult {
    let mut r = LoadResult::default();
    let mut sender = None;
    while start.elapsed() < spec.duration {
        if sender.is_none() {
            let Ok(stream) = tokio::net::TcpStream::connect(spec.addr).await else {
                r.errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let io = hyper_util::rt::TokioIo::new(stream);
            match hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await {
                Ok((s, conn)) => {
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                Err(_) => {
                    r.errors += 1;
                    continue;
                }
            }
        }
        let s = sender.as_mut().unwrap();
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let dup = rand::rng().random_bool(spec.duplicate_share);
        let b = body(n, run_id, dup);
        let mut req = Request::post(&path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json");
        if let Some(secret) = &spec.secret {
            req = req.header(
                "x-whapi-signature",
                hookhost::signature::sign(secret.as_bytes(), &b),
            );
        }
        let req = req.body(Full::new(Bytes::from(b))).unwrap();
        let t = Instant::now();
        match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                let lat = t.elapsed().as_micros() as u64;
                r.latencies_us.push(lat);
                r.timeline
                    .push((t.duration_since(start).as_micros() as u64, lat));
                *r.statuses.entry(status).or_default() += 1;
                r.requests += 1;
            }
            Err(_) => {
                r.errors += 1;
                sender = None;
            }
        }
    }
    r
}
