//! The wasmtime engine shared by every plugin: component model, fuel, epoch
//! interruption, and the linker with WASI (nothing granted) and our
//! capabilities. An epoch ticker thread gives wall-clock deadlines.

use super::sandbox::HostState;
use crate::bindings::Plugin;
use crate::capabilities::Capabilities;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};

/// One epoch tick; deadlines are rounded up to it.
pub const TICK: Duration = Duration::from_millis(5);

pub struct Runtime {
    pub engine: wasmtime::Engine,
    pub linker: Linker<HostState>,
    /// The settings it was made with, for a child compiler to match.
    pub settings: EngineSettings,
    stop: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    pub pooling: bool,
    pub max_memory_mb: u64,
    pub parallel: bool,
}

impl Runtime {
    /// `parallel`: compile with every core (fast, but competes with requests).
    pub fn new(pooling: bool, max_memory_mb: u64, parallel: bool) -> anyhow::Result<Arc<Runtime>> {
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true);
        cfg.consume_fuel(true);
        cfg.epoch_interruption(true);
        cfg.parallel_compilation(parallel);
        if pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            pool.total_component_instances(1000)
                .total_core_instances(2000)
                .total_memories(1000)
                .total_tables(2000)
                .max_memory_size((max_memory_mb as usize) << 20)
                .max_core_instances_per_component(50)
                .max_memories_per_component(10)
                .max_tables_per_component(50)
                .table_elements(200_000)
                .max_component_instance_size(1 << 20)
                .max_core_instance_size(8 << 20)
                // Reset a freed slot's dirty pages with memset (found with
                // the PAGEMAP_SCAN ioctl on Linux 6.7+) instead of madvise:
                // the next instance of the plugin takes no page faults and
                // the process no TLB-shootdown interrupts.
                .pagemap_scan(wasmtime::Enabled::Auto)
                .linear_memory_keep_resident(4 << 20)
                .table_keep_resident(1 << 20)
                .max_unused_warm_slots(16);
            cfg.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = wasmtime::Engine::new(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        Plugin::add_to_linker::<HostState, HasSelf<Capabilities>>(&mut linker, |s| &mut s.caps)
            .map_err(|e| anyhow::anyhow!("{e}"))?;

        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    e.increment_epoch();
                }
            })?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            settings: EngineSettings {
                pooling,
                max_memory_mb,
                parallel,
            },
            stop,
        }))
    }

    /// A hex string that changes whenever compiled code would not load.
    pub fn engine_fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}
