//! What the registry tells of each plugin: its status for the admin API and
//! `hookhost plugins`, the folder's ignored files, and why a delivery's
//! plugin is not loaded.

use super::{Registry, State};
use crate::live::Tenants;
use crate::runtime::convert;
use crate::runtime::sidecar::assigned_to;
use serde::Serialize;
use std::time::SystemTime;

#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub status: &'static str,
    pub hash: Option<String>,
    pub size: Option<u64>,
    pub loaded_at_ms: Option<i64>,
    pub compile_ms: Option<u64>,
    /// How long the file being compiled now (a first version, or a newer
    /// file of a loaded plugin) has been at it.
    pub compiling_for_ms: Option<u64>,
    pub from_cache: Option<bool>,
    pub subscriptions: Option<Vec<&'static str>>,
    pub last_error: Option<String>,
    /// The content hash of the `NAME.toml` in force (none without one).
    pub sidecar: Option<String>,
    /// Why `NAME.toml` was refused (the previous one stays in force).
    pub sidecar_error: Option<String>,
    pub tenants: Vec<String>,
}

/// A file in the plugins folder that is not read, and why.
#[derive(Debug, Clone, Serialize)]
pub struct IgnoredFile {
    pub file: String,
    pub reason: String,
}

/// The tenants `plugin` runs for: those that name it, those its sidecar
/// names, or else the default tenant.
pub(super) fn assigned(st: &State, tenants: &Tenants, plugin: &str) -> Vec<String> {
    let sidecar_tenants = st.sidecars.get(plugin).and_then(|s| s.tenants.as_ref());
    assigned_to(tenants, plugin, sidecar_tenants.map(Vec::as_slice))
}

impl Registry {
    /// Why `name` has no loaded version, for a delivery that cannot run.
    pub fn why_not_loaded(&self, name: &str) -> String {
        let st = self.state.read().unwrap();
        if let Some(f) = st.errors.get(name).filter(|f| f.unreadable) {
            format!("plugin is not loaded: {}", f.error)
        } else if let Some(f) = st.errors.get(name) {
            format!(
                "plugin is not loaded: its file ({}) failed to load: {}",
                &f.hash[..12.min(f.hash.len())],
                f.error
            )
        } else if st.compiling.contains_key(name) {
            "plugin is not loaded yet: its file is compiling".into()
        } else if st.stamps.contains_key(name) {
            "plugin is not loaded yet: its file is queued to compile".into()
        } else {
            format!("plugin is not loaded: no {name}.wasm in the plugins folder")
        }
    }

    pub fn statuses(&self) -> Vec<PluginStatus> {
        let st = self.state.read().unwrap();
        let tenants = &self.live.get().tenants;
        st.stamps
            .keys()
            .map(|name| {
                let p = st.plugins.get(name);
                let failed = st.errors.get(name);
                let err = failed.map(|f| f.error.clone());
                let compiling = st.compiling.get(name);
                PluginStatus {
                    name: name.clone(),
                    status: match (p, compiling, &err) {
                        (Some(_), Some(_), _) => "loaded (compiling a newer file)",
                        (Some(_), None, None) => "loaded",
                        (Some(_), None, Some(_)) => "loaded (newer file failed)",
                        (None, Some(_), _) => "compiling",
                        (None, None, Some(_)) => "failed",
                        // Seen in the folder, waiting behind another compile.
                        (None, None, None) => "queued",
                    },
                    // The loaded version's; with none, the failed file's.
                    hash: p
                        .map(|p| &p.hash)
                        .or(failed.filter(|f| !f.unreadable).map(|f| &f.hash))
                        .cloned(),
                    size: p.map(|p| p.size).or(failed.map(|f| f.size)),
                    loaded_at_ms: p.map(|p| {
                        p.loaded_at
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| d.as_millis() as i64)
                            .unwrap_or(0)
                    }),
                    compile_ms: p.map(|p| p.compile_time.as_millis() as u64),
                    compiling_for_ms: compiling.map(|c| c.since.elapsed().as_millis() as u64),
                    from_cache: p.map(|p| p.from_cache),
                    subscriptions: p.and_then(|p| {
                        p.subscriptions
                            .as_ref()
                            .map(|s| s.iter().map(|k| convert::kind_name(*k)).collect())
                    }),
                    last_error: err,
                    sidecar: st.sidecars.get(name).map(|s| s.hash.clone()),
                    sidecar_error: st.sidecar_errors.get(name).cloned(),
                    tenants: assigned(&st, tenants, name),
                }
            })
            .collect()
    }

    /// Files in the folder that look meant as plugins or sidecars but are
    /// not read, with the reason.
    pub fn ignored(&self) -> Vec<IgnoredFile> {
        self.state
            .read()
            .unwrap()
            .ignored
            .iter()
            .map(|(file, reason)| IgnoredFile {
                file: file.clone(),
                reason: reason.clone(),
            })
            .collect()
    }
}
