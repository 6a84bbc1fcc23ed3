//! The plugins folder, live: every `*.wasm` there is a plugin named after its
//! file, with an optional `NAME.toml` sidecar. A watcher (plus a periodic
//! rescan) loads new and replaced files off the request path; a broken file
//! is reported and the previous version keeps running; a delivery holds an
//! `Arc` of the version it started with.

use super::cache::{ChildCompiler, CompileCache};
use super::engine::Runtime;
use super::plugin::{self, LoadedPlugin};
use super::sidecar::{policy_for, unknown_tenants, Policy, Sidecar};
use crate::capabilities::{Capabilities, SqlDb, SqlPool};
use crate::config::Config;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

mod load;
mod status;

use status::assigned;
pub use status::{IgnoredFile, PluginStatus};

const RESCAN: Duration = Duration::from_secs(2);
/// A plugin file's size and modification time, as last looked at.
type Stamp = (u64, SystemTime);

/// A plugin file that failed to load: why, and which content.
struct Failed {
    error: String,
    hash: String,
    size: u64,
    /// For a failure that says nothing about the file (the child compiler
    /// was killed): when to try it again, and how many tries so far.
    retry: Option<(Instant, u32)>,
    /// The file could not be read at all (`hash` is empty).
    unreadable: bool,
}

/// While a plugin with no loaded version has had at most this many killed
/// compiles, its deliveries wait for the next try (about 35 s and the
/// compiles); after that they run and fail, so that a compile killed every
/// time does not hold fan-out at `max_pending` for good.
const HOLD_KILLED_TRIES: u32 = 3;

/// A file being compiled.
struct Compiling {
    since: Instant,
    /// The file's stamp when it was read: another one means it may have
    /// been replaced.
    stamp: Stamp,
    /// The content's hash, to tell a replaced file from a touched one.
    hash: String,
    /// Set when the file is replaced or removed meanwhile.
    cancel: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    sidecars: BTreeMap<String, Sidecar>,
    /// (size, mtime) of each file last looked at.
    stamps: BTreeMap<String, Stamp>,
    /// The last file of each name that failed to load.
    errors: BTreeMap<String, Failed>,
    /// Files being compiled (or read from the cache) now.
    compiling: BTreeMap<String, Compiling>,
    /// Why each invalid sidecar was refused.
    sidecar_errors: BTreeMap<String, String>,
    /// The tenants each sidecar names that the configuration lacks.
    sidecar_unknown_tenants: BTreeMap<String, Vec<String>>,
    /// Files of the folder not read as plugins or sidecars, and why.
    ignored: BTreeMap<String, String>,
}

pub struct Registry {
    runtime: Arc<Runtime>,
    cache: CompileCache,
    /// [`RuntimeConfig::cache_max_mb`](crate::config::RuntimeConfig) in bytes (0: no limit).
    cache_max_bytes: u64,
    dir: PathBuf,
    data_dir: PathBuf,
    /// Tenants, default limits and gateway clients, reloadable.
    live: Arc<Live>,
    store: Store,
    metrics: Arc<Metrics>,
    state: RwLock<State>,
    initial: (Mutex<bool>, Condvar),
    nice: i32,
    stop: AtomicBool,
    kick: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    sql_pool: Arc<SqlPool>,
    /// Told when the set of runnable plugins may have changed (a load
    /// ended, a file went away), so held deliveries start without waiting
    /// for the dispatcher's next poll.
    on_change: std::sync::OnceLock<Arc<crate::wake::Wake>>,
    /// The folder there but unreadable: said when it starts and ends.
    unreadable: crate::repeated::Repeated,
}

impl Registry {
    pub fn start(
        config: &Config,
        live: Arc<Live>,
        store: Store,
        metrics: Arc<Metrics>,
        on_change: Arc<crate::wake::Wake>,
    ) -> anyhow::Result<Arc<Registry>> {
        let reg = Self::new(config, live, store, metrics)?;
        let _ = reg.on_change.set(on_change);
        let (kick, kicked) = std::sync::mpsc::channel::<()>();
        let (changed, changes) = std::sync::mpsc::channel::<()>();
        *reg.kick.lock().unwrap() = Some(kick.clone());
        let watcher = watch(&reg.dir, changed);
        // What needs no compiling (a removed file, a sidecar) is applied as
        // soon as the folder changes, even while a large plugin compiles on
        // the loader thread; the loader then compiles what is new.
        let r = reg.clone();
        std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || {
                let _watcher = watcher;
                while !r.stop.load(Ordering::Relaxed) {
                    match changes.recv_timeout(Duration::from_secs(1)) {
                        // Let a burst of file events settle (a copy in progress).
                        Ok(()) => {
                            std::thread::sleep(Duration::from_millis(100));
                            while changes.try_recv().is_ok() {}
                            r.list_folder();
                            let _ = kick.send(());
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
        let r = reg.clone();
        std::thread::Builder::new()
            .name("plugin-loader".into())
            .spawn(move || {
                // Compiling a large component must not starve the request path.
                crate::priority::lower_current_thread(r.nice);
                // The dispatcher may start once the folder has been listed:
                // it holds back deliveries to plugins still compiling.
                r.scan_then(|| {
                    r.mark_initial_done();
                    r.warn_missing();
                });
                while !r.stop.load(Ordering::Relaxed) {
                    match kicked.recv_timeout(RESCAN) {
                        Ok(()) => while kicked.try_recv().is_ok() {},
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    if !r.stop.load(Ordering::Relaxed) {
                        r.scan();
                    }
                }
            })?;
        Ok(reg)
    }

    /// A registry without the watcher thread (offline commands).
    pub fn new(
        config: &Config,
        live: Arc<Live>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Registry>> {
        let runtime = Runtime::new(
            config.runtime.pooling,
            crate::live::engine_memory_mb(config),
            config.runtime.parallel_compile,
        )?;
        Ok(Arc::new(Registry {
            runtime,
            cache: compile_cache(config),
            cache_max_bytes: config.runtime.cache_max_mb.saturating_mul(1 << 20),
            dir: config.server.plugins_dir.clone(),
            data_dir: config.server.data_dir.clone(),
            live,
            store,
            metrics,
            state: RwLock::new(State::default()),
            initial: (Mutex::new(false), Condvar::new()),
            nice: config.dispatch.nice,
            stop: AtomicBool::new(false),
            kick: Mutex::new(None),
            sql_pool: Arc::default(),
            on_change: std::sync::OnceLock::new(),
            unreadable: crate::repeated::Repeated::new("reading the plugins folder"),
        }))
    }

    fn mark_initial_done(&self) {
        *self.initial.0.lock().unwrap() = true;
        self.initial.1.notify_all();
        self.changed();
    }

    /// The configuration was reloaded: which plugins run for whom may
    /// have changed, so held deliveries are looked at again.
    pub fn reconfigured(&self) {
        // Before the first listing the folder is not known yet (that
        // listing warns by itself).
        if self.initial_load_done() {
            self.warn_missing();
        }
        self.changed();
    }

    fn changed(&self) {
        if let Some(n) = self.on_change.get() {
            n.notify();
        }
    }

    /// True once the plugins present at start have been loaded (or failed).
    pub fn initial_load_done(&self) -> bool {
        *self.initial.0.lock().unwrap()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.kick.lock().unwrap().take();
        self.runtime.stop();
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.state.read().unwrap().plugins.get(name).cloned()
    }

    /// Plugins (present in the folder) that run for `tenant`.
    pub fn plugins_for(&self, tenant: &str) -> Vec<String> {
        let st = self.state.read().unwrap();
        let settings = self.live.get();
        st.stamps
            .keys()
            .filter(|p| {
                assigned(&st, &settings.tenants, p)
                    .iter()
                    .any(|t| t == tenant)
            })
            .cloned()
            .collect()
    }

    /// Says, once a plugin is loaded, how many of its dead letters failed
    /// only because it was not (a file that did not load, missing, or
    /// compiling while their retries ran out), and how to run them now:
    /// they are not retried by themselves, since a reply sent hours late
    /// may do more harm than none.
    fn point_out_dead_letters(&self, plugin: &str) {
        match self.store.dead_unloaded(plugin) {
            Ok(counts) => {
                for (tenant, n) in counts {
                    tracing::warn!(
                        plugin,
                        tenant,
                        dead_letters = n,
                        "dead letters of this plugin from while it was not loaded; \
                         `hookhost dead-letters retry --all --tenant {tenant} --plugin {plugin}` runs them"
                    );
                }
            }
            Err(e) => tracing::debug!(plugin, error = %e, "cannot count dead letters"),
        }
    }

    /// Whether `plugin` runs for `tenant` under the configuration now in
    /// force (a reload may have taken it away since its deliveries queued).
    pub fn runs_for(&self, tenant: &str, plugin: &str) -> bool {
        let st = self.state.read().unwrap();
        assigned(&st, &self.live.get().tenants, plugin)
            .iter()
            .any(|t| t == tenant)
    }

    pub fn policy(&self, tenant: &str, plugin: &str) -> Policy {
        let st = self.state.read().unwrap();
        let settings = self.live.get();
        let t = settings.tenants.get(tenant).map(|t| &t.config);
        policy_for(settings.limits, t, st.sidecars.get(plugin), plugin)
    }

    /// Capabilities for one delivery of `plugin` for `tenant`.
    pub fn capabilities(
        &self,
        tenant: &str,
        plugin: &str,
        event_seq: i64,
        policy: &Policy,
    ) -> Capabilities {
        Capabilities {
            tenant: tenant.into(),
            plugin: plugin.into(),
            event_seq,
            grants: policy.grants.clone(),
            limits: policy.limits,
            store: self.store.clone(),
            settings: policy.settings.clone(),
            sql: SqlDb::pooled(self.sql_path(tenant, plugin), self.sql_pool.clone()),
            messenger: self.live.get().messengers.get(tenant).cloned(),
            resend: false,
            last_attempt: false,
            dry_run: false,
            deadline: Instant::now() + Duration::from_millis(policy.limits.timeout_ms),
            sends: 0,
            log_lines: 0,
            log_dropped: 0,
            denied: None,
            journal: None,
        }
    }

    pub fn sql_path(&self, tenant: &str, plugin: &str) -> PathBuf {
        self.data_dir
            .join(crate::store::PLUGIN_DATA_DIR)
            .join(tenant)
            .join(format!("{plugin}.sqlite"))
    }

    /// Says which plugins the configuration names that the folder does not
    /// hold (a typo, or a file not deployed yet): nothing runs under those
    /// names until the file arrives.
    fn warn_missing(&self) {
        let st = self.state.read().unwrap();
        if st.stamps.is_empty() {
            tracing::info!(
                dir = %self.dir.display(),
                "no plugins yet: drop NAME.wasm files into the plugins folder (it is watched)"
            );
        }
        for t in self.live.get().tenants.values() {
            let named = t.config.named_plugins();
            for p in named.into_iter().filter(|p| !st.stamps.contains_key(*p)) {
                tracing::warn!(
                    tenant = %t.name,
                    plugin = %p,
                    dir = %self.dir.display(),
                    "the configuration names a plugin that is not in the plugins folder"
                );
            }
        }
    }

    /// Looks at the folder once and applies what changed.
    pub fn scan(&self) {
        self.scan_then(|| {});
    }

    /// Plugins whose first version is still being compiled, or will be
    /// again soon after its compile was killed (the first
    /// [`HOLD_KILLED_TRIES`] times): their deliveries wait rather than fail.
    pub fn loading(&self) -> Vec<String> {
        let st = self.state.read().unwrap();
        st.stamps
            .keys()
            .filter(|n| {
                !st.plugins.contains_key(*n)
                    && st.errors.get(*n).is_none_or(|f| {
                        f.retry.is_some_and(|(_, tries)| tries <= HOLD_KILLED_TRIES)
                    })
            })
            .cloned()
            .collect()
    }

    /// Scans; `listed` runs once every present file is known, before the
    /// (possibly slow) compilations.
    fn scan_then(&self, listed: impl FnOnce()) {
        let wasm = self.list_folder();
        listed();
        let mut loaded = false;
        for (name, (path, stamp)) in wasm {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let unchanged = {
                let st = self.state.read().unwrap();
                let due = st
                    .errors
                    .get(&name)
                    .and_then(|f| f.retry)
                    .is_some_and(|(at, _)| Instant::now() >= at);
                st.stamps.get(&name) == Some(&stamp) && !due
            };
            if !unchanged {
                self.load_file(&name, &path, stamp);
                self.changed();
                loaded = true;
            }
        }
        self.publish_metrics();
        if loaded {
            self.evict_cache();
        }
    }

    /// Keeps the compile cache within its limit, sparing the entries of
    /// the plugins loaded now.
    fn evict_cache(&self) {
        if self.cache_max_bytes == 0 {
            return;
        }
        let keep: Vec<PathBuf> = {
            let st = self.state.read().unwrap();
            st.plugins
                .values()
                .map(|p| self.cache.entry(&self.runtime, &p.hash))
                .collect()
        };
        let (files, bytes) = self.cache.evict(&keep, self.cache_max_bytes);
        if files > 0 {
            tracing::info!(files, bytes, dir = %self.cache.dir().display(), "compile cache trimmed");
        }
    }

    /// Reads the folder and applies what needs no compiling: sidecars,
    /// removed files, new names (listed as queued). Returns the plugin
    /// files, smallest first: a large JS or Python component should not
    /// hold up the Rust plugins behind it.
    fn list_folder(&self) -> Vec<(String, (PathBuf, Stamp))> {
        let listing = match super::folder::list(&self.dir) {
            Ok(l) => {
                self.unreadable.succeeded();
                l
            }
            // There but not readable (permissions, an I/O error, a file
            // put in its place): nothing is known to have changed, so the
            // plugins loaded stay rather than being taken away.
            Err(e) if self.dir.exists() => {
                self.unreadable
                    .failed(&format_args!("{}: {e}", self.dir.display()));
                return Vec::new();
            }
            // Gone: as if every file in it were removed.
            Err(_) => {
                self.note_ignored(BTreeMap::new());
                self.apply_removals(&BTreeSet::new());
                return Vec::new();
            }
        };
        self.note_ignored(listing.ignored);
        let sidecars = listing.sidecars;
        let wasm: BTreeMap<String, (PathBuf, Stamp)> = listing
            .plugins
            .into_iter()
            .map(|(name, (path, meta))| {
                let stamp = (
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                );
                (name, (path, stamp))
            })
            .collect();
        self.load_sidecars(&sidecars);
        let names: BTreeSet<String> = wasm.keys().cloned().collect();
        self.apply_removals(&names);
        self.changed();
        {
            let mut st = self.state.write().unwrap();
            for n in &names {
                // Seen now: `plugins_for` lists it while it compiles.
                st.stamps
                    .entry(n.clone())
                    .or_insert((u64::MAX, SystemTime::UNIX_EPOCH));
            }
        }
        // A file compiling now that was removed, or replaced by other
        // content, has its compile dropped; a file only touched (the same
        // bytes, a new mtime) goes on compiling, and so does one seen
        // half-written (copied over in place): the next listing, when the
        // copy ends, judges it.
        let changed: Vec<_> = self
            .state
            .read()
            .unwrap()
            .compiling
            .iter()
            .filter_map(|(name, c)| match wasm.get(name) {
                Some((_, stamp)) if *stamp == c.stamp => None,
                file => Some((name.clone(), file.cloned(), c.hash.clone())),
            })
            .collect();
        for (name, file, hash) in changed {
            let bytes = file.as_ref().and_then(|(path, _)| std::fs::read(path).ok());
            let same = bytes.as_ref().is_some_and(|b| plugin::hash(b) == hash);
            let partial = bytes
                .as_ref()
                .is_some_and(|b| !same && !plugin::looks_complete(b));
            let mut st = self.state.write().unwrap();
            let Some(c) = st.compiling.get_mut(&name).filter(|c| c.hash == hash) else {
                continue;
            };
            match file {
                // Seen: not read again at the next listing.
                Some((_, stamp)) if same => c.stamp = stamp,
                Some(_) if partial => {}
                _ => c.cancel.store(true, Ordering::Relaxed),
            }
        }
        let mut wasm: Vec<_> = wasm.into_iter().collect();
        wasm.sort_by_key(|(_, (_, (size, _)))| *size);
        wasm
    }

    /// Keeps the folder's refused files for the status listing and says
    /// each once (again if its reason changes), not at every rescan.
    fn note_ignored(&self, ignored: BTreeMap<String, String>) {
        let mut st = self.state.write().unwrap();
        for (file, reason) in &ignored {
            if st.ignored.get(file) != Some(reason) {
                tracing::warn!(file = %file, dir = %self.dir.display(), reason = %reason, "file in the plugins folder ignored");
            }
        }
        st.ignored = ignored;
    }

    fn load_sidecars(&self, files: &BTreeMap<String, PathBuf>) {
        let mut parsed = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for (name, path) in files {
            match Sidecar::read(path) {
                Ok(s) => {
                    parsed.insert(name.clone(), s);
                }
                Err(e) => {
                    let st = self.state.read().unwrap();
                    // Said once, not at every rescan.
                    if st.sidecar_errors.get(name) != Some(&e) {
                        tracing::warn!(plugin = %name, error = %e, "invalid sidecar; keeping the previous one");
                    }
                    // Keep the previous sidecar rather than run with none.
                    if let Some(old) = st.sidecars.get(name) {
                        parsed.insert(name.clone(), old.clone());
                    }
                    errors.insert(name.clone(), e);
                }
            }
        }
        // Tenants a sidecar names that the configuration lacks: said once
        // (again when the list changes, after an edit or a reload).
        let tenants = &self.live.get().tenants;
        let unknown: BTreeMap<String, Vec<String>> = parsed
            .iter()
            .filter_map(|(name, s)| {
                let missing: Vec<String> = unknown_tenants(s, tenants)
                    .into_iter()
                    .map(String::from)
                    .collect();
                (!missing.is_empty()).then(|| (name.clone(), missing))
            })
            .collect();
        let mut st = self.state.write().unwrap();
        for (name, missing) in &unknown {
            if st.sidecar_unknown_tenants.get(name) != Some(missing) {
                tracing::warn!(
                    plugin = %name,
                    tenants = %missing.join(", "),
                    "the sidecar names tenants the configuration does not have: the plugin does not run for them"
                );
            }
        }
        st.sidecar_unknown_tenants = unknown;
        st.sidecars = parsed;
        st.sidecar_errors = errors;
    }

    fn apply_removals(&self, present: &BTreeSet<String>) {
        let mut st = self.state.write().unwrap();
        let gone: Vec<String> = st
            .stamps
            .keys()
            .filter(|n| !present.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            st.stamps.remove(&n);
            st.errors.remove(&n);
            if st.plugins.remove(&n).is_some() {
                tracing::info!(plugin = %n, "plugin removed");
            }
        }
    }

    fn publish_metrics(&self) {
        let st = self.state.read().unwrap();
        let live: BTreeSet<(String, String)> = st
            .plugins
            .values()
            .map(|p| (p.name.clone(), p.short_hash().to_string()))
            .collect();
        self.metrics.remove_gauges("hookhost_plugins_loaded", |l| {
            let name = l
                .iter()
                .find(|(k, _)| *k == "plugin")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let hash = l
                .iter()
                .find(|(k, _)| *k == "hash")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            live.contains(&(name, hash))
        });
        for (name, hash) in live {
            self.metrics.set(
                "hookhost_plugins_loaded",
                vec![("plugin", name), ("hash", hash)],
                1.0,
            );
        }
        // The plugins whose newest file did not load (an older version may
        // still run): one series each, gone once a good file loads or the
        // file is removed.
        let failed: BTreeSet<String> = st.errors.keys().cloned().collect();
        self.metrics
            .remove_gauges("hookhost_plugin_file_failed", |l| {
                l.iter().any(|(k, v)| *k == "plugin" && failed.contains(v))
            });
        for name in failed {
            self.metrics
                .set("hookhost_plugin_file_failed", vec![("plugin", name)], 1.0);
        }
    }
}

fn watch(dir: &Path, tx: std::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let _ = std::fs::create_dir_all(dir);
    let mut w = notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .map_err(|e| tracing::warn!(error = %e, "file watcher unavailable; rescanning periodically"))
    .ok()?;
    match w.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch plugins folder; rescanning periodically");
            None
        }
    }
}

fn compile_cache(config: &Config) -> CompileCache {
    let dir = config
        .runtime
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.server.data_dir.join("cache"));
    match (
        &config.runtime.compiler_exe,
        config.runtime.compile_process_min_kb,
    ) {
        (Some(exe), kb) if kb > 0 => CompileCache::with_child_compiler(
            dir,
            ChildCompiler {
                exe: exe.clone(),
                min_bytes: (kb as usize).saturating_mul(1024),
            },
        ),
        _ => CompileCache::new(dir),
    }
}
