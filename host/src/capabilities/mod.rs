//! Host capabilities offered to plugins. Each file links one WIT interface
//! and checks the grant; a capability the operator did not grant answers
//! `access-denied`. Scope (tenant, plugin) always comes from the host, so a
//! plugin can never name another tenant's or plugin's data.

mod config;
mod kv;
mod log;
mod messaging;
mod sql;

pub(crate) use log::truncate;
pub use messaging::{Messenger, SentMessage};
pub use sql::{SqlDb, SqlPool};

use crate::bindings::types::{self, HostError};
use crate::config::{Grant, Limits};
use crate::store::Store;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

/// What one delivery's plugin instance may do, and what it did.
pub struct Capabilities {
    pub tenant: Arc<str>,
    pub plugin: Arc<str>,
    pub event_seq: i64,
    pub grants: BTreeSet<Grant>,
    pub limits: Limits,
    pub store: Store,
    pub settings: Arc<serde_json::Value>,
    /// The plugin's private SQL database, opened on first use.
    pub sql: SqlDb,
    pub messenger: Option<Arc<Messenger>>,
    /// Ask the messaging capability to send again what a previous delivery
    /// already sent (operator's explicit replay).
    pub resend: bool,
    /// No retry follows this delivery: an unconfirmed send is made again
    /// now rather than waiting longer for its echo.
    pub last_attempt: bool,
    /// Report sends instead of making them (`plugin test`).
    pub dry_run: bool,
    pub deadline: Instant,
    pub sends: u32,
    pub log_lines: u32,
    pub log_dropped: u32,
    /// The first capability refused for want of a grant (`log` and
    /// `config` aside, which quietly do nothing); logged, and named in the
    /// delivery's error if it fails.
    pub denied: Option<Grant>,
    /// What the plugin did, when the caller wants a report (`plugin test`).
    pub journal: Option<Vec<Action>>,
}

/// One side effect, as reported by `hookhost plugin test`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Log {
        level: String,
        message: String,
        fields: Vec<(String, String)>,
    },
    KvSet {
        key: String,
        bytes: usize,
    },
    KvDelete {
        key: String,
    },
    Sql {
        statement: String,
    },
    Send {
        to: String,
        text: String,
        quoted_message_id: Option<String>,
    },
    /// A read of the plugin's settings: one key, or all of them (`None`).
    Config {
        key: Option<String>,
    },
    /// A call refused because the capability is not granted.
    Denied {
        capability: Grant,
    },
}

impl Capabilities {
    /// Capabilities outside a server (plugin test runner, benchmarks):
    /// real storage in the given store and SQL file, sends reported only.
    pub fn offline(
        store: Store,
        sql_file: std::path::PathBuf,
        plugin: &str,
        grants: &[Grant],
        limits: Limits,
        settings: serde_json::Value,
    ) -> Capabilities {
        Capabilities {
            tenant: "test".into(),
            plugin: plugin.into(),
            event_seq: 0,
            grants: grants.iter().copied().collect(),
            limits,
            store,
            settings: Arc::new(settings),
            sql: SqlDb::new(sql_file),
            messenger: None,
            resend: false,
            last_attempt: false,
            dry_run: true,
            deadline: Instant::now() + std::time::Duration::from_millis(limits.timeout_ms),
            sends: 0,
            log_lines: 0,
            log_dropped: 0,
            denied: None,
            journal: None,
        }
    }

    fn check(&mut self, g: Grant) -> Result<(), HostError> {
        if self.grants.contains(&g) {
            return Ok(());
        }
        // Without `log` or `config` those calls quietly do nothing; the
        // others fail, so the first of them is worth a line.
        if self.denied.is_none() && !matches!(g, Grant::Log | Grant::Config) {
            self.denied = Some(g);
            tracing::warn!(
                tenant = %self.tenant,
                plugin = %self.plugin,
                event_seq = self.event_seq,
                capability = g.as_str(),
                "plugin used a capability it is not granted (see `grants`)"
            );
        }
        self.note(|| Action::Denied { capability: g });
        Err(HostError::AccessDenied)
    }

    fn note(&mut self, a: impl FnOnce() -> Action) {
        if let Some(j) = self.journal.as_mut() {
            if j.len() < 10_000 {
                j.push(a());
            }
        }
    }

    fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

impl types::Host for Capabilities {}

/// Store errors reach the guest without internals.
fn store_err(e: crate::store::StoreError) -> HostError {
    match e {
        crate::store::StoreError::Invalid(m) if m == crate::store::KvError::Quota.to_string() => {
            HostError::QuotaExceeded
        }
        crate::store::StoreError::Invalid(m) => HostError::Invalid(m),
        e => {
            // The store's writer logs a failure once when it starts (a full
            // disk): not again for each delivery that meets it.
            tracing::debug!(error = %e, "capability store error");
            HostError::Unavailable("storage unavailable".into())
        }
    }
}
