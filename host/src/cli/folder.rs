//! `hookhost plugins`: the running server's view of its plugins, or the
//! files of a plugins folder checked without compiling them.

use super::out::outln;
use super::remote::remote;
use super::Target;
use anyhow::Context;
use serde_json::Value;
use std::path::Path;

/// Why `bytes` cannot be a plugin, as far as can be told without compiling
/// it: not WebAssembly, a core module rather than a component, or a
/// component that does not validate, or one whose exports and imports do
/// not fit the plugin world. (`hookhost plugin check` also compiles it and
/// checks the types.)
fn component_problem(bytes: &[u8]) -> Option<String> {
    use wasmparser::{Parser, Validator, WasmFeatures};
    if let Some(problem) = crate::runtime::plugin::format_problem(bytes) {
        return Some(problem);
    }
    if !Parser::is_component(bytes) {
        // WebAssembly text: judged when it is compiled.
        return None;
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
    let (imports, exports) = crate::runtime::plugin::top_level_names(bytes)?;
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
        let answer = remote(t, "GET", "/admin/plugins", None)?;
        let mut rows = answer["plugins"].as_array().cloned().unwrap_or_default();
        for i in answer["ignored"].as_array().into_iter().flatten() {
            rows.push(ignored_row(
                i["file"].as_str().unwrap_or(""),
                i["reason"].as_str().unwrap_or(""),
            ));
        }
        rows
    } else {
        let listing = crate::runtime::folder::list(dir)
            .with_context(|| format!("reading {}", dir.display()))?;
        let mut rows = Vec::new();
        for (name, (path, _)) in &listing.plugins {
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) => {
                    rows.push(ignored_row(
                        &format!("{name}.wasm"),
                        &format!("cannot be read: {e}"),
                    ));
                    continue;
                }
            };
            let (sidecar_hash, sidecar_error) = match listing.sidecars.get(name) {
                Some(sidecar) => match std::fs::read(sidecar) {
                    Ok(bytes) => (
                        Some(crate::runtime::plugin::hash(&bytes)),
                        String::from_utf8(bytes)
                            .map_err(|e| e.to_string())
                            .and_then(|t| crate::runtime::sidecar::Sidecar::parse(&t))
                            .err(),
                    ),
                    Err(e) => (None, Some(e.to_string())),
                },
                None => (None, None),
            };
            rows.push(serde_json::json!({
                "name": name,
                "status": OFFLINE,
                "hash": crate::runtime::plugin::hash(&bytes),
                "size": bytes.len(),
                "component_error": component_problem(&bytes),
                "sidecar": sidecar_hash,
                "sidecar_error": sidecar_error,
            }));
        }
        for (file, reason) in &listing.ignored {
            rows.push(ignored_row(file, reason));
        }
        rows
    };
    if rows.is_empty() && !json {
        outln!("no plugins");
    }
    for r in &rows {
        if json {
            outln!("{r}");
        } else if r["status"] == "ignored" {
            outln!(
                "{:<16} ignored: {}",
                r["file"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or("")
            );
        } else {
            // Offline, the column says `file`; a last line says why.
            let mut status = match r["status"].as_str().unwrap_or("") {
                OFFLINE => "file".to_string(),
                s => s.to_string(),
            };
            if let Some(ms) = r["compiling_for_ms"].as_u64() {
                status.push_str(&format!(" for {} s", ms / 1000));
            }
            let mut problems = r["last_error"].as_str().unwrap_or("").to_string();
            if let Some(e) = r["component_error"].as_str() {
                problems.push_str(e);
            }
            if let Some(e) = r["sidecar_error"].as_str() {
                problems.push_str(&format!(" sidecar refused: {e}"));
            }
            let short = |v: &Value| v.as_str().map(|h| h[..h.len().min(12)].to_string());
            let sidecar = short(&r["sidecar"])
                .map(|h| format!("  sidecar {h}"))
                .unwrap_or_default();
            // A server says whom it runs for (none: a sidecar naming only
            // unknown tenants, say).
            let tenants = match r["tenants"].as_array() {
                Some(ts) if ts.is_empty() => "  for no tenant".to_string(),
                Some(ts) => format!(
                    "  for {}",
                    ts.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => String::new(),
            };
            outln!(
                "{:<16} {:<10} {:>10} bytes  {}{sidecar}{tenants}  {}",
                r["name"].as_str().unwrap_or(""),
                status,
                r["size"].as_u64().map_or("-".into(), |n| n.to_string()),
                short(&r["hash"]).unwrap_or_default(),
                problems.trim()
            );
        }
    }
    if !json && t.url.is_none() && rows.iter().any(|r| r["status"] == OFFLINE) {
        outln!("(files, not loaded: --url URL --token T for a running server's view)");
    }
    Ok(0)
}

/// The status of a plugin file listed without a server.
const OFFLINE: &str = "file (not loaded: use --url for a running server)";

/// A file of the folder that is not read as a plugin or a sidecar.
fn ignored_row(file: &str, reason: &str) -> Value {
    serde_json::json!({ "file": file, "status": "ignored", "reason": reason })
}
