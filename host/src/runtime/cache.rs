//! On-disk cache of compiled components, keyed by the component's SHA-256
//! and the engine's settings, so a restart never recompiles.

use super::engine::Runtime;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

pub struct CompileCache {
    dir: PathBuf,
}

pub enum Source {
    Cache,
    Compiled,
}

impl CompileCache {
    pub fn new(dir: PathBuf) -> CompileCache {
        CompileCache { dir }
    }

    fn path(&self, rt: &Runtime, hash: &str) -> PathBuf {
        self.dir
            .join(format!("{hash}-{}.cwasm", rt.engine_fingerprint()))
    }

    /// Loads `bytes` (whose SHA-256 is `hash`) from the cache or compiles it.
    pub fn load(
        &self,
        rt: &Runtime,
        hash: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, Source)> {
        let path = self.path(rt, hash);
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of this
            // engine configuration (the name carries its fingerprint) into a
            // directory only the host writes.
            match unsafe { Component::deserialize_file(&rt.engine, &path) } {
                Ok(c) => return Ok((c, Source::Cache)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable cache entry")
                }
            }
        }
        let component = Component::new(&rt.engine, bytes).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write compile cache");
        }
        Ok((component, Source::Compiled))
    }

    fn store(&self, path: &Path, c: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = c.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
