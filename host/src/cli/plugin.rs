//! `plugin check` and `plugin test`: the plugin author's tools. Both use the
//! same engine settings as the server and a compile cache in the user's
//! cache folder, so a large component compiles once.

use super::out::outln;
use crate::capabilities::{Action, Capabilities};
use crate::config::{Config, Grant, Limits, StoreConfig, DEFAULT_TENANT};
use crate::runtime::sidecar::{policy_for, Policy, Sidecar};
use crate::runtime::{cache::CompileCache, convert, engine::Runtime, plugin, sandbox};
use crate::store::{Store, StoreOptions};
use anyhow::Context;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("hookhost").join("compiled")
}

/// Capabilities backed by a scratch store in `dir`, with a journal of
/// what the plugin does.
fn scratch_caps(
    dir: &Path,
    plugin: &str,
    grants: &[Grant],
    limits: Limits,
    settings: serde_json::Value,
) -> Capabilities {
    let store = Store::open(
        &dir.join("store"),
        StoreOptions::from(&StoreConfig::default()),
    );
    let mut caps = Capabilities::offline(
        store,
        dir.join("plugin.sqlite"),
        plugin,
        grants,
        limits,
        settings,
    );
    caps.journal = Some(Vec::new());
    caps
}

/// The engine, the file's bytes, and the plugin or why it did not load.
type Loaded = (Arc<Runtime>, Vec<u8>, Result<plugin::LoadedPlugin, String>);

fn load(file: &Path) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let rt = Runtime::new(false, 4096, true)?;
    let cache = CompileCache::new(cache_dir());
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let loaded = plugin::load(&rt, &cache, name, &bytes).map_err(|e| e.to_string());
    Ok((rt, bytes, loaded))
}

pub fn check(file: &Path, json: bool) -> anyhow::Result<i32> {
    let (rt, bytes, loaded) = load(file)?;
    // None when the file is not a component the engine can read.
    let names = match &loaded {
        Ok(p) => Some(plugin::interface_names(&rt.engine, &p.component)),
        // Not linkable: still list what it asks for when it is a component.
        Err(_) => wasmtime::component::Component::new(&rt.engine, &bytes)
            .ok()
            .map(|c| plugin::interface_names(&rt.engine, &c)),
    };
    let scratch = tempfile::tempdir()?;
    let result = loaded.and_then(|mut p| {
        let caps = scratch_caps(
            scratch.path(),
            &p.name,
            &[],
            Limits::default(),
            serde_json::json!({}),
        );
        p.subscriptions = sandbox::subscriptions(&p, caps, &Limits::default())
            .map_err(|e| format!("subscriptions() failed: {e}"))?;
        Ok(p)
    });
    rt.stop();
    let subs: Option<Vec<&str>> = result.as_ref().ok().map(|p| match &p.subscriptions {
        None => vec!["*"],
        Some(k) => k.iter().map(|k| convert::kind_name(*k)).collect(),
    });
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "file": file.display().to_string(),
                "ok": result.is_ok(),
                "error": result.as_ref().err(),
                "sha256": plugin::hash(&bytes),
                "size": bytes.len(),
                "imports": names.as_ref().map(|(i, _)| i),
                "exports": names.as_ref().map(|(_, e)| e),
                "subscriptions": subs,
            })
        );
    } else {
        outln!(
            "{}: {} bytes, sha256 {}",
            file.display(),
            bytes.len(),
            plugin::hash(&bytes)
        );
        for (title, list) in names
            .iter()
            .flat_map(|(i, e)| [("imports", i), ("exports", e)])
        {
            if list.is_empty() {
                outln!("{title}: none");
            }
            for (n, name) in list.iter().enumerate() {
                if n == 0 {
                    outln!("{title}:");
                }
                outln!("  {name}");
            }
        }
        match &result {
            Ok(_) => outln!("subscriptions: {}", subs.unwrap_or_default().join(", ")),
            Err(e) => outln!("error: {e}"),
        }
    }
    Ok(if result.is_ok() { 0 } else { 1 })
}

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The component.
    pub file: PathBuf,
    /// A sample event (message_received, message_sent, ack_update,
    /// message_reaction, test_webhook).
    #[arg(
        long,
        default_value = "message_received",
        conflicts_with = "file_event"
    )]
    pub event: String,
    /// An event body from a JSON file instead.
    #[arg(long = "file", id = "file_event")]
    pub event_file: Option<PathBuf>,
    /// Run it as the server would for a tenant: that configuration's
    /// limits, and the tenant's grants and settings for this plugin.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The tenant of `--config` (the default tenant when not given).
    #[arg(long, requires = "config")]
    pub tenant: Option<String>,
    /// Replace the event's message id (and timestamp): another message of
    /// the same chat.
    #[arg(long)]
    pub id: Option<String>,
    /// Replace the event's text body.
    #[arg(long)]
    pub body: Option<String>,
    /// Keep the plugin's key-value data and SQL database in this folder
    /// between runs (made when missing), so that several runs make a
    /// conversation; without it every run starts empty.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Plugin settings: a TOML file, over the sidecar's and the tenant's.
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// Fuel, memory and deadline (defaults as in the server).
    #[arg(long)]
    pub fuel: Option<u64>,
    #[arg(long)]
    pub memory_mb: Option<u64>,
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// The grants, limits and settings `plugin test` runs with: every grant and
/// the sidecar beside the file, or, with `--config`, what the server would
/// give the plugin for the tenant. Without `--config`, also the grants a
/// server gives the plugin when no tenant's table names any (the sidecar's,
/// or the defaults), to tell the author what it would refuse.
fn policy(a: &TestArgs) -> anyhow::Result<(Policy, Option<BTreeSet<Grant>>)> {
    let sidecar_path = a.file.with_extension("toml");
    let sidecar = if sidecar_path.is_file() {
        Some(
            Sidecar::read(&sidecar_path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", sidecar_path.display()))?,
        )
    } else {
        None
    };
    let name = a
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(path) = &a.config else {
        let mut p = policy_for(Limits::default(), None, sidecar.as_ref(), &name);
        let server = std::mem::replace(&mut p.grants, Grant::ALL.iter().copied().collect());
        return Ok((p, Some(server)));
    };
    let config = Config::load(path)?;
    let tenant = a.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
    let Some(t) = config.tenants.get(tenant) else {
        anyhow::bail!(
            "{} has no tenant `{tenant}` (it has: {})",
            path.display(),
            config
                .tenants
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    Ok((
        policy_for(config.limits, Some(t), sidecar.as_ref(), &name),
        None,
    ))
}

/// The capabilities a run used that `granted` lacks.
fn refused_by(granted: &BTreeSet<Grant>, actions: &[Action]) -> BTreeSet<Grant> {
    let used: BTreeSet<Grant> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Log { .. } => Some(Grant::Log),
            Action::KvSet { .. } | Action::KvDelete { .. } => Some(Grant::Kv),
            Action::Sql { .. } => Some(Grant::Sql),
            Action::Send { .. } => Some(Grant::Messaging),
            Action::Config { .. } => Some(Grant::Config),
            Action::Denied { .. } => None,
        })
        .collect();
    used.difference(granted).copied().collect()
}

pub fn test(a: TestArgs) -> anyhow::Result<i32> {
    let body = match &a.event_file {
        Some(f) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        None => crate::samples::get(&a.event)
            .with_context(|| {
                format!(
                    "unknown sample `{}`; known: {}",
                    a.event,
                    crate::samples::NAMES.join(", ")
                )
            })?
            .as_bytes()
            .to_vec(),
    };
    let body = if a.id.is_some() || a.body.is_some() {
        let mut v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| anyhow::anyhow!("the event does not parse: {e}"))?;
        crate::samples::vary(&mut v, a.id.as_deref(), a.body.as_deref());
        serde_json::to_vec(&v)?
    } else {
        body
    };
    let parsed =
        crate::event::parse(&body).map_err(|e| anyhow::anyhow!("the event does not parse: {e}"))?;
    let (policy, server_grants) = policy(&a)?;
    let mut settings = (*policy.settings).clone();
    if let Some(p) = &a.settings {
        let t: toml::Table = toml::from_str(&std::fs::read_to_string(p)?)
            .with_context(|| format!("parsing {}", p.display()))?;
        if let (Some(to), serde_json::Value::Object(from)) =
            (settings.as_object_mut(), serde_json::to_value(t)?)
        {
            to.extend(from);
        }
    }
    let mut limits = policy.limits;
    if let Some(f) = a.fuel {
        limits.fuel = f;
    }
    if let Some(m) = a.memory_mb {
        limits.memory_mb = m;
    }
    if let Some(t) = a.timeout_ms {
        limits.timeout_ms = t;
    }
    let grants: Vec<Grant> = policy.grants.iter().copied().collect();

    let compile_start = Instant::now();
    let (rt, bytes, loaded) = load(&a.file)?;
    let compile = compile_start.elapsed();
    let mut p = match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    let scratch = tempfile::tempdir()?;
    let state = match &a.state {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.as_path()
        }
        None => scratch.path(),
    };
    let caps = scratch_caps(scratch.path(), &p.name, &[], limits, serde_json::json!({}));
    p.subscriptions = match sandbox::subscriptions(&p, caps, &limits) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: subscriptions() failed: {e}");
            return Ok(2);
        }
    };
    let kind = convert::kind(&parsed.event);
    let raw = String::from_utf8_lossy(&body).into_owned();
    let report = if p.wants(kind) {
        let ctx = crate::bindings::types::DeliveryContext {
            tenant: match (&a.config, &a.tenant) {
                (_, Some(t)) => t.clone(),
                (Some(_), None) => DEFAULT_TENANT.into(),
                (None, None) => "test".into(),
            },
            plugin: p.name.clone(),
            event_key: parsed.key.clone(),
            attempt: 1,
            received_at: crate::store::now_ms(),
            raw_json: raw.clone(),
        };
        let caps = scratch_caps(state, &p.name, &grants, limits, settings);
        Some(sandbox::deliver(
            &p,
            caps,
            &limits,
            &convert::event(&parsed.event, &raw),
            &ctx,
        ))
    } else {
        None
    };
    rt.stop();

    let (result, code) = match &report {
        None => (
            "skipped: the plugin does not subscribe to this event".to_string(),
            0,
        ),
        Some(r) => match &r.result {
            Ok(()) => ("ok".to_string(), 0),
            Err(f) => (format!("failed: {f}"), 1),
        },
    };
    let actions: Vec<Action> = report
        .as_ref()
        .and_then(|r| r.journal.clone())
        .unwrap_or_default();
    let server_refuses = server_grants.as_ref().map(|g| refused_by(g, &actions));
    if a.json {
        outln!(
            "{}",
            serde_json::json!({
                "plugin": p.name,
                "sha256": p.hash,
                "size": bytes.len(),
                "compile_ms": compile.as_millis() as u64,
                "from_cache": p.from_cache,
                "event_type": parsed.event.event_type(),
                "event_key": parsed.key,
                "grants": grants,
                "limits": { "fuel": limits.fuel, "memory_mb": limits.memory_mb, "timeout_ms": limits.timeout_ms },
                "ok": code == 0,
                "result": result,
                "fuel_used": report.as_ref().map(|r| r.fuel_used),
                "instantiate_us": report.as_ref().map(|r| r.instantiate.as_micros() as u64),
                "total_us": report.as_ref().map(|r| r.total.as_micros() as u64),
                "actions": actions,
                "server_would_refuse": server_refuses,
                "output": report.as_ref().map(|r| r.output.clone()),
            })
        );
    } else {
        outln!(
            "plugin: {} ({} bytes, sha256 {}), {} in {} ms",
            p.name,
            bytes.len(),
            p.short_hash(),
            if p.from_cache {
                "loaded from cache"
            } else {
                "compiled"
            },
            compile.as_millis()
        );
        outln!("event: {} ({})", parsed.event.event_type(), parsed.key);
        outln!(
            "grants: {}   limits: fuel {}, memory {} MB, {} ms",
            grants
                .iter()
                .map(|g| g.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            limits.fuel,
            limits.memory_mb,
            limits.timeout_ms
        );
        outln!("result: {result}");
        if let Some(r) = &report {
            outln!(
                "fuel: {}   time: instantiate {} µs, total {} µs",
                r.fuel_used,
                r.instantiate.as_micros(),
                r.total.as_micros()
            );
        }
        if !actions.is_empty() {
            outln!("actions:");
        }
        for act in &actions {
            match act {
                Action::Log {
                    level,
                    message,
                    fields,
                } => {
                    let f: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                    outln!("  log {level}: {message} {}", f.join(" "));
                }
                Action::KvSet { key, bytes } => outln!("  kv set {key} ({bytes} bytes)"),
                Action::KvDelete { key } => outln!("  kv delete {key}"),
                Action::Config { key: Some(key) } => outln!("  config get {key}"),
                Action::Config { key: None } => outln!("  config get-json"),
                Action::Denied { capability } => {
                    outln!("  denied: {} (not granted)", capability.as_str())
                }
                Action::Sql { statement } => outln!(
                    "  sql: {}",
                    statement.split_whitespace().collect::<Vec<_>>().join(" ")
                ),
                Action::Send {
                    to,
                    text,
                    quoted_message_id,
                } => match quoted_message_id {
                    Some(q) => outln!("  would send to {to} (quoting {q}): {text:?}"),
                    None => outln!("  would send to {to}: {text:?}"),
                },
            }
        }
        if let Some(out) = report
            .as_ref()
            .map(|r| r.output.trim())
            .filter(|o| !o.is_empty())
        {
            outln!("stdout/stderr:\n{out}");
        }
        if let (Some(granted), Some(refused)) = (&server_grants, &server_refuses) {
            if !refused.is_empty() {
                let names = |g: &BTreeSet<Grant>| {
                    g.iter()
                        .map(|g| format!("`{}`", g.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                outln!(
                    "note: a server grants this plugin {} (its sidecar's `grants`, or the defaults) \
                     and would refuse {}: add {} to the sidecar's `grants` or to the tenant's \
                     [tenants.T.plugin.{}] table (--config FILE runs with a server's grants)",
                    names(granted),
                    names(refused),
                    if refused.len() == 1 { "it" } else { "them" },
                    p.name
                );
            }
        }
    }
    Ok(code)
}
