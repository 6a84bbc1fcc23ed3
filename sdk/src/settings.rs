//! The plugin's settings from the operator's configuration.

use crate::bindings::hookhost::plugin::config as host;

/// A top-level setting: strings as they are, other values as JSON text.
pub fn get(key: &str) -> Option<String> {
    host::get(key)
}

/// Every setting as JSON.
pub fn json() -> serde_json::Value {
    serde_json::from_str(&host::get_json()).unwrap_or(serde_json::Value::Null)
}

/// The settings read into your own type.
pub fn parse<T: serde::de::DeserializeOwned>() -> Result<T, String> {
    serde_json::from_str(&host::get_json()).map_err(|e| format!("invalid settings: {e}"))
}
