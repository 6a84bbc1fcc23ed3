//! Plugin key-value data. Every function takes
//! the (tenant, plugin) pair from the host, never from the guest.

use super::{Store, StoreError};
use rusqlite::{params, OptionalExtension};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("quota exceeded")]
    Quota,
}

pub struct Scope<'a> {
    pub tenant: &'a str,
    pub plugin: &'a str,
}

impl Store {
    pub fn kv_get(&self, s: Scope, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT value FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
            )?
            .query_row(params![s.tenant, s.plugin, key], |r| r.get(0))
            .optional()?)
        })
    }

    pub fn kv_list(&self, s: Scope, prefix: &str, limit: u64) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            // Range scan instead of LIKE: prefixes may contain % and _.
            let mut st = c.prepare_cached(
                "SELECT key FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key >= ?3
                 AND substr(key, 1, length(?3)) = ?3 ORDER BY key LIMIT ?4",
            )?;
            let keys = st
                .query_map(params![s.tenant, s.plugin, prefix, limit as i64], |r| {
                    r.get(0)
                })?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(keys)
        })
    }

    /// Sets `key`; refuses with `Invalid("quota")` past the key or byte quota.
    pub fn kv_set(
        &self,
        tenant: &str,
        plugin: &str,
        key: String,
        value: Vec<u8>,
        max_keys: u64,
        max_bytes: u64,
    ) -> Result<(), StoreError> {
        let (tenant, plugin) = (tenant.to_string(), plugin.to_string());
        self.write_blocking(move |c| {
            let (keys, bytes): (i64, i64) = c
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM kv
                     WHERE tenant = ?1 AND plugin = ?2 AND key <> ?3",
                )?
                .query_row(params![tenant, plugin, key], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let size = (key.len() + value.len()) as i64;
            if keys as u64 + 1 > max_keys || (bytes + size) as u64 > max_bytes {
                return Err(StoreError::Invalid(KvError::Quota.to_string()));
            }
            c.prepare_cached(
                "INSERT INTO kv (tenant, plugin, key, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, plugin, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![tenant, plugin, key, value])?;
            Ok(())
        })
    }

    pub fn kv_delete(&self, tenant: &str, plugin: &str, key: String) -> Result<(), StoreError> {
        let (tenant, plugin) = (tenant.to_string(), plugin.to_string());
        self.write_blocking(move |c| {
            c.prepare_cached("DELETE FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key = ?3")?
                .execute(params![tenant, plugin, key])?;
            Ok(())
        })
    }
}
