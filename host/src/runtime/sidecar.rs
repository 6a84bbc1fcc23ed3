//! `NAME.toml` beside `NAME.wasm`, and what it decides together with the
//! configuration: the tenants a plugin runs for and, for each, what it may
//! do (its grants, limits and settings).

use crate::config::{Grant, Limits, LimitsOverride, TenantConfig, DEFAULT_TENANT};
use crate::live::Tenants;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// `NAME.toml` beside `NAME.wasm`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sidecar {
    pub tenants: Option<Vec<String>>,
    pub grants: Option<Vec<Grant>>,
    pub limits: LimitsOverride,
    pub settings: toml::Table,
    /// The file's content hash, to tell which version is in force.
    #[serde(skip)]
    pub hash: String,
}

impl Sidecar {
    /// Reads and checks `NAME.toml`; the error says what is wrong.
    pub fn read(path: &Path) -> Result<Sidecar, String> {
        Sidecar::parse(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
    }

    /// Checks the text of a `NAME.toml`.
    pub fn parse(text: &str) -> Result<Sidecar, String> {
        let mut sidecar = toml::from_str::<Sidecar>(text).map_err(|e| one_line(text, &e))?;
        sidecar.limits.check("[limits]")?;
        sidecar.hash = super::plugin::hash(text.as_bytes());
        Ok(sidecar)
    }
}

/// A TOML error on one line, for a status field or a log line: `line 2,
/// column 1: unknown field ...` rather than the multi-line snippet.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[line_start..].chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

/// What one plugin may do for one tenant.
#[derive(Debug, Clone)]
pub struct Policy {
    pub grants: BTreeSet<Grant>,
    pub limits: Limits,
    pub settings: Arc<serde_json::Value>,
}

/// What `plugin` may do for a tenant. Limits: the server's, then the
/// tenant's, the plugin's sidecar and the tenant's `[tenants.T.plugin.NAME]`
/// table, each over the one before. Settings: the sidecar's, with the
/// tenant's table over them key by key. Grants: the tenant's table, else the
/// sidecar, else [`Grant::DEFAULT`].
pub fn policy_for(
    defaults: Limits,
    tenant: Option<&TenantConfig>,
    sidecar: Option<&Sidecar>,
    plugin: &str,
) -> Policy {
    let tp = tenant.and_then(|t| t.plugin.get(plugin));
    let grants = tp
        .and_then(|p| p.grants.clone())
        .or_else(|| sidecar.and_then(|s| s.grants.clone()))
        .unwrap_or_else(|| Grant::DEFAULT.to_vec());
    let mut limits = defaults;
    if let Some(t) = tenant {
        limits = limits.apply(&t.limits);
    }
    if let Some(s) = sidecar {
        limits = limits.apply(&s.limits);
    }
    if let Some(p) = tp {
        limits = limits.apply(&p.limits);
    }
    let mut settings = sidecar.map(|s| s.settings.clone()).unwrap_or_default();
    if let Some(p) = tp {
        for (k, v) in &p.settings {
            settings.insert(k.clone(), v.clone());
        }
    }
    let settings =
        serde_json::to_value(settings).unwrap_or(serde_json::Value::Object(Default::default()));
    Policy {
        grants: grants.into_iter().collect(),
        limits,
        settings: Arc::new(settings),
    }
}

/// The tenants that run `plugin`, given the `tenants` of its sidecar in
/// force (`None`: no sidecar, or one that does not say).
pub fn assigned_to(
    tenants: &Tenants,
    plugin: &str,
    sidecar_tenants: Option<&[String]>,
) -> Vec<String> {
    let mut out: Vec<String> = tenants
        .values()
        .filter(|t| {
            t.config.plugins.iter().any(|p| p == plugin) || t.config.plugin.contains_key(plugin)
        })
        .map(|t| t.name.clone())
        .collect();
    if let Some(ts) = sidecar_tenants {
        for t in ts {
            if tenants.contains_key(t) && !out.contains(t) {
                out.push(t.clone());
            }
        }
    }
    // Only a plugin nothing assigns falls to the default tenant: one whose
    // sidecar names tenants that are all missing (a typo, a tenant taken
    // out of the configuration) runs for nobody rather than for another
    // tenant's events.
    if out.is_empty() && sidecar_tenants.is_none() && tenants.contains_key(DEFAULT_TENANT) {
        out.push(DEFAULT_TENANT.to_string());
    }
    out
}

/// The tenants `sidecar` names that the configuration does not have.
pub fn unknown_tenants<'a>(sidecar: &'a Sidecar, tenants: &Tenants) -> Vec<&'a str> {
    sidecar
        .tenants
        .iter()
        .flatten()
        .filter(|t| !tenants.contains_key(*t))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Sidecar;

    #[test]
    fn a_sidecar_error_is_one_line_placed_by_line_and_character() {
        let err = Sidecar::parse("grants = [\"log\"]\ntenants = [\"ñ\" x]\n").unwrap_err();
        assert!(err.starts_with("line 2, column 16: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = Sidecar::parse("[limits]\nfuel = 0\n").unwrap_err();
        assert!(!err.contains('\n') && err.contains("fuel"), "{err}");
    }
}
