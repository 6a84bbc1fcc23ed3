//! A loaded plugin: its compiled component, its `InstancePre` (made once,
//! instantiated per delivery), its content hash and its subscriptions.

use super::cache::{CompileCache, Source};
use super::engine::Runtime;
use super::sandbox::HostState;
use crate::bindings::types::EventKind;
use crate::bindings::PluginPre;
use sha2::{Digest, Sha256};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::Component;

pub struct LoadedPlugin {
    pub name: String,
    /// SHA-256 of the `.wasm` file, hex.
    pub hash: String,
    pub size: u64,
    pub pre: PluginPre<HostState>,
    pub component: Component,
    /// `None`: every event kind.
    pub subscriptions: Option<Vec<EventKind>>,
    pub compile_time: Duration,
    pub from_cache: bool,
    pub loaded_at: std::time::SystemTime,
    runtime: Arc<Runtime>,
}

impl LoadedPlugin {
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.runtime.engine
    }

    pub fn short_hash(&self) -> &str {
        &self.hash[..12]
    }

    pub fn wants(&self, kind: EventKind) -> bool {
        match &self.subscriptions {
            None => true,
            Some(k) => k.contains(&kind),
        }
    }
}

pub fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A component's top-level import and export names, read without
/// compiling or validating it; `None` when the binary does not parse to its
/// end (not WebAssembly, or cut short: every section, nested module and
/// component must end where its size says).
pub fn top_level_names(bytes: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    use wasmparser::{Parser, Payload};
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(offset) if depth == 0 => {
                return (offset == bytes.len()).then_some((imports, exports))
            }
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
    None
}

/// Whether `bytes` look like a whole plugin file: it parses to its end
/// and exports the handler (which the toolchains write last); a few
/// milliseconds for an 18 MB component. A file still being written (`cp`
/// over a plugin) is cut short and fails this.
pub fn looks_complete(bytes: &[u8]) -> bool {
    top_level_names(bytes).is_some_and(|(_, exports)| {
        exports
            .iter()
            .any(|e| e.starts_with("hookhost:plugin/handler@"))
    })
}

/// Why `bytes` cannot be a component, told from how the file starts: it
/// is empty, a core module, or neither WebAssembly's binary format nor its
/// text format (which the engine also reads). `None` for a component's
/// header or text, which the compiler then judges.
pub fn format_problem(bytes: &[u8]) -> Option<String> {
    use wasmparser::Parser;
    if bytes.is_empty() {
        return Some("an empty file".into());
    }
    if bytes.starts_with(b"\0asm") {
        return Parser::is_core_wasm(bytes).then(|| {
            "a core WebAssembly module, not a component: build it for wasm32-wasip2, \
             or wrap it with `wasm-tools component new`"
                .into()
        });
    }
    let text = std::str::from_utf8(bytes).map(str::trim_start);
    if text.is_ok_and(|t| t.starts_with('(') || t.starts_with(";;")) {
        return None;
    }
    Some(
        "not a WebAssembly file: neither the binary format (which starts with `\\0asm`) \
         nor the text format"
            .into(),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Format(String),
    #[error("not a valid component: {0}")]
    Compile(String),
    #[error("does not match the hookhost:plugin world: {0}")]
    World(String),
    /// The child compiler stopped without an answer: worth trying again.
    #[error("the compiler stopped before it finished: {0}")]
    CompilerDied(String),
}

impl LoadError {
    /// Whether the same file may load at another try.
    pub fn transient(&self) -> bool {
        matches!(self, LoadError::CompilerDied(_))
    }
}

/// Compiles (or loads from cache) and links a component. Subscriptions are
/// filled in by the caller, which knows the plugin's limits.
pub fn load(
    rt: &Arc<Runtime>,
    cache: &CompileCache,
    name: &str,
    bytes: &[u8],
) -> Result<LoadedPlugin, LoadError> {
    load_cancellable(rt, cache, name, bytes, &AtomicBool::new(false))
}

/// [`load`] that gives up compiling when `cancel` is set.
pub fn load_cancellable(
    rt: &Arc<Runtime>,
    cache: &CompileCache,
    name: &str,
    bytes: &[u8],
    cancel: &AtomicBool,
) -> Result<LoadedPlugin, LoadError> {
    if let Some(problem) = format_problem(bytes) {
        return Err(LoadError::Format(problem));
    }
    let hash = hash(bytes);
    let start = Instant::now();
    let (component, source) = cache
        .load_cancellable(rt, &hash, bytes, cancel)
        .map_err(|e| match e.downcast::<super::cache::CompilerDied>() {
            Ok(died) => LoadError::CompilerDied(died.0),
            Err(e) => LoadError::Compile(first_line(&format!("{e:#}"))),
        })?;
    let compile_time = start.elapsed();
    let pre = rt
        .linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::World(format!("{e:#}")))?;
    let pre = PluginPre::new(pre).map_err(|e| LoadError::World(format!("{e:#}")))?;
    Ok(LoadedPlugin {
        name: name.to_string(),
        hash,
        size: bytes.len() as u64,
        pre,
        component,
        subscriptions: None,
        compile_time,
        from_cache: matches!(source, Source::Cache),
        loaded_at: std::time::SystemTime::now(),
        runtime: rt.clone(),
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(500).collect()
}

/// Import and export names of a component, for `plugin check`.
pub fn interface_names(engine: &wasmtime::Engine, c: &Component) -> (Vec<String>, Vec<String>) {
    let ty = c.component_type();
    let imports = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    (imports, exports)
}

#[cfg(test)]
mod tests {
    use super::looks_complete;

    #[test]
    fn a_cut_short_component_does_not_look_complete() {
        // A component holding a core module and exporting the handler last,
        // as the toolchains write them.
        let whole = wat::parse_str(
            r#"(component
                (core module $m (func (export "f") (result i32) i32.const 7))
                (core instance (instantiate $m))
                (instance $h)
                (export "hookhost:plugin/handler@0.1.0" (instance $h)))"#,
        )
        .unwrap();
        assert!(looks_complete(&whole));
        for cut in [0, 8, whole.len() / 2, whole.len() - 1] {
            assert!(!looks_complete(&whole[..cut]), "cut at {cut}");
        }
        let mut longer = whole.clone();
        longer.push(0);
        assert!(!looks_complete(&longer));
        assert!(!looks_complete(b"not wasm at all"));
    }

    #[test]
    fn files_that_are_not_components_are_told_apart_by_their_start() {
        use super::format_problem;
        let component = wat::parse_str("(component)").unwrap();
        assert_eq!(format_problem(&component), None);
        assert_eq!(format_problem(b"  ;; a plugin\n(component)"), None);
        assert_eq!(format_problem(b"(component)"), None);
        assert_eq!(format_problem(b"").unwrap(), "an empty file");
        let core = wat::parse_str("(module)").unwrap();
        assert!(format_problem(&core)
            .unwrap()
            .starts_with("a core WebAssembly module, not a component"));
        for other in [&b"hello"[..], &[0xff, 0x00, 0x61], b"PK\x03\x04zip"] {
            assert!(
                format_problem(other)
                    .unwrap()
                    .starts_with("not a WebAssembly file"),
                "{other:?}"
            );
        }
    }
}
