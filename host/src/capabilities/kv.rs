//! `kv`: key-value data private to (tenant, plugin), with key and byte quotas.

use super::{store_err, Action, Capabilities};
use crate::bindings::kv::Host;
use crate::bindings::types::HostError;
use crate::config::Grant;
use crate::store::kv_scope;

const MAX_KEY: usize = 512;
const MAX_LIST: u64 = 10_000;

fn check_key(key: &str) -> Result<(), HostError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(HostError::Invalid(format!("keys are 1 to {MAX_KEY} bytes")));
    }
    Ok(())
}

impl Host for Capabilities {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, HostError>> {
        Ok((|| {
            self.check(Grant::Kv)?;
            check_key(&key)?;
            self.store
                .kv_get(kv_scope(&self.tenant, &self.plugin), &key)
                .map_err(store_err)
        })())
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), HostError>> {
        Ok((|| {
            self.check(Grant::Kv)?;
            check_key(&key)?;
            let bytes = value.len();
            let k = key.clone();
            self.store
                .kv_set(
                    &self.tenant,
                    &self.plugin,
                    key,
                    value,
                    self.limits.kv_keys,
                    self.limits.kv_bytes,
                )
                .map_err(store_err)?;
            self.note(|| Action::KvSet { key: k, bytes });
            Ok(())
        })())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), HostError>> {
        Ok((|| {
            self.check(Grant::Kv)?;
            check_key(&key)?;
            let k = key.clone();
            self.store
                .kv_delete(&self.tenant, &self.plugin, key)
                .map_err(store_err)?;
            self.note(|| Action::KvDelete { key: k });
            Ok(())
        })())
    }

    fn list_keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, HostError>> {
        Ok((|| {
            self.check(Grant::Kv)?;
            if prefix.len() > MAX_KEY {
                return Err(HostError::Invalid("prefix too long".into()));
            }
            self.store
                .kv_list(kv_scope(&self.tenant, &self.plugin), &prefix, MAX_LIST)
                .map_err(store_err)
        })())
    }
}
