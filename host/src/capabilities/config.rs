//! `config`: the plugin's settings from the operator's configuration.

use super::{Action, Capabilities};
use crate::bindings::config::Host;
use crate::config::Grant;

impl Host for Capabilities {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.note(|| Action::Config {
            key: Some(key.clone()),
        });
        if self.check(Grant::Config).is_err() {
            return Ok(None);
        }
        Ok(self.settings.get(&key).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }))
    }

    fn get_json(&mut self) -> wasmtime::Result<String> {
        self.note(|| Action::Config { key: None });
        if self.check(Grant::Config).is_err() {
            return Ok("{}".into());
        }
        Ok(self.settings.to_string())
    }
}
