//! Key-value data private to this plugin and tenant.
//!
//! A `set` or `delete` is committed when it returns, also if the delivery
//! fails afterwards: a retried delivery sees it (`ctx.attempt` tells a
//! retry). Keys are 1 to 512 bytes. The operator's quotas (`kv_keys`,
//! `kv_bytes`: keys' UTF-8 bytes plus values' bytes) refuse a write past
//! them with [`HostError::QuotaExceeded`]; operators see the usage with
//! `hookhost kv usage` and can delete keys with `hookhost kv delete`.

use crate::bindings::hookhost::plugin::kv as host;
use crate::HostError;

/// The value of `key`, if it is set.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
    host::get(key)
}

/// [`get`] as text (invalid UTF-8 replaced).
pub fn get_string(key: &str) -> Result<Option<String>, HostError> {
    Ok(host::get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Sets `key` to `value`, replacing what it held.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), HostError> {
    host::set(key, value.as_ref())
}

/// Deletes `key` (nothing happens when it is not set).
pub fn delete(key: &str) -> Result<(), HostError> {
    host::delete(key)
}

/// Keys starting with `prefix`, in order (at most 10 000).
pub fn list(prefix: &str) -> Result<Vec<String>, HostError> {
    host::list_keys(prefix)
}
