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
    if c.server.plugins_dir.as_path() == Path::new("hookhost-plugins") {
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
        TestServer {
            handle: Some(handle),
            dir,
            config,
        }
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

    /// Starts again after [`TestServer::stop`], on the same data (and
    /// the same port when the configuration fixes one).
    pub fn start_again(&mut self) {
        assert!(self.handle.is_none(), "still running");
        self.handle = Some(spawn(self.config.clone()).expect("server restarts"));
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.server.data_dir.clone()
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.config.server.plugins_dir.clone()
    }

    /// Waits for every named plugin to be loaded: [`wait_loaded`].
    pub fn wait_loaded(&self, names: &[&str]) {
        wait_loaded(&self.url("/metrics"), names);
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
    let text = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Resp {
        status,
        body,
        headers,
    }
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

pub mod process;
pub mod whapi;

/// Builds the test plugins once per test binary and returns their folder.
pub fn test_plugins() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| build_workspace("tests/plugins", "test-plugins"))
        .clone()
}

/// A component of the hookhost:plugin world around a hand-written core
/// module (`tests/plugins/wat/NAME.core.wat`), for attacks no guest
/// language can express.
pub fn component_from_core_wat(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut module = wat::parse_file(root.join(format!("tests/plugins/wat/{name}.core.wat")))
        .expect("core module parses");
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(root.join("wit/since_v0.1.0"))
        .expect("the WIT package parses");
    let world = resolve.select_world(&[pkg], Some("plugin")).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .expect("a component of the plugin world")
}

/// Builds the sample plugins once per test binary and returns their folder.
pub fn sample_plugins() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| build_workspace("plugins", "sample-plugins"))
        .clone()
}

fn build_workspace(ws: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = target.join(name);
    let status = std::process::Command::new("bash")
        .arg(root.join("scripts/build-plugins.sh"))
        .arg(ws)
        .arg(&out)
        .status()
        .expect("run build-plugins.sh");
    assert!(status.success(), "building {ws} failed");
    out
}

/// Copies a built plugin into the server's plugins folder under `name`,
/// with an optional sidecar.
pub fn deploy(from: &Path, plugin: &str, dir: &Path, name: &str, sidecar: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    if let Some(s) = sidecar {
        std::fs::write(dir.join(format!("{name}.toml")), s).unwrap();
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(from.join(format!("{plugin}.wasm")), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

/// Deliveries from the ledger: (event seq, plugin, state, attempts, last error, hash).
pub fn deliveries(data_dir: &Path) -> Vec<hookhost::store::DeliveryRow> {
    match hookhost::store::open_read_only(data_dir) {
        Ok(c) => {
            hookhost::store::list_deliveries(&c, &Default::default(), 1_000_000).unwrap_or_default()
        }
        Err(_) => vec![],
    }
}

/// Waits until every stored event has been handed to its plugins (its
/// delivery rows exist), every delivery is done or dead and at least `min`
/// exist.
pub fn wait_settled(
    data_dir: &Path,
    min: usize,
    timeout: Duration,
) -> Vec<hookhost::store::DeliveryRow> {
    // Polled with an index probe and a count, the rows read once at the
    // end: reading every row at each poll would take much of the CPU that
    // the deliveries, at idle priority, are waiting for.
    wait_until(timeout, || settled(data_dir, min));
    deliveries(data_dir)
}

/// Whether every stored event has been fanned out (the cursor and the
/// delivery rows it made are committed together), at least `min`
/// deliveries exist and none is still open. One statement, so one
/// snapshot: checked apart, an event fanned out between the two reads
/// would pass with its deliveries still open.
fn settled(data_dir: &Path, min: usize) -> bool {
    let Ok(c) = hookhost::store::open_read_only(data_dir) else {
        return false;
    };
    c.query_row(
        "SELECT (SELECT COALESCE(MAX(seq), 0) FROM events)
                    <= COALESCE((SELECT value FROM meta WHERE key = 'fanout_cursor'), 0)
                AND NOT EXISTS (SELECT 1 FROM deliveries
                                WHERE state IN ('pending', 'running', 'failed'))
                AND (SELECT count(*) FROM deliveries) >= ?1",
        [min as i64],
        |r| r.get::<_, bool>(0),
    )
    .unwrap_or(false)
}

/// Rows of a plugin's private SQL database.
pub fn plugin_sql(data_dir: &Path, tenant: &str, plugin: &str, query: &str) -> Vec<Vec<String>> {
    let path = data_dir
        .join("plugin-data")
        .join(tenant)
        .join(format!("{plugin}.sqlite"));
    let Ok(c) =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return vec![];
    };
    let Ok(mut st) = c.prepare(query) else {
        return vec![];
    };
    let n = st.column_count();
    st.query_map([], |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => "NULL".to_string(),
                rusqlite::types::ValueRef::Integer(i) => i.to_string(),
                rusqlite::types::ValueRef::Real(f) => f.to_string(),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                rusqlite::types::ValueRef::Blob(b) => format!("{b:?}"),
            })
            .collect())
    })
    .map(|it| it.filter_map(Result::ok).collect())
    .unwrap_or_default()
}

/// The `/metrics` text at `url`.
pub fn metrics_text(url: &str) -> String {
    get(url).body.as_str().unwrap_or_default().to_string()
}

/// Whether every named plugin is loaded, by the plugins gauge at `url`.
pub fn all_loaded(url: &str, names: &[&str]) -> bool {
    let t = metrics_text(url);
    names
        .iter()
        .all(|p| t.contains(&format!("hookhost_plugins_loaded{{plugin=\"{p}\"")))
}

/// Waits up to a minute for the metrics at `url` to show every named
/// plugin loaded; panics with the plugin gauges it saw instead.
pub fn wait_loaded(url: &str, names: &[&str]) {
    if wait_until(Duration::from_secs(60), || all_loaded(url, names)) {
        return;
    }
    let gauges: Vec<String> = metrics_text(url)
        .lines()
        .filter(|l| l.starts_with("hookhost_plugins_"))
        .map(String::from)
        .collect();
    panic!("{names:?} not loaded within 60 s:\n{}", gauges.join("\n"));
}

/// The value of the first line of metrics `text` that starts with
/// `line_prefix` (a series' name and labels).
pub fn metric(text: &str, line_prefix: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
}

/// How many plugins the gauge at `url` shows loaded.
pub fn loaded_count(url: &str) -> usize {
    metrics_text(url)
        .lines()
        .filter(|l| l.starts_with("hookhost_plugins_loaded{"))
        .count()
}

/// A minimal incoming text message `id` in `chat`, saying "hola".
/// How many deliveries are `done` among those `which` picks.
pub fn done_count(data_dir: &Path, which: impl Fn(&hookhost::store::DeliveryRow) -> bool) -> usize {
    deliveries(data_dir)
        .iter()
        .filter(|d| d.state == "done" && which(d))
        .count()
}

pub fn hola_event(id: &str, chat: &str) -> String {
    serde_json::json!({"event_type": "message_received", "id": id, "chat_id": chat, "body": "hola"})
        .to_string()
}
