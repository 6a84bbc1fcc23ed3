//! The operator commands, against a running server's admin API (`--url`)
//! or the data directory (SQLite serialises them with a running server).

use super::{fmt_ms, Target};
use crate::store::{self, DeliveryRow, EventRow};
use anyhow::Context;
use serde_json::Value;
use std::path::Path;

/// A request to the admin API that the server answered with an error.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
struct Refused {
    status: u16,
    message: String,
}

fn remote(t: &Target, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let url = format!(
        "{}{}",
        t.url.as_deref().unwrap_or_default().trim_end_matches('/'),
        path
    );
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .new_agent();
    let auth = format!("Bearer {}", t.token.as_deref().unwrap_or_default());
    let mut resp = match method {
        "POST" => agent
            .post(&url)
            .header("Authorization", &auth)
            .send_json(body.unwrap_or(Value::Object(Default::default()))),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    }
    .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        return Err(Refused {
            status,
            message: v["error"].as_str().unwrap_or("request failed").into(),
        }
        .into());
    }
    Ok(v)
}

fn print_events(rows: &[Value], json: bool) {
    if json {
        rows.iter().for_each(|r| println!("{r}"));
        return;
    }
    if rows.is_empty() {
        println!("no events");
        return;
    }
    println!(
        "{:>6}  {:<24}  {:<10}  {:<18}  KEY",
        "SEQ", "RECEIVED", "TENANT", "TYPE"
    );
    for r in rows {
        println!(
            "{:>6}  {:<24}  {:<10}  {:<18}  {}",
            r["seq"].to_string(),
            fmt_ms(r["received_at"].as_i64().unwrap_or(0)),
            r["tenant"].as_str().unwrap_or(""),
            r["event_type"].as_str().unwrap_or(""),
            r["key"].as_str().unwrap_or("")
        );
    }
}

fn print_deliveries(rows: &[Value], json: bool, dead: bool) {
    if json {
        rows.iter().for_each(|r| println!("{r}"));
        return;
    }
    if rows.is_empty() {
        println!(
            "{}",
            if dead {
                "no dead letters"
            } else {
                "no deliveries"
            }
        );
        return;
    }
    println!(
        "{:>6}  {:<14}  {:<10}  {:<9}  {:>8}  {:<24}  LAST ERROR",
        "SEQ", "PLUGIN", "TENANT", "STATE", "ATTEMPTS", "UPDATED"
    );
    for r in rows {
        println!(
            "{:>6}  {:<14}  {:<10}  {:<9}  {:>8}  {:<24}  {}",
            r["event_seq"].to_string(),
            r["plugin"].as_str().unwrap_or(""),
            r["tenant"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["attempts"].to_string(),
            fmt_ms(r["updated_at"].as_i64().unwrap_or(0)),
            r["last_error"].as_str().unwrap_or("")
        );
    }
}

fn to_values<T: serde::Serialize>(rows: &[T]) -> Vec<Value> {
    rows.iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect()
}

/// Which events `events list` shows.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    /// Up to `limit` after a sequence number.
    After(i64, i64),
    /// The newest N.
    Last(i64),
}

pub fn events_list(
    t: &Target,
    tenant: Option<&str>,
    json: bool,
    page: Page,
) -> anyhow::Result<i32> {
    let rows = if t.url.is_some() {
        let mut q = match page {
            Page::After(after, limit) => format!("after={after}&limit={limit}"),
            Page::Last(n) => format!("last={n}"),
        };
        if let Some(t) = tenant {
            q.push_str(&format!("&tenant={t}"));
        }
        remote(t, "GET", &format!("/admin/events?{q}"), None)?["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else {
        let c = store::open_read_only(&t.data_dir)?;
        let rows: Vec<EventRow> = match page {
            Page::After(after, limit) => store::list_events(&c, tenant, after, limit)?,
            Page::Last(n) => store::list_last_events(&c, tenant, n)?,
        };
        to_values(&rows)
    };
    print_events(&rows, json);
    Ok(0)
}

pub fn event_show(t: &Target, seq: i64) -> anyhow::Result<i32> {
    let v = if t.url.is_some() {
        remote(t, "GET", &format!("/admin/events/{seq}"), None)?
    } else {
        let c = store::open_read_only(&t.data_dir)?;
        let ev = store::get_event(&c, seq)?.with_context(|| format!("no event {seq}"))?;
        let dels = store::list_deliveries(&c, Some(seq), None, 1000)?;
        let body: Value = serde_json::from_slice(&ev.body).unwrap_or(Value::Null);
        serde_json::json!({ "event": ev, "body": body, "deliveries": dels })
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}

pub fn deliveries(
    t: &Target,
    state: Option<&str>,
    event: Option<i64>,
    json: bool,
    limit: i64,
) -> anyhow::Result<i32> {
    let rows = if t.url.is_some() {
        let mut q = format!("?limit={limit}");
        if let Some(s) = state {
            q.push_str(&format!("&state={s}"));
        }
        if let Some(e) = event {
            q.push_str(&format!("&event={e}"));
        }
        remote(t, "GET", &format!("/admin/deliveries{q}"), None)?["deliveries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else {
        let c = store::open_read_only(&t.data_dir)?;
        let rows: Vec<DeliveryRow> = store::list_deliveries(&c, event, state, limit)?;
        to_values(&rows)
    };
    print_deliveries(&rows, json, state == Some("dead"));
    Ok(0)
}

pub fn settle_dead(
    t: &Target,
    seq: i64,
    plugin: &str,
    action: store::DeadLetter,
) -> anyhow::Result<i32> {
    let (verb, done) = match action {
        store::DeadLetter::Retry => ("retry", "queued"),
        store::DeadLetter::Discard => ("discard", "discarded"),
    };
    if t.url.is_some() {
        remote(
            t,
            "POST",
            &format!("/admin/dead-letters/{seq}/{plugin}/{verb}"),
            None,
        )?;
    } else {
        let c = store::open_for_update(&t.data_dir)?;
        store::settle_dead(&c, seq, plugin, action)?;
    }
    println!("{done}: event {seq} → {plugin}");
    Ok(0)
}

pub fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<i32> {
    let copied = store::backup(data_dir, to)?;
    for (file, bytes) in &copied {
        println!("{} ({bytes} bytes)", file.display());
    }
    println!(
        "backed up {} database(s) into {}",
        copied.len(),
        to.display()
    );
    Ok(0)
}

pub fn events_prune(t: &Target, age: std::time::Duration) -> anyhow::Result<i32> {
    let (n, uncounted) = if t.url.is_some() {
        prune_remote(t, age)?
    } else {
        let mut c = store::open_for_update(&t.data_dir)?;
        (store::retention::prune_offline(&mut c, age)?, false)
    };
    let events = if n == 1 { "event" } else { "events" };
    if uncounted {
        println!(
            "pruned at least {n} {events} (a part timed out and was asked for again; \
             hookhost_events_pruned_total counts them all)"
        );
    } else {
        println!("pruned {n} {events}");
    }
    Ok(0)
}

/// Retention through the admin API, which answers a long pass in parts:
/// asks again from where each stopped. A part that timed out (a busy
/// server) is asked for again; what it pruned stays pruned but is not
/// counted here (the second value says so).
fn prune_remote(t: &Target, age: std::time::Duration) -> anyhow::Result<(usize, bool)> {
    let (mut n, mut after, mut uncounted) = (0, 0, false);
    loop {
        let body = serde_json::json!({
            "older_than": format!("{}s", age.as_secs()),
            "after": after,
        });
        let mut tries = 0;
        let v = loop {
            match remote(t, "POST", "/admin/events/prune", Some(body.clone())) {
                Err(e)
                    if tries < 5
                        && e.downcast_ref::<Refused>()
                            .is_some_and(|r| r.status == 408 || r.status == 503) =>
                {
                    tries += 1;
                    uncounted = true;
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                other => break other?,
            }
        };
        n += v["pruned"].as_u64().unwrap_or(0) as usize;
        match v["resume_after"].as_i64() {
            Some(seq) if v["more"] == true && seq > after => after = seq,
            _ => return Ok((n, uncounted)),
        }
    }
}

pub fn replay(t: &Target, seq: i64, plugin: Option<String>, resend: bool) -> anyhow::Result<i32> {
    let plugins: Vec<String> = if t.url.is_some() {
        let v = remote(
            t,
            "POST",
            &format!("/admin/events/{seq}/replay"),
            Some(serde_json::json!({ "plugin": plugin, "resend": resend })),
        )?;
        v["plugins"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        let c = store::open_for_update(&t.data_dir)?;
        // Offline, "all plugins" means those that had this event before;
        // a running server (--url) knows its current plugins.
        let plugins = match plugin {
            Some(p) => vec![p],
            None => store::delivered_plugins(&c, seq)?,
        };
        store::replay(&c, seq, &plugins, resend)?
    };
    println!(
        "queued: event {seq} → {}{}",
        plugins.join(", "),
        if resend { " (resend)" } else { "" }
    );
    Ok(0)
}

/// Events for `replay --from`.
#[derive(Debug, Clone)]
pub struct Range {
    pub from: i64,
    pub to: Option<i64>,
    pub tenant: Option<String>,
    pub plugin: Option<String>,
}

/// Replays a range of events. Through the server, every plugin that now
/// runs for an event's tenant and wants its type (the way to give a plugin
/// added later the history); offline, the plugins that had each event.
pub fn replay_range(t: &Target, r: &Range, resend: bool) -> anyhow::Result<i32> {
    let mut done = store::Replayed::default();
    if t.url.is_some() {
        let mut from = r.from;
        loop {
            let body = serde_json::json!({
                "from": from, "to": r.to, "tenant": r.tenant, "plugin": r.plugin, "resend": resend,
            });
            let v = match remote(t, "POST", "/admin/events/replay", Some(body)) {
                Ok(v) => v,
                // A later part is not asked again by itself (deliveries
                // that finished in between would run once more): say
                // where to go on from.
                Err(e) if from > r.from => {
                    return Err(e.context(format!(
                        "{} deliveries queued before event {from}; `replay --from {from}` goes on",
                        done.deliveries
                    )))
                }
                Err(e) => return Err(e),
            };
            let n = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
            done.events += n("events");
            done.deliveries += n("deliveries");
            done.running += n("running");
            match v["resume_after"].as_i64() {
                Some(seq) if v["more"] == true && seq >= from => from = seq + 1,
                _ => break,
            }
        }
    } else {
        let mut c = store::open_for_update(&t.data_dir)?;
        let mut after = r.from - 1;
        let to = r.to.unwrap_or(i64::MAX);
        loop {
            let heads = store::event_heads(&c, after, 500)?;
            let Some(last) = heads.last().map(|h| h.seq) else {
                break;
            };
            let mut items = Vec::new();
            for h in heads.iter().filter(|h| h.seq <= to) {
                if r.tenant.as_ref().is_some_and(|t| *t != h.tenant) {
                    continue;
                }
                let plugins: Vec<String> = store::delivered_plugins(&c, h.seq)?
                    .into_iter()
                    .filter(|p| r.plugin.as_ref().is_none_or(|only| only == p))
                    .collect();
                if !plugins.is_empty() {
                    items.push((h.seq, plugins));
                }
            }
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let d = store::replay_many(&tx, &items, resend)?;
            tx.commit()?;
            done.events += d.events;
            done.deliveries += d.deliveries;
            done.running += d.running;
            if last >= to || heads.len() < 500 {
                break;
            }
            after = last;
        }
    }
    println!(
        "queued {} deliver{} for {} event{}{}{}",
        done.deliveries,
        if done.deliveries == 1 { "y" } else { "ies" },
        done.events,
        if done.events == 1 { "" } else { "s" },
        if resend { " (resend)" } else { "" },
        if done.running > 0 {
            format!("; {} running now, left alone", done.running)
        } else {
            String::new()
        }
    );
    Ok(0)
}

/// Why `bytes` cannot be a plugin, as far as can be told without compiling
/// it: not WebAssembly, a core module rather than a component, or a
/// component that does not validate, or one whose exports and imports do
/// not fit the plugin world. (`hookhost plugin check` also compiles it and
/// checks the types.)
fn component_problem(bytes: &[u8]) -> Option<String> {
    use wasmparser::{Parser, Validator, WasmFeatures};
    if !Parser::is_component(bytes) {
        return Some(if Parser::is_core_wasm(bytes) {
            "a core WebAssembly module, not a component".into()
        } else {
            "not a WebAssembly file".into()
        });
    }
    if let Err(e) = Validator::new_with_features(WasmFeatures::all()).validate_all(bytes) {
        return Some(format!("not a valid component: {e}"));
    }
    world_problem(bytes)
}

/// The interfaces of the `hookhost:plugin` package this host provides
/// (`wit/since_v0.1.0`), and the versions it accepts: those compatible
/// with 0.1.0.
const PLUGIN_INTERFACES: [&str; 6] = ["types", "log", "kv", "sql", "messaging", "config"];
const PLUGIN_VERSION: &str = "0.1.";

/// `hookhost:plugin/NAME@VERSION` -> (NAME, VERSION)
fn plugin_interface(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix("hookhost:plugin/")
        .map(|rest| rest.split_once('@').unwrap_or((rest, "")))
}

/// Whether a valid component's top-level names fit the plugin world: it
/// exports the handler and imports nothing but the plugin interfaces and
/// WASI. Names only, without a compile, so it errs towards silence: the
/// types (and WASI interfaces this host does not link) are checked when the
/// plugin loads, or by `hookhost plugin check`.
fn world_problem(bytes: &[u8]) -> Option<String> {
    use wasmparser::{Parser, Payload};
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) if depth == 0 => break,
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(r) if depth == 0 => {
                for i in r {
                    imports.push(i.ok()?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(r) if depth == 0 => {
                for e in r {
                    exports.push(e.ok()?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    let handler = exports
        .iter()
        .filter_map(|e| plugin_interface(e))
        .find(|(i, _)| *i == "handler");
    match handler {
        None => {
            return Some(format!(
                "does not export hookhost:plugin/handler (it exports: {})",
                if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                }
            ))
        }
        Some((_, v)) if !v.starts_with(PLUGIN_VERSION) => {
            return Some(format!(
                "exports hookhost:plugin/handler@{v}; this hookhost speaks {PLUGIN_VERSION}x"
            ))
        }
        Some(_) => {}
    }
    imports
        .into_iter()
        .find_map(|name| match plugin_interface(&name) {
            _ if name.starts_with("wasi:") => None,
            Some((i, v)) if PLUGIN_INTERFACES.contains(&i) && v.starts_with(PLUGIN_VERSION) => None,
            _ => Some(format!("imports {name}, which hookhost does not provide")),
        })
}

pub fn plugins(t: &Target, dir: &Path, json: bool) -> anyhow::Result<i32> {
    let rows: Vec<Value> = if t.url.is_some() {
        remote(t, "GET", "/admin/plugins", None)?["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    } else {
        let mut rows = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("wasm") {
                continue;
            }
            let bytes = std::fs::read(&p)?;
            let sidecar = p.with_extension("toml");
            let sidecar_error = sidecar
                .exists()
                .then(|| crate::runtime::registry::Sidecar::read(&sidecar).err())
                .flatten();
            rows.push(serde_json::json!({
                "name": p.file_stem().and_then(|s| s.to_str()).unwrap_or(""),
                "status": "file (not loaded: use --url for a running server)",
                "hash": crate::runtime::plugin::hash(&bytes),
                "size": bytes.len(),
                "component_error": component_problem(&bytes),
                "sidecar": sidecar.exists(),
                "sidecar_error": sidecar_error,
            }));
        }
        rows
    };
    for r in &rows {
        if json {
            println!("{r}");
        } else {
            let mut status = r["status"].as_str().unwrap_or("").to_string();
            if let Some(ms) = r["compiling_for_ms"].as_u64() {
                status.push_str(&format!(" for {} s", ms / 1000));
            }
            let mut problems = r["last_error"].as_str().unwrap_or("").to_string();
            if let Some(e) = r["component_error"].as_str() {
                problems.push_str(e);
            }
            if let Some(e) = r["sidecar_error"].as_str() {
                let e = e.split_whitespace().collect::<Vec<_>>().join(" ");
                problems.push_str(&format!(" sidecar refused: {e}"));
            }
            println!(
                "{:<16} {:<10} {:>10} bytes  {}  {}",
                r["name"].as_str().unwrap_or(""),
                status,
                r["size"],
                r["hash"]
                    .as_str()
                    .map(|h| &h[..h.len().min(12)])
                    .unwrap_or(""),
                problems.trim()
            );
        }
    }
    Ok(0)
}
