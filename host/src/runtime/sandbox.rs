//! One delivery in a fresh sandbox: a new store with fuel, a memory and
//! table limiter and an epoch deadline, a new instance from the plugin's
//! `InstancePre`, one call to `handle`. Whatever the guest does, the result
//! is a typed outcome; the host never panics on guest behaviour.

use super::capture::Capture;
use super::engine::TICK;
use super::plugin::LoadedPlugin;
use crate::bindings::types as wit;
use crate::capabilities::{Action, Capabilities};
use crate::config::Limits;
use std::time::{Duration, Instant};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    pub caps: Capabilities,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Memory and table caps; remembers which one refused a growth so the
/// failure can be named.
struct Limiter {
    max_memory: usize,
    max_table_elements: usize,
    hit: Option<Failure>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = Some(Failure::MemoryLimit);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            self.hit = Some(Failure::TableLimit);
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        100
    }
    fn memories(&self) -> usize {
        20
    }
    fn tables(&self) -> usize {
        100
    }
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    OutOfFuel,
    MemoryLimit,
    TableLimit,
    Deadline,
    /// The guest trapped (panic, unreachable, stack overflow...).
    Trap(String),
    /// The component could not be instantiated.
    Instantiate(String),
    /// The plugin asked for a retry.
    Retry(String),
    /// The plugin rejected the event for good.
    Reject(String),
}

impl Failure {
    /// Whether trying again may help. Guest faults are retried too (they may
    /// depend on the event's timing); rejects never are.
    pub fn retryable(&self) -> bool {
        !matches!(self, Failure::Reject(_))
    }

    /// The same failure with `note` added to its message (limits have none).
    pub fn with_note(self, note: &str) -> Failure {
        let add = |m: String| format!("{m} ({note})");
        match self {
            Failure::Trap(m) => Failure::Trap(add(m)),
            Failure::Instantiate(m) => Failure::Instantiate(add(m)),
            Failure::Retry(m) => Failure::Retry(add(m)),
            Failure::Reject(m) => Failure::Reject(add(m)),
            other => other,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Failure::OutOfFuel => "out-of-fuel",
            Failure::MemoryLimit => "memory-limit",
            Failure::TableLimit => "table-limit",
            Failure::Deadline => "deadline",
            Failure::Trap(_) => "trap",
            Failure::Instantiate(_) => "instantiate",
            Failure::Retry(_) => "retry",
            Failure::Reject(_) => "reject",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap(m) | Failure::Instantiate(m) | Failure::Retry(m) | Failure::Reject(m) => {
                write!(
                    f,
                    "{}: {}",
                    self.label(),
                    crate::capabilities::truncate(m, 1000)
                )
            }
            _ => f.write_str(self.label()),
        }
    }
}

/// What a delivery did.
pub struct Report {
    pub result: Result<(), Failure>,
    pub fuel_used: u64,
    pub instantiate: Duration,
    pub total: Duration,
    pub output: String,
    pub journal: Option<Vec<Action>>,
    pub log_dropped: u32,
    /// The first capability refused for want of a grant (`log` and
    /// `config` aside).
    pub denied: Option<crate::config::Grant>,
}

fn store_for(
    plugin: &LoadedPlugin,
    caps: Capabilities,
    limits: &Limits,
) -> (Store<HostState>, Capture) {
    let out = Capture::new();
    // Nothing is granted: no preopens, no environment, no arguments, no
    // network. Clocks and random are available.
    let wasi = WasiCtxBuilder::new()
        .stdout(out.clone())
        .stderr(out.clone())
        .build();
    let state = HostState {
        wasi,
        table: ResourceTable::new(),
        limiter: Limiter {
            max_memory: (limits.memory_mb as usize) << 20,
            max_table_elements: 100_000,
            hit: None,
        },
        caps,
    };
    let mut store = Store::new(plugin.engine(), state);
    store.limiter(|s| &mut s.limiter);
    let _ = store.set_fuel(limits.fuel);
    let ticks = (limits.timeout_ms.max(1) as u128).div_ceil(TICK.as_millis()) as u64;
    store.set_epoch_deadline(ticks.max(1));
    store.epoch_deadline_trap();
    (store, out)
}

fn classify(e: &wasmtime::Error, hit: Option<Failure>) -> Failure {
    if let Some(t) = e.downcast_ref::<Trap>() {
        match t {
            Trap::OutOfFuel => return Failure::OutOfFuel,
            Trap::Interrupt => return Failure::Deadline,
            _ => {}
        }
        if let Some(h) = hit {
            return h;
        }
        return Failure::Trap(t.to_string());
    }
    if let Some(h) = hit {
        return h;
    }
    Failure::Trap(format!("{e}"))
}

/// Runs `handle(event, ctx)` in a fresh instance.
pub fn deliver(
    plugin: &LoadedPlugin,
    caps: Capabilities,
    limits: &Limits,
    event: &wit::Event,
    ctx: &wit::DeliveryContext,
) -> Report {
    let start = Instant::now();
    let (mut store, out) = store_for(plugin, caps, limits);
    let instance = plugin.pre.instantiate(&mut store);
    let instantiate = start.elapsed();
    let result = match instance {
        Err(e) => Err(match classify(&e, store.data_mut().limiter.hit.take()) {
            Failure::Trap(m) => Failure::Instantiate(m),
            other => other,
        }),
        Ok(p) => match p
            .hookhost_plugin_handler()
            .call_handle(&mut store, event, ctx)
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(wit::HandlerError::Retry(m))) => Err(Failure::Retry(m)),
            Ok(Err(wit::HandlerError::Reject(m))) => Err(Failure::Reject(m)),
            Err(e) => Err(classify(&e, store.data_mut().limiter.hit.take())),
        },
    };
    let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let data = store.into_data();
    let output = out.contents();
    // A trap says only `unreachable`: a panic's message is in the output.
    let result = match result {
        Err(f @ (Failure::Trap(_) | Failure::Instantiate(_))) => {
            Err(match super::last_words::last_words(&output) {
                Some(words) => f.with_note(&format!("it printed: {words}")),
                None => f,
            })
        }
        r => r,
    };
    let result = match (result, data.caps.denied) {
        (Err(f), Some(g)) => Err(f.with_note(&format!("`{}` is not granted", g.as_str()))),
        (r, _) => r,
    };
    Report {
        result,
        fuel_used,
        instantiate,
        total: start.elapsed(),
        output,
        journal: data.caps.journal,
        log_dropped: data.caps.log_dropped,
        denied: data.caps.denied,
    }
}

/// Asks a plugin which event kinds it wants (`None`: all of them).
pub fn subscriptions(
    plugin: &LoadedPlugin,
    caps: Capabilities,
    limits: &Limits,
) -> Result<Option<Vec<wit::EventKind>>, Failure> {
    let (mut store, _out) = store_for(plugin, caps, limits);
    let p = plugin
        .pre
        .instantiate(&mut store)
        .map_err(|e| classify(&e, store.data_mut().limiter.hit.take()))?;
    let kinds = p
        .hookhost_plugin_handler()
        .call_subscriptions(&mut store)
        .map_err(|e| classify(&e, store.data_mut().limiter.hit.take()))?;
    Ok(if kinds.is_empty() { None } else { Some(kinds) })
}
