//! `log`: structured lines into the host log, tagged with tenant and plugin.
//! Lines per delivery are capped; long messages are truncated.

use super::{Action, Capabilities};
use crate::bindings::log::{Host, Level};
use crate::config::Grant;

const MAX_MESSAGE: usize = 4096;
const MAX_FIELDS: usize = 32;

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Host for Capabilities {
    fn log(
        &mut self,
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        if self.check(Grant::Log).is_err() {
            return Ok(());
        }
        if self.log_lines >= self.limits.log_lines {
            self.log_dropped += 1;
            return Ok(());
        }
        self.log_lines += 1;
        let message = truncate(&message, MAX_MESSAGE);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| (truncate(&k, 64).to_string(), truncate(&v, 512).to_string()))
            .collect();
        let rendered = fields
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        let level_name = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        if self.journal.is_some() {
            // `plugin test` reports the line itself.
            let message = message.to_string();
            self.note(|| Action::Log {
                level: level_name.into(),
                message,
                fields,
            });
            return Ok(());
        }
        let (tenant, plugin) = (&*self.tenant, &*self.plugin);
        match level {
            Level::Trace => {
                tracing::trace!(target: "plugin", tenant, plugin, fields = %rendered, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "plugin", tenant, plugin, fields = %rendered, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "plugin", tenant, plugin, fields = %rendered, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "plugin", tenant, plugin, fields = %rendered, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "plugin", tenant, plugin, fields = %rendered, "{message}")
            }
        }
        let level = format!("{level:?}").to_lowercase();
        let message = message.to_string();
        self.note(|| Action::Log {
            level,
            message,
            fields,
        });
        Ok(())
    }
}
