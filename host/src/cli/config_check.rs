//! `hookhost config check`: reads a configuration file as `serve` (and a
//! reload) would — syntax, unknown keys, names, `env:` variables — and says
//! what each tenant gets and what looks unintended, before it is deployed.

use super::out::outln;
use crate::config::{Config, Grant};
use crate::live::{warnings, Tenants, Warning};
use crate::runtime::folder::Listing;
use crate::runtime::sidecar::{assigned_to, unknown_tenants, Sidecar};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub fn check(file: &Path, plugins_dir: Option<&Path>) -> anyhow::Result<i32> {
    let checked = Config::load(file)
        .map_err(anyhow::Error::from)
        .and_then(|c| {
            let tenants = c.tenants()?;
            c.admin.resolve()?;
            Ok((c, tenants))
        });
    let (config, tenants) = match checked {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}: invalid: {e:#}", file.display());
            return Ok(1);
        }
    };
    let dir = plugins_dir.unwrap_or(&config.server.plugins_dir);
    let mut found = warnings(&tenants, tenants.keys());
    let listing = crate::runtime::folder::list(dir).ok();
    let present: Option<BTreeSet<&String>> = listing.as_ref().map(|l| l.plugins.keys().collect());
    for t in tenants.values() {
        for p in t.config.named_plugins() {
            if let Some(present) = &present {
                if !present.contains(p) {
                    found.push(Warning {
                        tenant: t.name.clone(),
                        plugin: Some(p.clone()),
                        message: "not in the plugins folder",
                    });
                }
            }
        }
    }
    let sidecars: BTreeMap<&String, _> = listing
        .iter()
        .flat_map(|l| &l.sidecars)
        .map(|(name, path)| (name, Sidecar::read(path)))
        .collect();
    outln!(
        "{}: valid ({} tenant{})",
        file.display(),
        tenants.len(),
        if tenants.len() == 1 { "" } else { "s" }
    );
    for t in tenants.values() {
        let plugins = if t.config.plugins.is_empty() {
            "none named".to_string()
        } else {
            t.config.plugins.join(", ")
        };
        outln!(
            "tenant {}: {} secret{}, plugins {plugins}, gateway account {}",
            t.name,
            t.secrets.len(),
            if t.secrets.len() == 1 { "" } else { "s" },
            if t.whapi.is_some() { "yes" } else { "no" },
        );
        if let Some(l) = &listing {
            outln!("  runs {}", runs(&t.name, &tenants, l, &sidecars));
        }
        for (name, p) in &t.config.plugin {
            let grants: Vec<&str> = p
                .grants
                .as_deref()
                .unwrap_or(&Grant::DEFAULT)
                .iter()
                .map(|g| g.as_str())
                .collect();
            outln!("  plugin {name}: grants {}", grants.join(", "));
        }
    }
    for w in &found {
        match &w.plugin {
            Some(p) => outln!("warning: tenant {}, plugin {p}: {}", w.tenant, w.message),
            None => outln!("warning: tenant {}: {}", w.tenant, w.message),
        }
    }
    for (file, reason) in listing.iter().flat_map(|l| &l.ignored) {
        outln!("warning: plugins folder: {file} ignored: {reason}");
    }
    for (name, sidecar) in &sidecars {
        match sidecar {
            Err(e) => outln!("warning: plugins folder: {name}.toml refused: {e}"),
            Ok(sidecar) => {
                for t in unknown_tenants(sidecar, &tenants) {
                    outln!(
                        "warning: plugins folder: {name}.toml names tenant `{t}`, which this file \
                         does not have: the plugin does not run for it"
                    );
                }
            }
        }
    }
    if present.is_none() {
        outln!(
            "note: no plugins folder at {}: plugin names not checked",
            dir.display()
        );
    }
    Ok(0)
}

/// What runs for `tenant`, as a server starting on this folder would have
/// it (a refused sidecar is not in force): the plugins the tenant names, in
/// its order; those whose sidecar names it; those nobody assigns, which
/// fall to the default tenant.
fn runs(
    tenant: &str,
    tenants: &Tenants,
    listing: &Listing,
    sidecars: &BTreeMap<&String, Result<Sidecar, String>>,
) -> String {
    let t = &tenants[tenant];
    let (mut named, mut by_sidecar, mut unassigned) = (Vec::new(), Vec::new(), Vec::new());
    for plugin in listing.plugins.keys() {
        let sidecar = sidecars.get(plugin).and_then(|s| s.as_ref().ok());
        let sidecar_tenants = sidecar.and_then(|s| s.tenants.as_deref());
        if !assigned_to(tenants, plugin, sidecar_tenants)
            .iter()
            .any(|n| n == tenant)
        {
            continue;
        }
        if t.config.named_plugins().contains(plugin) {
            named.push(plugin.as_str());
        } else if sidecar_tenants.is_some() {
            by_sidecar.push(plugin.as_str());
        } else {
            unassigned.push(plugin.as_str());
        }
    }
    named.sort_by_key(|p| t.config.plugins.iter().position(|n| n == p));
    let mut parts = Vec::new();
    if !named.is_empty() {
        parts.push(named.join(", "));
    }
    if !by_sidecar.is_empty() {
        parts.push(format!("named by their sidecar: {}", by_sidecar.join(", ")));
    }
    if !unassigned.is_empty() {
        parts.push(format!("named by no tenant: {}", unassigned.join(", ")));
    }
    if parts.is_empty() {
        "no plugin".into()
    } else {
        parts.join("; ")
    }
}
