//! The part of the configuration a running server takes again from its file
//! without a restart (`SIGHUP`, `POST /admin/reload`, `hookhost reload`):
//! the tenants — secrets, rate limits, plugins, grants, limits, settings,
//! gateway accounts, concurrency — the default `[limits]`, `[dispatch]`
//! (but its `nice` and `idle_priority`), `[store] retention` and the admin
//! token.
//!
//! Each request, fan-out and delivery reads the settings current when it
//! starts; a delivery already running finishes under the ones it started
//! with. `[server]`, `[runtime]`, the rest of `[store]` and `[dispatch]
//! nice` and `idle_priority` are read at start only: a reload that changes
//! them says which need a restart and applies the rest. A file that does
//! not parse, or names an unset variable, changes nothing.

use crate::capabilities::Messenger;
use crate::config::{Age, Config, DispatchConfig, Limits, Secret, StoreConfig, Tenant};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

pub type Tenants = BTreeMap<String, Tenant>;

/// One consistent set of reloadable settings.
pub struct Settings {
    pub tenants: Tenants,
    /// The `[limits]` defaults.
    pub limits: Limits,
    /// Each tenant's gateway client (tenants with an account).
    pub messengers: BTreeMap<String, Arc<Messenger>>,
    /// Retries, concurrency caps and `max_pending`.
    pub dispatch: DispatchConfig,
    /// `[store] retention`.
    pub retention: Age,
    /// `[admin] token` (none: the admin API is off).
    pub admin_token: Option<Secret>,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Settings, crate::config::ConfigError> {
        let tenants = config.tenants()?;
        let messengers = tenants
            .iter()
            .filter_map(|(n, t)| {
                t.whapi
                    .clone()
                    .map(|w| (n.clone(), Arc::new(Messenger::new(w))))
            })
            .collect();
        Ok(Settings {
            tenants,
            limits: config.limits,
            dispatch: config.dispatch.clone(),
            retention: config.store.retention,
            messengers,
            admin_token: config.admin.resolve()?,
        })
    }
}

/// Reads the configuration again (the file, with the command line's
/// overrides applied the same way as at start).
pub type Source = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// What a reload changed.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub limits_changed: bool,
    pub dispatch_changed: bool,
    pub retention_changed: bool,
    pub admin_token_changed: bool,
    /// What differs from the running server but takes effect only at a
    /// restart (left as it was until then).
    pub restart_needed: Vec<String>,
}

impl Reloaded {
    pub fn anything(&self) -> bool {
        self.limits_changed
            || self.dispatch_changed
            || self.retention_changed
            || self.admin_token_changed
            || !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this server was started without a configuration file: there is nothing to reload")]
    NoSource,
    #[error("{0:#}; the running configuration is unchanged")]
    Invalid(anyhow::Error),
}

pub struct Live {
    current: RwLock<Arc<Settings>>,
    /// The configuration the server started with (its start-only sections
    /// stay in force until a restart).
    started: Config,
    source: Option<Source>,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// Told after each applied reload.
    reloaded: tokio::sync::Notify,
}

impl Live {
    pub fn new(config: &Config, source: Option<Source>) -> anyhow::Result<Arc<Live>> {
        let settings = Settings::from_config(config)?;
        warn_about(&settings, settings.tenants.keys());
        Ok(Arc::new(Live {
            current: RwLock::new(Arc::new(settings)),
            started: config.clone(),
            source,
            reloading: Mutex::new(()),
            reloaded: tokio::sync::Notify::new(),
        }))
    }

    /// The settings in force now.
    pub fn get(&self) -> Arc<Settings> {
        self.current.read().unwrap().clone()
    }

    /// Reads the configuration again and puts in force what may change
    /// while running (see the module's comment).
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoSource)?;
        let _one = self.reloading.lock().unwrap();
        let config = source().map_err(ReloadError::Invalid)?;
        let next = Settings::from_config(&config).map_err(|e| ReloadError::Invalid(e.into()))?;
        let old = self.get();
        let mut out = Reloaded {
            limits_changed: old.limits != next.limits,
            dispatch_changed: old.dispatch != next.dispatch,
            retention_changed: old.retention != next.retention,
            admin_token_changed: old.admin_token != next.admin_token,
            restart_needed: restart_needed(&self.started, &config),
            ..Reloaded::default()
        };
        for (name, t) in &next.tenants {
            match old.tenants.get(name) {
                None => out.added.push(name.clone()),
                Some(o) if !same_tenant(o, t) => out.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        out.removed = old
            .tenants
            .keys()
            .filter(|n| !next.tenants.contains_key(*n))
            .cloned()
            .collect();
        warn_about(&next, out.added.iter().chain(&out.changed));
        *self.current.write().unwrap() = Arc::new(next);
        self.reloaded.notify_waiters();
        Ok(out)
    }

    /// Completes at the next applied reload (for loops that sleep on a
    /// setting, to read it again).
    pub async fn reloaded(&self) {
        self.reloaded.notified().await
    }
}

fn same_tenant(a: &Tenant, b: &Tenant) -> bool {
    a.config == b.config && a.secrets == b.secrets && a.whapi == b.whapi
}

/// The start-only sections that differ, and a memory limit the engine was
/// not started for.
fn restart_needed(running: &Config, next: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let sections = [
        ("[server]", running.server != next.server),
        ("[store] (other than retention)", {
            let rest = |s: &StoreConfig| StoreConfig {
                retention: Age(None),
                ..s.clone()
            };
            rest(&running.store) != rest(&next.store)
        }),
        (
            "[dispatch] nice",
            running.dispatch.nice != next.dispatch.nice,
        ),
        (
            "[dispatch] idle_priority",
            running.dispatch.idle_priority != next.dispatch.idle_priority,
        ),
        ("[runtime]", {
            // Not from the file: the binary's path, which an upgrade in
            // place changes under a running server.
            let file = |r: &crate::config::RuntimeConfig| crate::config::RuntimeConfig {
                compiler_exe: None,
                ..r.clone()
            };
            file(&running.runtime) != file(&next.runtime)
        }),
    ];
    for (name, differs) in sections {
        if differs {
            out.push(name.to_string());
        }
    }
    let (engine, wanted) = (engine_memory_mb(running), engine_memory_mb(next));
    if wanted > engine {
        out.push(format!(
            "memory_mb {wanted}: above the {engine} MiB the engine was started with \
             (plugins get at most {engine} MiB until then)"
        ));
    }
    out
}

/// The largest memory limit the configuration gives any plugin (MiB), at
/// least `[runtime] max_memory_mb`: what the engine's instance slots are
/// sized for.
pub fn engine_memory_mb(config: &Config) -> u64 {
    let mut m = config.limits.memory_mb;
    for t in config.tenants.values() {
        m = m.max(t.limits.memory_mb.unwrap_or(0));
        for p in t.plugin.values() {
            m = m.max(p.limits.memory_mb.unwrap_or(0));
        }
    }
    m.max(config.runtime.max_memory_mb)
}

/// A tenant's setting that is valid but probably not meant.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub tenant: String,
    pub plugin: Option<String>,
    pub message: &'static str,
}

/// The warnings about the tenants `names`.
pub fn warnings<'a>(tenants: &Tenants, names: impl Iterator<Item = &'a String>) -> Vec<Warning> {
    let mut out = Vec::new();
    for t in names.filter_map(|n| tenants.get(n)) {
        if t.secrets.is_empty() {
            out.push(Warning {
                tenant: t.name.clone(),
                plugin: None,
                message: "tenant has no secret: unsigned events are accepted",
            });
        }
        // Settings the plugin could not read: they would be ignored in
        // silence (a `config` read without the grant finds nothing).
        for (plugin, p) in &t.config.plugin {
            let reads = p
                .grants
                .as_ref()
                .is_none_or(|g| g.contains(&crate::config::Grant::Config));
            if !reads && !p.settings.is_empty() {
                out.push(Warning {
                    tenant: t.name.clone(),
                    plugin: Some(plugin.clone()),
                    message: "settings are given but `config` is not in the plugin's grants: \
                              it reads none of them",
                });
            }
        }
        if t.whapi.is_some() {
            continue;
        }
        let senders = t.config.plugin.iter().filter(|(_, p)| {
            p.grants
                .as_ref()
                .is_some_and(|g| g.contains(&crate::config::Grant::Messaging))
        });
        for (plugin, _) in senders {
            out.push(Warning {
                tenant: t.name.clone(),
                plugin: Some(plugin.clone()),
                message: "plugin may send messages but the tenant has no gateway account \
                          ([tenants.T.whapi] token and instance_id): its sends will be refused",
            });
        }
    }
    out
}

fn warn_about<'a>(settings: &Settings, names: impl Iterator<Item = &'a String>) {
    for w in warnings(&settings.tenants, names) {
        match &w.plugin {
            Some(p) => tracing::warn!(tenant = %w.tenant, plugin = %p, "{}", w.message),
            None => tracing::warn!(tenant = %w.tenant, "{}", w.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &'static Mutex<String>) -> Source {
        Box::new(move || Config::parse(&text.lock().unwrap()).map_err(anyhow::Error::msg))
    }

    #[test]
    fn a_reload_applies_tenants_and_limits_and_names_the_rest() {
        static TEXT: Mutex<String> = Mutex::new(String::new());
        let first = r#"
            [limits]
            fuel = 1000
            [tenants.a]
            secrets = ["s1"]
            [tenants.b]
            secrets = ["s2"]
        "#;
        *TEXT.lock().unwrap() = first.into();
        let config = Config::parse(first).unwrap();
        let live = Live::new(&config, Some(source(&TEXT))).unwrap();
        assert_eq!(live.reload().unwrap(), Reloaded::default());

        *TEXT.lock().unwrap() = r#"
            [server]
            max_inflight = 7
            [dispatch]
            max_attempts = 3
            nice = 5
            [admin]
            token = "t0ken"
            [limits]
            fuel = 2000
            memory_mb = 512
            [tenants.a]
            secrets = ["s1", "s3"]
            [tenants.c]
        "#
        .into();
        let r = live.reload().unwrap();
        assert_eq!(r.added, ["c"]);
        assert_eq!(r.removed, ["b"]);
        assert_eq!(r.changed, ["a"]);
        assert!(r.limits_changed);
        assert!(r.admin_token_changed);
        assert!(r.dispatch_changed);
        assert_eq!(r.restart_needed.len(), 3, "{:?}", r.restart_needed);
        assert_eq!(r.restart_needed[..2], ["[server]", "[dispatch] nice"]);
        assert!(r.restart_needed[2].starts_with("memory_mb 512: above the 128 MiB"));
        let now = live.get();
        assert_eq!(now.limits.fuel, 2000);
        assert_eq!(now.dispatch.max_attempts, 3);
        assert_eq!(now.tenants["a"].secrets.len(), 2);
        assert!(!now.tenants.contains_key("b"));
        assert_eq!(now.admin_token.as_ref().unwrap().expose(), b"t0ken");

        // A file that does not parse changes nothing.
        *TEXT.lock().unwrap() = "[tenants.a]\nsecrets = 3".into();
        let e = live.reload().unwrap_err().to_string();
        assert!(e.contains("the running configuration is unchanged"), "{e}");
        assert!(live.get().tenants.contains_key("c"));

        // Nor does one that names an unset variable.
        *TEXT.lock().unwrap() = "[tenants.a]\nsecrets = [\"env:HOOKHOST_TEST_UNSET_VAR\"]".into();
        assert!(live.reload().is_err());
        assert!(live.get().tenants.contains_key("c"));
    }

    #[test]
    fn retention_is_reloadable_and_the_rest_of_the_store_is_not() {
        static TEXT: Mutex<String> = Mutex::new(String::new());
        *TEXT.lock().unwrap() = "[tenants.a]\n".into();
        let live = Live::new(
            &Config::parse("[tenants.a]\n").unwrap(),
            Some(source(&TEXT)),
        )
        .unwrap();
        *TEXT.lock().unwrap() = "[store]\nretention = \"1h\"\n[tenants.a]\n".into();
        let r = live.reload().unwrap();
        assert!(r.retention_changed && r.restart_needed.is_empty(), "{r:?}");
        assert_eq!(
            live.get().retention,
            Age(Some(std::time::Duration::from_secs(3600)))
        );
        *TEXT.lock().unwrap() = "[store]\nretention = \"1h\"\nmax_batch = 7\n[tenants.a]\n".into();
        let r = live.reload().unwrap();
        assert!(!r.anything(), "{r:?}");
        assert_eq!(r.restart_needed, ["[store] (other than retention)"]);
    }

    /// The compiler's path is the binary's, not the file's: a binary
    /// upgraded in place (its path now ends in ` (deleted)`) is not a
    /// `[runtime]` change to restart for.
    #[test]
    fn the_binarys_path_is_not_a_runtime_change() {
        static TEXT: Mutex<String> = Mutex::new(String::new());
        *TEXT.lock().unwrap() = "[runtime]\npooling = false\n[tenants.a]\n".into();
        let mut started = Config::parse(&TEXT.lock().unwrap()).unwrap();
        started.runtime.compiler_exe = Some("/usr/bin/hookhost".into());
        let upgraded: Source = Box::new(|| {
            let mut c = Config::parse(&TEXT.lock().unwrap()).map_err(anyhow::Error::msg)?;
            c.runtime.compiler_exe = Some("/usr/bin/hookhost (deleted)".into());
            Ok(c)
        });
        let live = Live::new(&started, Some(upgraded)).unwrap();
        assert_eq!(live.reload().unwrap(), Reloaded::default());
        *TEXT.lock().unwrap() = "[runtime]\npooling = true\n[tenants.a]\n".into();
        assert_eq!(live.reload().unwrap().restart_needed, ["[runtime]"]);
    }

    #[test]
    fn without_a_file_there_is_nothing_to_reload() {
        let live = Live::new(&Config::default(), None).unwrap();
        assert!(matches!(live.reload(), Err(ReloadError::NoSource)));
    }
}
