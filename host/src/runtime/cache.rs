//! On-disk cache of compiled components, keyed by the component's SHA-256
//! and the engine's settings, so a restart never recompiles.

use super::engine::Runtime;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use wasmtime::component::Component;

/// How often a compiling child is checked on (ended? cancelled?).
const CHILD_POLL: Duration = Duration::from_millis(10);

pub struct CompileCache {
    dir: PathBuf,
    compiler: Option<ChildCompiler>,
}

/// Compiles large components in a child process (`hookhost
/// compile-worker`) that writes the cache entry and exits.
#[derive(Debug, Clone)]
pub struct ChildCompiler {
    pub exe: PathBuf,
    pub min_bytes: usize,
}

pub enum Source {
    /// Read from an entry an earlier compile left.
    Cache,
    /// Compiled by this call, in process or by a child compiler.
    Compiled,
}

impl CompileCache {
    pub fn new(dir: PathBuf) -> CompileCache {
        CompileCache {
            dir,
            compiler: None,
        }
    }

    pub fn with_child_compiler(dir: PathBuf, compiler: ChildCompiler) -> CompileCache {
        CompileCache {
            dir,
            compiler: Some(compiler),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
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
        self.load_cancellable(rt, hash, bytes, &AtomicBool::new(false))
    }

    /// [`CompileCache::load`] that gives up when `cancel` is set: a compile
    /// in a child process is killed, an in-process one is not started.
    pub fn load_cancellable(
        &self,
        rt: &Runtime,
        hash: &str,
        bytes: &[u8],
        cancel: &AtomicBool,
    ) -> anyhow::Result<(Component, Source)> {
        let path = self.path(rt, hash);
        // The entry a child compiler writes is this call's compile, not a
        // cached one.
        let mut compiled_by_child = false;
        if !path.exists() {
            if let Some(c) = self
                .compiler
                .as_ref()
                .filter(|c| bytes.len() >= c.min_bytes)
            {
                match compile_in_child(c, rt, &self.dir, bytes, cancel) {
                    Ok(()) if path.exists() => compiled_by_child = true,
                    Ok(()) => tracing::warn!(
                        path = %path.display(),
                        "the child compiler wrote no entry for this engine; compiling in process"
                    ),
                    Err(ChildError::Refused(msg)) => anyhow::bail!("{msg}"),
                    Err(ChildError::Cancelled) => anyhow::bail!("compile cancelled"),
                    // Killed (out of memory, say): compiling in the server
                    // would only move the problem here. The caller may try
                    // again later.
                    Err(ChildError::Died(msg)) => return Err(CompilerDied(msg).into()),
                    Err(ChildError::NotStarted(msg)) => {
                        tracing::warn!(error = %msg, "child compiler did not start; compiling in process")
                    }
                    // The cache is what the child is for: without it the
                    // plugin is compiled here rather than not loaded.
                    Err(ChildError::NotCached(msg)) => {
                        tracing::warn!(error = %msg, "the child compiler could not write the compile cache; compiling in process")
                    }
                }
            }
        }
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of this
            // engine configuration (the name carries its fingerprint) into a
            // directory only the host writes.
            match unsafe { Component::deserialize_file(&rt.engine, &path) } {
                Ok(c) => {
                    touch(&path);
                    let source = if compiled_by_child {
                        Source::Compiled
                    } else {
                        Source::Cache
                    };
                    return Ok((c, source));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable cache entry")
                }
            }
        }
        if cancel.load(Ordering::Relaxed) {
            anyhow::bail!("compile cancelled");
        }
        let component = Component::new(&rt.engine, bytes).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write compile cache");
        }
        Ok((component, Source::Compiled))
    }

    /// The entry `hash` has (or would have) with this engine.
    pub fn entry(&self, rt: &Runtime, hash: &str) -> PathBuf {
        self.path(rt, hash)
    }

    /// Keeps the cache under `max_bytes`: removes the least recently used
    /// entries (by modification time, which a load refreshes) other than
    /// those in `keep`, and temporary files a compile left more than an hour
    /// ago. Returns how many files went and the bytes freed.
    pub fn evict(&self, keep: &[PathBuf], max_bytes: u64) -> (usize, u64) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return (0, 0);
        };
        let now = SystemTime::now();
        let age = |m: &std::fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default()
        };
        let (mut removed, mut freed) = (0, 0);
        let mut entries = Vec::new();
        for e in dir.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".cwasm") {
                entries.push((age(&meta), meta.len(), path));
            } else if name.contains(".tmp")
                && age(&meta) > Duration::from_secs(3600)
                && std::fs::remove_file(&path).is_ok()
            {
                removed += 1;
                freed += meta.len();
            }
        }
        // Newest first: what is kept counts first, then the most recently
        // used, until the budget is spent.
        entries.sort_by_key(|(age, _, _)| *age);
        let mut used: u64 = entries
            .iter()
            .filter(|(_, _, p)| keep.contains(p))
            .map(|(_, len, _)| len)
            .sum();
        for (_, len, path) in entries {
            if keep.contains(&path) {
                continue;
            }
            if used + len <= max_bytes {
                used += len;
            } else if std::fs::remove_file(&path).is_ok() {
                removed += 1;
                freed += len;
            }
        }
        (removed, freed)
    }

    fn store(&self, path: &Path, c: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = c.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            // Half an entry on a full disk holds the space it needs back.
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(written?)
    }
}

/// Marks an entry as just used (its modification time) for [`CompileCache::evict`].
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// The child compiler ended without an answer (killed, out of memory):
/// nothing is known about the component, so its compile may be tried again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CompilerDied(pub String);

enum ChildError {
    /// The component does not compile: the child said why.
    Refused(String),
    /// The child started but did not finish its work.
    Died(String),
    /// The child could not be started.
    NotStarted(String),
    /// The child compiled the component but could not write the cache
    /// entry (its disk full, say).
    NotCached(String),
    /// Killed on request: the file it compiled was replaced or removed.
    Cancelled,
}

/// The child compiler's exit code when it compiled the component but could
/// not write the cache entry.
const NOT_CACHED: i32 = 3;

fn compile_in_child(
    c: &ChildCompiler,
    rt: &Runtime,
    dir: &Path,
    bytes: &[u8],
    cancel: &AtomicBool,
) -> Result<(), ChildError> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let s = rt.settings;
    let mut command = Command::new(&c.exe);
    command
        .arg("compile-worker")
        .arg("--cache-dir")
        .arg(dir)
        .arg(format!("--pooling={}", s.pooling))
        .arg(format!("--max-memory-mb={}", s.max_memory_mb))
        .arg(format!("--parallel={}", s.parallel))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: runs in the child between fork and exec, and makes only
        // two system calls (async-signal-safe). The parent-death signal is
        // set before the child runs a line of its own: a server killed at
        // any moment takes its compile with it (the child sets it again
        // itself, for when it is started otherwise).
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() as u32 != parent {
                    return Err(std::io::ErrorKind::Other.into());
                }
                Ok(())
            });
        }
    }
    let mut child = command
        .spawn()
        .map_err(|e| ChildError::NotStarted(format!("cannot start {}: {e}", c.exe.display())))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    // The component goes in and the messages come out on threads of their
    // own, so that this one can watch for a cancel (and kill the child)
    // whatever the child is doing.
    let (written, stderr, status) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || stdin.write_all(bytes));
        let reader = scope.spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if cancel.load(Ordering::Relaxed) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(ChildError::Cancelled);
                }
                Ok(None) => std::thread::sleep(CHILD_POLL),
                Err(e) => {
                    // Not left running: the reader waits for its end.
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(ChildError::Died(e.to_string()));
                }
            }
        };
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::ErrorKind::Other.into()));
        (written, reader.join().unwrap_or_default(), status)
    });
    let status = status?;
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    match status.code() {
        Some(0) if written.is_ok() => Ok(()),
        // Exit code 1: the compiler ran and refused the component.
        Some(1) => Err(ChildError::Refused(
            last.trim_start_matches("error: ").to_string(),
        )),
        Some(NOT_CACHED) => Err(ChildError::NotCached(
            last.trim_start_matches("error: ").to_string(),
        )),
        _ => Err(ChildError::Died(format!(
            "child compiler ended with {status}: {last}"
        ))),
    }
}

/// `hookhost compile-worker`: compile the component on standard input into
/// the cache with the given engine settings. Exit 1 when it does not
/// compile (the message on standard error), 2 on any other failure.
pub fn compile_worker(dir: PathBuf, settings: super::engine::EngineSettings) -> i32 {
    use std::io::Read;
    // The compile is only worth finishing for the server that asked: when
    // it dies (killed, say), so does this child, instead of compiling on
    // for half a minute.
    #[cfg(target_os = "linux")]
    {
        let parent = std::os::unix::process::parent_id();
        // SAFETY: PR_SET_PDEATHSIG only sets this process's parent-death signal.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        if std::os::unix::process::parent_id() != parent {
            eprintln!("error: the server that started this compile is gone");
            return 2;
        }
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("error: cannot read the component: {e}");
        return 2;
    }
    let rt = match Runtime::new(settings.pooling, settings.max_memory_mb, settings.parallel) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot create the engine: {e}");
            return 2;
        }
    };
    let cache = CompileCache::new(dir);
    let hash = super::plugin::hash(&bytes);
    let code = match cache.load(&rt, &hash, &bytes) {
        Ok(_) if cache.path(&rt, &hash).exists() => 0,
        Ok(_) => {
            eprintln!("error: compiled, but the cache entry could not be written");
            NOT_CACHED
        }
        Err(e) => {
            // The whole chain: "failed to parse WebAssembly module" says
            // less than what follows it ("unexpected end-of-file").
            eprintln!("error: {}", format!("{e:#}").lines().next().unwrap_or(""));
            1
        }
    };
    rt.stop();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, bytes: usize, age_s: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        let f = std::fs::File::options().append(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
        path
    }

    #[test]
    fn eviction_keeps_the_loaded_and_the_recently_used_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let kept = file(d, "k-e.cwasm", 100, 9000);
        file(d, "a-e.cwasm", 100, 300);
        file(d, "b-e.cwasm", 100, 200);
        let newest = file(d, "c-e.cwasm", 100, 100);
        file(d, "x-e.tmp123", 40, 7200);
        let fresh_tmp = file(d, "y-e.tmp456", 40, 10);
        let cache = CompileCache::new(d.to_path_buf());
        // 250 bytes: the loaded entry (100) and the newest (100) fit.
        assert_eq!(cache.evict(std::slice::from_ref(&kept), 250), (3, 240));
        let mut left: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.sort();
        assert_eq!(left, vec![newest.clone(), kept.clone(), fresh_tmp]);
        // A load makes an entry the most recent.
        let older = file(d, "d-e.cwasm", 100, 50);
        touch(&newest);
        assert_eq!(cache.evict(std::slice::from_ref(&kept), 250), (1, 100));
        assert!(newest.exists() && !older.exists());
        // The loaded entries stay even past the limit.
        assert_eq!(cache.evict(std::slice::from_ref(&kept), 10), (1, 100));
        assert!(kept.exists() && !newest.exists());
    }

    #[test]
    fn an_entry_that_cannot_be_written_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(false, 16, false).unwrap();
        let component = Component::new(&rt.engine, wat::parse_str("(component)").unwrap()).unwrap();
        let cache = CompileCache::new(dir.path().to_path_buf());
        // A directory where the entry goes: the rename over it fails, as a
        // write fails on a full disk, after the temporary file was made.
        let path = dir.path().join("e.cwasm");
        std::fs::create_dir(&path).unwrap();
        assert!(cache.store(&path, &component).is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec!["e.cwasm"]);
        rt.stop();
    }
}
