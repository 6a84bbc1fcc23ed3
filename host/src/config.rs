//! The operator's configuration: a TOML file, overridden by command-line flags
//! and `HOOKHOST_*` environment variables. Everything is validated once at
//! start so a running server never meets a half-valid config.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The tenant that `POST /webhook` (without a tenant) belongs to.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message (not a `source`, which an
    /// error chain would print a second time).
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("tenant `{tenant}`: environment variable {var} is not set (write `env:{var}?` to make it optional)")]
    MissingEnv { tenant: String, var: String },
    #[error("tenant `{tenant}`: secret file {path}: {message} (write `file:{path}?` to make it optional)")]
    SecretFile {
        tenant: String,
        path: String,
        message: String,
    },
    #[error("invalid tenant name `{0}`: use letters, digits, `-` and `_`")]
    TenantName(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub limits: Limits,
    pub dispatch: DispatchConfig,
    pub runtime: RuntimeConfig,
    pub admin: AdminConfig,
    pub tenants: BTreeMap<String, TenantConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`: literal, `env:VAR`, `file:PATH` (each
    /// with `?` for optional). Without
    /// one the admin API is off.
    pub token: Option<String>,
}

impl AdminConfig {
    pub fn resolve(&self) -> Result<Option<Secret>, ConfigError> {
        match &self.token {
            None => Ok(None),
            Some(t) => resolve("admin", t),
        }
    }
}

/// Token bucket: `per_second` sustained, `burst` at once (twice
/// `per_second` when not given).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(try_from = "RateLimitFields")]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFields {
    per_second: f64,
    burst: Option<f64>,
}

impl TryFrom<RateLimitFields> for RateLimit {
    type Error = String;
    fn try_from(f: RateLimitFields) -> Result<Self, String> {
        let limit = RateLimit {
            per_second: f.per_second,
            burst: f.burst.unwrap_or(f.per_second * 2.0),
        };
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !ok(limit.per_second) || !ok(limit.burst) {
            return Err("rate_limit: per_second and burst must be numbers ≥ 0".into());
        }
        Ok(limit)
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 500.0,
            burst: 1000.0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut tenants = BTreeMap::new();
        tenants.insert(DEFAULT_TENANT.to_string(), TenantConfig::default());
        Config {
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            limits: Limits::default(),
            dispatch: DispatchConfig::default(),
            runtime: RuntimeConfig::default(),
            admin: AdminConfig::default(),
            tenants,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub plugins_dir: PathBuf,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A request that has not been answered in this time is cut off.
    pub request_timeout_ms: u64,
    /// Requests handled at once; past it the answer is 503 at once.
    pub max_inflight: usize,
    /// Open connections; past it new ones are closed at once.
    pub max_connections: usize,
    /// A client must send a request's headers within this time, and an idle
    /// keep-alive connection is closed after it (slow-loris senders).
    pub header_timeout_ms: u64,
    /// Keep each request thread on a CPU of its own (`hookhost serve`,
    /// when there is one thread per CPU; see `pinning`). Restart to change.
    pub pin_request_threads: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            data_dir: PathBuf::from("hookhost-data"),
            plugins_dir: PathBuf::from("hookhost-plugins"),
            max_body_bytes: 1024 * 1024,
            request_timeout_ms: 10_000,
            max_inflight: 1024,
            max_connections: 4096,
            header_timeout_ms: 10_000,
            pin_request_threads: true,
        }
    }
}

/// SQLite's `synchronous` setting for the inbox.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit is on disk before the 200 (the default).
    Full,
    /// Survives a process crash but may lose the last commits on power loss.
    Normal,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub synchronous: Synchronous,
    /// Most operations committed in one transaction by the writer.
    pub max_batch: usize,
    /// Database size cap in MiB (0 = none). A full store answers 503.
    pub max_size_mb: u64,
    /// How long events are kept once every plugin has handled them, e.g.
    /// `"30d"`, `"12h"` (`"0"` or none: for ever). See `store::retention`.
    pub retention: Age,
}

/// A length of time written `N` plus a unit: `s`, `m`, `h` or `d`
/// (`"90m"`, `"30d"`); `"0"` means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Age(pub Option<std::time::Duration>);

impl Age {
    pub fn parse(text: &str) -> Result<Age, String> {
        let t = text.trim();
        if t == "0" || t.is_empty() {
            return Ok(Age(None));
        }
        let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let secs = match unit.trim() {
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86_400),
            _ => None,
        };
        let n = n.parse::<u64>().ok();
        match n.zip(secs).and_then(|(n, unit)| n.checked_mul(unit)) {
            Some(0) => Ok(Age(None)),
            Some(s) => Ok(Age(Some(std::time::Duration::from_secs(s)))),
            None => Err(format!(
                "invalid length of time `{text}`: write a number and s, m, h or d (\"30d\")"
            )),
        }
    }
}

impl Age {
    /// [`Age::parse`] for a length that must be above zero (what to prune).
    pub fn parse_positive(text: &str) -> Result<std::time::Duration, String> {
        Age::parse(text)?
            .0
            .ok_or_else(|| "give an age above zero, e.g. 30d".into())
    }
}

impl<'de> Deserialize<'de> for Age {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Age::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            synchronous: Synchronous::Full,
            max_batch: 512,
            max_size_mb: 0,
            retention: Age(None),
        }
    }
}

/// Sandbox limits of one delivery. Every field may be overridden per tenant
/// and per plugin.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// WebAssembly fuel (roughly instructions) per delivery, start-up included.
    pub fuel: u64,
    /// Linear memory of one instance, in MiB.
    pub memory_mb: u64,
    /// Wall-clock deadline of one delivery.
    pub timeout_ms: u64,
    /// Log lines one delivery may write; the rest are counted and dropped.
    pub log_lines: u32,
    /// Key-value quota per (tenant, plugin), in keys and in bytes.
    pub kv_keys: u64,
    pub kv_bytes: u64,
    /// SQL database cap per (tenant, plugin), in MiB, and rows per query.
    pub sql_mb: u64,
    pub sql_rows: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000,
            memory_mb: 64,
            timeout_ms: 2_000,
            log_lines: 100,
            kv_keys: 10_000,
            kv_bytes: 16 * 1024 * 1024,
            sql_mb: 64,
            sql_rows: 10_000,
        }
    }
}

/// A partial [`Limits`]: only the fields that are set override.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub fuel: Option<u64>,
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub log_lines: Option<u32>,
    pub kv_keys: Option<u64>,
    pub kv_bytes: Option<u64>,
    pub sql_mb: Option<u64>,
    pub sql_rows: Option<u64>,
}

impl LimitsOverride {
    /// The first of the limits every delivery needs above zero (fuel,
    /// memory, time) that is set to 0: with it no delivery could run.
    pub fn zero(&self) -> Option<&'static str> {
        [
            ("fuel", self.fuel),
            ("memory_mb", self.memory_mb),
            ("timeout_ms", self.timeout_ms),
        ]
        .into_iter()
        .find(|(_, v)| *v == Some(0))
        .map(|(name, _)| name)
    }

    /// [`Self::zero`] as an error naming where the limits are written.
    pub fn check(&self, place: &str) -> Result<(), String> {
        match self.zero() {
            Some(name) => Err(format!(
                "{place}: {name} must be above 0 (no delivery could run with 0)"
            )),
            None => Ok(()),
        }
    }
}

impl Limits {
    pub fn apply(mut self, o: &LimitsOverride) -> Limits {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = o.$f { self.$f = v; } )* };
        }
        set!(fuel, memory_mb, timeout_ms, log_lines, kv_keys, kv_bytes, sql_mb, sql_rows);
        self
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Tries of one delivery before it becomes a dead letter.
    pub max_attempts: u32,
    /// First retry delay; doubled each time, with jitter, up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Deliveries running at once in the whole process.
    pub workers: usize,
    /// Deliveries running at once in the whole process while webhook
    /// events queue for the store (eight or more waiting for one commit,
    /// within the last quarter second): each delivery's ledger marks and
    /// key-value writes go through the same commits and lengthen that
    /// wait, so ingest comes first and the plugins catch up once the
    /// queue is short. At most `workers`; equal to it, no difference.
    pub busy_workers: usize,
    /// Deliveries running at once for one tenant.
    pub tenant_concurrency: usize,
    /// How long one of those slots may go on running a plugin's queued
    /// deliveries one after another (each of another chat, each in a fresh
    /// instance) before it gives the slot back, in ms. A plugin that
    /// answers in microseconds then shares two ledger commits among many
    /// deliveries instead of paying two for each; a slow one (waiting on
    /// the gateway) runs one delivery per slot. 0: always one; at most
    /// 10 000.
    pub run_ms: u64,
    /// Nice value of the threads that compile plugins, and of those that
    /// run them when `idle_priority` is off (Linux): above 0, ingest gets
    /// the CPU first and plugins catch up in the time left over.
    pub nice: i32,
    /// Deliveries, and the dispatcher that fans events out and schedules
    /// them, run at the kernel's idle priority (Linux `SCHED_IDLE`): they
    /// take only CPU time nothing else wants and give way at once to a
    /// request, however long their run. On a machine kept busy by other
    /// programs they then nearly stop until it frees up (a few deliveries a
    /// second); off, they run at `nice`, a larger share at some cost to
    /// ingest while it is busy.
    pub idle_priority: bool,
    /// Deliveries created ahead of the plugins (waiting to run). Beyond it,
    /// new events wait in the inbox, committed, and are fanned out as the
    /// plugins catch up, so a burst of traffic costs ingest one row per
    /// event rather than one per plugin as well. 0: no limit.
    pub max_pending: usize,
}

/// The longest `dispatch.run_ms` accepted.
const MAX_RUN_MS: u64 = 10_000;

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_attempts: 8,
            backoff_base_ms: 500,
            backoff_max_ms: 5 * 60_000,
            workers: 16,
            busy_workers: 2,
            tenant_concurrency: 4,
            run_ms: 5,
            nice: 10,
            idle_priority: true,
            max_pending: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Pre-reserved instance slots: much faster instantiation.
    pub pooling: bool,
    /// Largest memory limit any plugin may be given, in MiB (pooling slots
    /// are sized for it).
    pub max_memory_mb: u64,
    /// Compiled-code cache (default: DATA_DIR/cache). Entries are keyed by
    /// the component's hash and the engine's settings, so sharing is safe.
    pub cache_dir: Option<PathBuf>,
    /// Compile plugins with every core: faster loads, but a large component
    /// then competes with requests for the CPU. Off by default.
    pub parallel_compile: bool,
    /// Components of at least this many KiB are compiled by a child
    /// process (`hookhost compile-worker`), so the compiler's working memory
    /// (hundreds of MiB for a JavaScript or Python component) is returned
    /// when it exits and never counts against the server. 0: always in
    /// process.
    pub compile_process_min_kb: u64,
    /// The compile cache's size limit in MiB: past it, the least recently
    /// used entries of plugins no longer loaded go. 0: no limit.
    pub cache_max_mb: u64,
    /// The hookhost binary that runs the child compiler; set by `serve`.
    #[serde(skip)]
    pub compiler_exe: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            pooling: true,
            max_memory_mb: 128,
            cache_dir: None,
            parallel_compile: false,
            compile_process_min_kb: 1024,
            cache_max_mb: 2048,
            compiler_exe: None,
        }
    }
}

/// A capability a plugin may be granted.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    Log,
    Kv,
    Sql,
    Messaging,
    Config,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Log => "log",
            Grant::Kv => "kv",
            Grant::Sql => "sql",
            Grant::Messaging => "messaging",
            Grant::Config => "config",
        }
    }

    /// What a plugin gets when the operator says nothing: everything that
    /// stays inside its own sandbox. Sending messages must be granted.
    pub const DEFAULT: [Grant; 4] = [Grant::Log, Grant::Kv, Grant::Sql, Grant::Config];

    /// Every capability (the plugin test runner and benchmarks).
    pub const ALL: [Grant; 5] = [
        Grant::Log,
        Grant::Kv,
        Grant::Sql,
        Grant::Config,
        Grant::Messaging,
    ];
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Accepted signing secrets: literals, `env:VAR` or `file:PATH` (with a
    /// trailing `?`: optional). Files are read again on a reload.
    pub secrets: Vec<String>,
    /// Plugins (file names without `.wasm`) that run for this tenant.
    pub plugins: Vec<String>,
    /// Per-plugin grants, limits and settings.
    pub plugin: BTreeMap<String, PluginConfig>,
    pub limits: LimitsOverride,
    pub whapi: Option<WhapiConfig>,
    /// Deliveries running at once for this tenant (default: dispatch.tenant_concurrency),
    /// shared evenly by its plugins that have work.
    pub concurrency: Option<usize>,
    /// Accepted events per second (429 past it); `per_second = 0` turns it off.
    pub rate_limit: RateLimit,
}

impl TenantConfig {
    /// The plugins this tenant names: in `plugins` or with a table of their own.
    pub fn named_plugins(&self) -> std::collections::BTreeSet<&String> {
        self.plugins.iter().chain(self.plugin.keys()).collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    pub grants: Option<Vec<Grant>>,
    pub limits: LimitsOverride,
    pub settings: toml::Table,
}

/// The tenant's gateway account, used by the `messaging` capability.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WhapiConfig {
    #[serde(default = "default_whapi_url")]
    pub base_url: String,
    /// Literal, `env:VAR` or `file:PATH` (`?` for optional).
    pub instance_id: String,
    /// Literal, `env:VAR` or `file:PATH` (`?` for optional). With an optional one unset,
    /// the tenant has no gateway account and sends are refused.
    pub token: String,
    /// A send whose outcome is unknown (the process died or the connection
    /// broke after the request left) is confirmed by the gateway's
    /// `message_sent` echo; without an echo after this many seconds it is
    /// sent again.
    #[serde(default = "default_echo_wait")]
    pub echo_wait_secs: u64,
}

fn default_whapi_url() -> String {
    "https://whapi.co".to_string()
}

fn default_echo_wait() -> u64 {
    60
}

/// A secret value resolved at start; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A tenant as the server uses it: secrets resolved.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub secrets: Vec<Secret>,
    /// The secrets as the signature check uses them.
    pub keys: crate::signature::Keys,
    pub config: TenantConfig,
    pub whapi: Option<ResolvedWhapi>,
}

#[derive(Clone, PartialEq)]
pub struct ResolvedWhapi {
    pub base_url: String,
    pub instance_id: String,
    pub token: Secret,
    pub echo_wait: std::time::Duration,
}

impl std::fmt::Debug for ResolvedWhapi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedWhapi")
            .field("base_url", &self.base_url)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Resolves secrets and checks names. Called once at start.
    pub fn tenants(&self) -> Result<BTreeMap<String, Tenant>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, tc) in &self.tenants {
            if !valid_name(name) {
                return Err(ConfigError::TenantName(name.clone()));
            }
            let mut secrets = Vec::new();
            for s in &tc.secrets {
                if let Some(v) = resolve(name, s)? {
                    secrets.push(v);
                }
            }
            let whapi = match &tc.whapi {
                None => None,
                Some(w) => match (resolve(name, &w.token)?, resolve(name, &w.instance_id)?) {
                    (Some(token), Some(id)) => Some(ResolvedWhapi {
                        base_url: w.base_url.trim_end_matches('/').to_string(),
                        instance_id: String::from_utf8_lossy(id.expose()).into_owned(),
                        token,
                        echo_wait: std::time::Duration::from_secs(w.echo_wait_secs),
                    }),
                    _ => None,
                },
            };
            for p in tc.plugins.iter().chain(tc.plugin.keys()) {
                if !valid_name(p) {
                    return Err(ConfigError::Invalid(format!(
                        "tenant `{name}`: invalid plugin name `{p}`"
                    )));
                }
            }
            tc.limits
                .check(&format!("[tenants.{name}] limits"))
                .map_err(ConfigError::Invalid)?;
            for (p, table) in &tc.plugin {
                table
                    .limits
                    .check(&format!("[tenants.{name}.plugin.{p}] limits"))
                    .map_err(ConfigError::Invalid)?;
            }
            out.insert(
                name.clone(),
                Tenant {
                    name: name.clone(),
                    keys: crate::signature::Keys::new(&secrets),
                    secrets,
                    config: tc.clone(),
                    whapi,
                },
            );
        }
        let l = &self.limits;
        LimitsOverride {
            fuel: Some(l.fuel),
            memory_mb: Some(l.memory_mb),
            timeout_ms: Some(l.timeout_ms),
            ..LimitsOverride::default()
        }
        .check("[limits]")
        .map_err(ConfigError::Invalid)?;
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "server.max_body_bytes must be > 0".into(),
            ));
        }
        if self.dispatch.workers == 0
            || self.dispatch.busy_workers == 0
            || self.dispatch.tenant_concurrency == 0
        {
            return Err(ConfigError::Invalid(
                "dispatch.workers, dispatch.busy_workers and dispatch.tenant_concurrency must be > 0"
                    .into(),
            ));
        }
        if self.dispatch.run_ms > MAX_RUN_MS {
            return Err(ConfigError::Invalid(format!(
                "dispatch.run_ms must be at most {MAX_RUN_MS} (a slot holds its chats that long)"
            )));
        }
        Ok(out)
    }
}

/// Names of tenants and plugins end up in URLs and file names.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A secret as written: a literal, `env:VAR` or `file:PATH` (its content,
/// trailing whitespace removed: an orchestrator's mounted secret or a
/// systemd credential), each with a trailing `?` when it may be absent.
fn resolve(tenant: &str, spec: &str) -> Result<Option<Secret>, ConfigError> {
    if let Some(path) = spec.strip_prefix("file:") {
        let (path, optional) = match path.strip_suffix('?') {
            Some(p) => (p, true),
            None => (path, false),
        };
        let failed = |message: String| ConfigError::SecretFile {
            tenant: tenant.to_string(),
            path: path.to_string(),
            message,
        };
        return match std::fs::read(path) {
            Ok(mut bytes) => {
                while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    bytes.pop();
                }
                match (bytes.is_empty(), optional) {
                    (false, _) => Ok(Some(Secret::new(bytes))),
                    (true, true) => Ok(None),
                    (true, false) => Err(failed("it is empty".into())),
                }
            }
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(failed(e.to_string())),
        };
    }
    let Some(var) = spec.strip_prefix("env:") else {
        return Ok(Some(Secret::new(spec.as_bytes())));
    };
    let (var, optional) = match var.strip_suffix('?') {
        Some(v) => (v, true),
        None => (var, false),
    };
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v.into_bytes()))),
        _ if optional => Ok(None),
        _ => Err(ConfigError::MissingEnv {
            tenant: tenant.to_string(),
            var: var.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_example() {
        let c = Config::parse(
            r#"
            [server]
            listen = "127.0.0.1:0"
            [tenants.default]
            secrets = ["s1", "s2"]
            plugins = ["logger"]
            [tenants.default.plugin.logger]
            grants = ["log"]
            limits = { fuel = 5 }
            settings = { greeting = "hi" }
            [tenants.acme]
            "#,
        )
        .unwrap();
        let t = c.tenants().unwrap();
        assert_eq!(t["default"].secrets.len(), 2);
        assert_eq!(t["default"].config.plugin["logger"].limits.fuel, Some(5));
        assert!(t["acme"].secrets.is_empty());
    }

    #[test]
    fn a_run_longer_than_ten_seconds_is_refused() {
        let run = |ms: u64| {
            Config::parse(&format!("[dispatch]\nrun_ms = {ms}\n[tenants.a]"))
                .unwrap()
                .tenants()
                .map(|_| ())
        };
        assert!(run(0).is_ok() && run(10_000).is_ok());
        let e = run(10_001).unwrap_err().to_string();
        assert!(e.contains("dispatch.run_ms must be at most 10000"), "{e}");
    }

    #[test]
    fn no_slots_for_deliveries_is_refused_even_under_load() {
        let slots = |line: &str| {
            Config::parse(&format!("[dispatch]\n{line}\n[tenants.a]"))
                .unwrap()
                .tenants()
                .map(|_| ())
        };
        assert!(slots("busy_workers = 1").is_ok());
        let e = slots("busy_workers = 0").unwrap_err().to_string();
        assert!(e.contains("dispatch.busy_workers"), "{e}");
        assert!(slots("workers = 0").is_err());
    }

    #[test]
    fn a_zero_fuel_memory_or_time_limit_is_refused_where_it_is_written() {
        let check = |text: &str| {
            Config::parse(text)
                .unwrap()
                .tenants()
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let e = check("[limits]\nfuel = 0\n[tenants.a]").unwrap_err();
        assert!(e.contains("[limits]: fuel must be above 0"), "{e}");
        let e = check("[tenants.a]\nlimits = { timeout_ms = 0 }").unwrap_err();
        assert!(
            e.contains("[tenants.a] limits: timeout_ms must be above 0"),
            "{e}"
        );
        let e = check("[tenants.a.plugin.p]\nlimits = { memory_mb = 0 }").unwrap_err();
        assert!(
            e.contains("[tenants.a.plugin.p] limits: memory_mb must be above 0"),
            "{e}"
        );
        // Quotas may be 0 (nothing stored); other values are fine.
        assert_eq!(
            check("[tenants.a]\nlimits = { kv_keys = 0, sql_mb = 0, fuel = 1 }"),
            Ok(())
        );
        let sidecar = crate::runtime::sidecar::Sidecar::parse("[limits]\nfuel = 0\n");
        assert!(sidecar.unwrap_err().contains("fuel must be above 0"));
    }

    #[test]
    fn retention_ages() {
        use std::time::Duration;
        let age = |t: &str| {
            Config::parse(&format!("[store]\nretention = \"{t}\"")).map(|c| c.store.retention.0)
        };
        assert_eq!(age("30d"), Ok(Some(Duration::from_secs(30 * 86_400))));
        assert_eq!(age("90m"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(age(" 2 s "), Ok(Some(Duration::from_secs(2))));
        assert_eq!(age("0"), Ok(None));
        assert_eq!(Config::default().store.retention.0, None);
        for bad in ["30", "d", "1.5h", "-1d", "30 days", "99999999999999999999d"] {
            let e = age(bad).unwrap_err();
            assert!(e.contains("invalid length of time"), "{bad}: {e}");
        }
    }

    #[test]
    fn rate_limits() {
        let limit = |t: &str| {
            Config::parse(&format!("[tenants.a]\nrate_limit = {t}")).map(|c| {
                (
                    c.tenants["a"].rate_limit.per_second,
                    c.tenants["a"].rate_limit.burst,
                )
            })
        };
        assert_eq!(limit("{ per_second = 50, burst = 10 }"), Ok((50.0, 10.0)));
        assert_eq!(limit("{ per_second = 50 }"), Ok((50.0, 100.0)));
        assert_eq!(limit("{ per_second = 0 }"), Ok((0.0, 0.0)));
        for bad in [
            "{ per_second = -1 }",
            "{ per_second = nan }",
            "{ per_second = 5, burst = inf }",
        ] {
            let e = limit(bad).unwrap_err();
            assert!(e.contains("must be numbers ≥ 0"), "{bad}: {e}");
        }
        assert!(limit("{ burst = 5 }").is_err());
        assert!(limit("{ per_second = 5, brust = 5 }").is_err());
    }

    #[test]
    fn unknown_fields_are_errors() {
        assert!(Config::parse("[server]\nlisten_typo = 1").is_err());
    }

    #[test]
    fn env_secrets() {
        std::env::set_var("HOOKHOST_TEST_SECRET_X", "abc");
        let c = Config::parse(
            r#"[tenants.t]
            secrets = ["env:HOOKHOST_TEST_SECRET_X", "env:HOOKHOST_TEST_UNSET_Y?"]"#,
        )
        .unwrap();
        let t = c.tenants().unwrap();
        assert_eq!(t["t"].secrets, vec![Secret::new("abc")]);
        let c = Config::parse(
            r#"[tenants.t]
            secrets = ["env:HOOKHOST_TEST_UNSET_Y"]"#,
        )
        .unwrap();
        assert!(matches!(c.tenants(), Err(ConfigError::MissingEnv { .. })));
    }

    #[test]
    fn file_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret \n").unwrap();
        let (file, missing) = (
            file.display(),
            dir.path().join("none").display().to_string(),
        );
        let tenants = |secrets: &str| {
            Config::parse(&format!("[tenants.t]\nsecrets = {secrets}"))
                .unwrap()
                .tenants()
        };
        // Trailing whitespace (the newline an editor adds) is not part of it.
        let t = tenants(&format!(r#"["file:{file}", "file:{missing}?"]"#)).unwrap();
        assert_eq!(t["t"].secrets, vec![Secret::new("s3cret")]);
        let e = tenants(&format!(r#"["file:{missing}"]"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("tenant `t`: secret file {missing}: ")),
            "{e}"
        );
        assert!(
            e.ends_with(&format!("(write `file:{missing}?` to make it optional)")),
            "{e}"
        );
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let empty = dir.path().join("empty").display().to_string();
        let e = tenants(&format!(r#"["file:{empty}"]"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is empty"), "{e}");
        assert!(tenants(&format!(r#"["file:{empty}?"]"#)).unwrap()["t"]
            .secrets
            .is_empty());
    }

    #[test]
    fn limits_override() {
        let l = Limits::default().apply(&LimitsOverride {
            memory_mb: Some(8),
            ..Default::default()
        });
        assert_eq!(l.memory_mb, 8);
        assert_eq!(l.fuel, Limits::default().fuel);
    }

    #[test]
    fn secret_debug_is_hidden() {
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(***)");
    }
}
