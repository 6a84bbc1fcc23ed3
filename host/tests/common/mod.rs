//! Shared test helpers: a real server on 127.0.0.1 with an ephemeral port,
//! a real SQLite file in a temporary folder, and a plain HTTP client.
#![allow(dead_code)]

use hookhost::config::Config;
use hookhost::server::{spawn, ServerHandle};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
    pub config: Config,
}

pub fn config(dir: &Path, toml: &str) -> Config {
    let mut c = Config::parse(toml).expect("test config parses");
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.data_dir = dir.join("data");
    if c.server.plugins_dir == PathBuf::from("hookhost-plugins") {
        c.server.plugins_dir = dir.join("plugins");
    }
    c
}

impl TestServer {
    pub fn start(toml: &str) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), toml);
        Self::start_in(dir, config)
    }

    pub fn start_in(dir: tempfile::TempDir, config: Config) -> TestServer {
        let handle = spawn(config.clone()).expect("server starts");
        TestServer { handle: Some(handle), dir, config }
    }

    pub fn url(&self, path: &str) -> String {
        self.handle.as_ref().unwrap().url(path)
    }

    /// Stops gracefully and starts again on the same data (new port).
    pub fn restart(&mut self) {
        self.handle.take().unwrap().stop().unwrap();
        self.handle = Some(spawn(self.config.clone()).expect("server restarts"));
    }

    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop().unwrap();
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.server.data_dir.clone()
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.config.server.plugins_dir.clone()
    }

    /// Events stored, straight from the SQLite file.
    pub fn stored(&self) -> Vec<(String, String, String)> {
        let c = hookhost::store::open_read_only(&self.data_dir()).unwrap();
        hookhost::store::list_events(&c, None, 0, 100_000)
            .unwrap()
            .into_iter()
            .map(|e| (e.tenant, e.event_type, e.key))
            .collect()
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

pub struct Resp {
    pub status: u16,
    pub body: serde_json::Value,
    pub headers: Vec<(String, String)>,
}

pub fn post(url: &str, body: &[u8], signature: Option<&str>) -> Resp {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    if let Some(s) = signature {
        req = req.header("X-Whapi-Signature", s);
    }
    finish(req.send(body).expect("request completes"))
}

pub fn post_signed(url: &str, body: &[u8], secret: &str) -> Resp {
    let sig = hookhost::signature::sign(secret.as_bytes(), body);
    post(url, body, Some(&sig))
}

pub fn get(url: &str) -> Resp {
    finish(agent().get(url).call().expect("request completes"))
}

fn finish(mut r: ureq::http::Response<ureq::Body>) -> Resp {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = r.body_mut().with_config().limit(64 << 20).read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Resp { status, body, headers }
}

/// Polls `f` until it returns true, at most `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
