//! hookhost: a webhook receiver for WhatsApp gateway events whose business
//! logic runs in sandboxed WebAssembly component plugins.
//!
//! The pipeline reads in module order: [`http`] (size limit, tenant),
//! [`signature`], [`event`] (typed parse, idempotency key), [`store`] (durable
//! inbox, committed before the 200), [`dispatch`] (delivery ledger) and
//! [`runtime`] (sandboxed plugin instances) with [`capabilities`].

pub mod bindings;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod event;
pub mod http;
mod json_strict;
pub mod live;
pub mod metrics;
mod pinning;
mod priority;
pub mod repeated;
mod request_threads;
pub mod runtime;
pub mod samples;
pub mod server;
pub mod signature;
pub mod store;
pub mod wake;
mod watchdog;
