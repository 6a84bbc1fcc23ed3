//! Key-value data private to this plugin and tenant.

use crate::bindings::hookhost::plugin::kv as host;
use crate::HostError;

pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
    host::get(key)
}

pub fn get_string(key: &str) -> Result<Option<String>, HostError> {
    Ok(host::get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), HostError> {
    host::set(key, value.as_ref())
}

pub fn delete(key: &str) -> Result<(), HostError> {
    host::delete(key)
}

/// Keys starting with `prefix`, in order.
pub fn list(prefix: &str) -> Result<Vec<String>, HostError> {
    host::list_keys(prefix)
}
