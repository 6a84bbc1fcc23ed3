//! Loading one plugin file: read, judged whole or half-written, compiled
//! (cancellable when the file changes), linked and asked for its
//! subscriptions; a failure is kept with its reason, and a killed compile
//! is tried again later.

use super::{Compiling, Failed, Registry, Stamp};
use crate::runtime::plugin::{self, LoadedPlugin};
use crate::runtime::sandbox;
use crate::runtime::sidecar::Policy;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a plugin file that looks half-written (copied over in place)
/// is left for its copy to end before it is tried, and reported, as it is.
const COPY_GRACE: Duration = Duration::from_secs(5);

/// How long after its `tries`-th killed compile a file is compiled again:
/// 5 s, doubling, at most 10 minutes.
fn retry_delay(tries: u32) -> Duration {
    Duration::from_secs(5 << tries.clamp(1, 8).saturating_sub(1)).min(Duration::from_secs(600))
}

impl Registry {
    pub(super) fn load_file(&self, name: &str, path: &Path, stamp: Stamp) {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.note_unreadable(name, stamp, &e);
                return;
            }
        };
        let hash = plugin::hash(&bytes);
        {
            let mut st = self.state.write().unwrap();
            if st
                .plugins
                .get(name)
                .map(|p| p.hash == hash)
                .unwrap_or(false)
            {
                st.stamps.insert(name.to_string(), stamp);
                st.errors.remove(name);
                return;
            }
        }
        // Written a moment ago and cut short: most likely a copy still
        // going on. Read again at the next scan (the stamp is not kept),
        // rather than compiled and reported broken.
        let recent = stamp.1.elapsed().is_ok_and(|age| age < COPY_GRACE);
        if recent && !plugin::looks_complete(&bytes) {
            tracing::debug!(
                plugin = name,
                size = bytes.len(),
                "plugin file looks half-written; waiting for the copy to end"
            );
            return;
        }
        tracing::info!(
            plugin = name,
            hash = &hash[..12],
            size = bytes.len(),
            "loading plugin"
        );
        let cancel = Arc::new(AtomicBool::new(false));
        self.state.write().unwrap().compiling.insert(
            name.to_string(),
            Compiling {
                since: Instant::now(),
                stamp,
                hash: hash.clone(),
                cancel: cancel.clone(),
            },
        );
        let loaded = self.load_bytes(name, &bytes, &cancel);
        if cancel.load(Ordering::Relaxed) {
            // The next scan loads what the folder holds now.
            tracing::info!(
                plugin = name,
                "file replaced or removed while it compiled; compile dropped"
            );
            self.state.write().unwrap().compiling.remove(name);
            return;
        }
        match loaded {
            Ok(p) => {
                tracing::info!(
                    plugin = name,
                    hash = p.short_hash(),
                    size = p.size,
                    compile_ms = p.compile_time.as_millis() as u64,
                    from_cache = p.from_cache,
                    "plugin loaded"
                );
                let mut st = self.state.write().unwrap();
                st.compiling.remove(name);
                if !st.stamps.contains_key(name) {
                    tracing::info!(plugin = name, "file removed while it compiled; not loaded");
                    return;
                }
                st.plugins.insert(name.to_string(), Arc::new(p));
                st.stamps.insert(name.to_string(), stamp);
                st.errors.remove(name);
                drop(st);
                self.point_out_dead_letters(name);
            }
            Err((e, transient)) => {
                let kept = self.get(name).map(|p| p.short_hash().to_string());
                let mut st = self.state.write().unwrap();
                st.compiling.remove(name);
                // A killed compile is tried again later, backing off while
                // it keeps being killed; any other failure waits for
                // another file.
                let retry = transient.then(|| {
                    let tries = st
                        .errors
                        .get(name)
                        .filter(|f| f.hash == hash)
                        .and_then(|f| f.retry)
                        .map_or(1, |(_, tries)| tries + 1);
                    (Instant::now() + retry_delay(tries), tries)
                });
                let error = match retry {
                    Some((_, tries)) => format!(
                        "{e} (tried {tries} time{}; trying again in {} s)",
                        if tries == 1 { "" } else { "s" },
                        retry_delay(tries).as_secs()
                    ),
                    None => e,
                };
                tracing::error!(plugin = name, error = %error, kept_version = ?kept, "plugin failed to load");
                if st.stamps.contains_key(name) {
                    st.stamps.insert(name.to_string(), stamp);
                    st.errors.insert(
                        name.to_string(),
                        Failed {
                            error,
                            hash,
                            size: bytes.len() as u64,
                            retry,
                            unreadable: false,
                        },
                    );
                }
            }
        }
    }

    /// A plugin file that cannot be read (its permissions, an I/O error) is
    /// a failed load the status listing shows; it is said once (again if
    /// the reason changes) and read again at every scan, since a permission
    /// put right changes neither its size nor its mtime. A version loaded
    /// before stays loaded.
    fn note_unreadable(&self, name: &str, stamp: Stamp, e: &std::io::Error) {
        let error = format!("cannot read the file: {e}");
        let mut st = self.state.write().unwrap();
        let said = st
            .errors
            .get(name)
            .is_some_and(|f| f.unreadable && f.error == error);
        if !said {
            tracing::warn!(
                plugin = name,
                error = %e,
                "cannot read plugin file; reading it again at every scan"
            );
        }
        if st.stamps.contains_key(name) {
            st.errors.insert(
                name.to_string(),
                Failed {
                    error,
                    hash: String::new(),
                    size: stamp.0,
                    retry: None,
                    unreadable: true,
                },
            );
        }
    }

    /// Compiles (until `cancel` is set), links and asks for subscriptions.
    fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        cancel: &AtomicBool,
    ) -> Result<LoadedPlugin, (String, bool)> {
        let mut p = plugin::load_cancellable(&self.runtime, &self.cache, name, bytes, cancel)
            .map_err(|e| (e.to_string(), e.transient()))?;
        let defaults = self.live.get().limits;
        let policy = Policy {
            grants: BTreeSet::new(),
            limits: defaults,
            settings: Arc::new(serde_json::json!({})),
        };
        let caps = self.capabilities("-", name, -1, &policy);
        p.subscriptions = sandbox::subscriptions(&p, caps, &defaults)
            .map_err(|e| (format!("subscriptions() failed: {e}"), false))?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_killed_compile_is_tried_again_backing_off_to_ten_minutes() {
        let secs: Vec<u64> = [1, 2, 3, 7, 8, 9, 100]
            .iter()
            .map(|t| super::retry_delay(*t).as_secs())
            .collect();
        assert_eq!(secs, [5, 10, 20, 320, 600, 600, 600]);
    }
}
