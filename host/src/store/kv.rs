//! Plugin key-value data, and the operator's view of it. Every function
//! takes the (tenant, plugin) pair from the host, never from the guest.

use super::{Store, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

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
        self.read(|c| value(c, s.tenant, s.plugin, key))
    }

    pub fn kv_list(&self, s: Scope, prefix: &str, limit: u64) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            Ok(entries(c, s.tenant, s.plugin, prefix, limit)?
                .into_iter()
                .map(|e| e.key)
                .collect())
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
            // The plugin's usage without this key, then with its new value
            // (`kv_usage` is kept by triggers; see the schema).
            let (keys, bytes): (i64, i64) = c
                .prepare_cached(
                    "SELECT keys, bytes FROM kv_usage WHERE tenant = ?1 AND plugin = ?2",
                )?
                .query_row(params![tenant, plugin], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or((0, 0));
            let old: Option<i64> = c
                .prepare_cached(
                    "SELECT length(CAST(key AS BLOB)) + length(value) FROM kv
                     WHERE tenant = ?1 AND plugin = ?2 AND key = ?3",
                )?
                .query_row(params![tenant, plugin, key], |r| r.get(0))
                .optional()?;
            let (keys, bytes) = match old {
                Some(size) => (keys - 1, bytes - size),
                None => (keys, bytes),
            };
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
        self.write_blocking(move |c| remove(c, &tenant, &plugin, &Selection::Key(key)).map(|_| ()))
    }

    /// For the admin API: every (tenant, plugin)'s usage.
    pub fn kv_usage(&self, tenant: Option<&str>) -> Result<Vec<Usage>, StoreError> {
        self.read(|c| usage(c, tenant))
    }

    /// For the metrics: every (tenant, plugin) that ever held keys, also
    /// those that hold none now (their gauges go back to 0).
    pub fn kv_usage_all(&self) -> Result<Vec<Usage>, StoreError> {
        self.read(|c| usage_rows(c, None, true))
    }

    /// For the admin API: a plugin's keys with their sizes.
    pub fn kv_entries(
        &self,
        tenant: &str,
        plugin: &str,
        prefix: &str,
        limit: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        self.read(|c| entries(c, tenant, plugin, prefix, limit))
    }

    /// For the admin API: deletes an operator's selection of a plugin's keys.
    pub async fn kv_remove(
        &self,
        tenant: String,
        plugin: String,
        which: Selection,
    ) -> Result<usize, StoreError> {
        self.write(move |c| remove(c, &tenant, &plugin, &which))
            .await
    }
}

/// A (tenant, plugin)'s key-value usage, as its quota counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub tenant: String,
    pub plugin: String,
    pub keys: i64,
    pub bytes: i64,
}

/// A stored key and the size of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub bytes: i64,
}

/// Which keys an operator's delete removes.
#[derive(Debug, Clone)]
pub enum Selection {
    Key(String),
    /// Every key that starts with this (all of them for "").
    Prefix(String),
}

/// Each (tenant, plugin) that holds keys, or only `tenant`'s.
pub fn usage(c: &Connection, tenant: Option<&str>) -> Result<Vec<Usage>, StoreError> {
    usage_rows(c, tenant, false)
}

fn usage_rows(
    c: &Connection,
    tenant: Option<&str>,
    with_empty: bool,
) -> Result<Vec<Usage>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT tenant, plugin, keys, bytes FROM kv_usage
         WHERE (?2 OR keys > 0) AND (?1 IS NULL OR tenant = ?1) ORDER BY tenant, plugin",
    )?;
    let rows = st
        .query_map(params![tenant, with_empty], usage_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn usage_row(r: &rusqlite::Row) -> rusqlite::Result<Usage> {
    Ok(Usage {
        tenant: r.get(0)?,
        plugin: r.get(1)?,
        keys: r.get(2)?,
        bytes: r.get(3)?,
    })
}

const ENTRIES: &str = "SELECT key, length(value) FROM kv WHERE tenant = ?1 AND plugin = ?2
     AND key >= ?3 AND key < ?4 ORDER BY key";

/// The keys that start with `prefix`, in order, with their values' sizes.
/// One index range: it stops at the first key past the prefix instead of
/// reading the plugin's later keys (and `%` or `_` are plain characters).
pub fn entries(
    c: &Connection,
    tenant: &str,
    plugin: &str,
    prefix: &str,
    limit: u64,
) -> Result<Vec<Entry>, StoreError> {
    // The limit is where the reading stops, not a `LIMIT ?`: SQLite plans a
    // bound `LIMIT` for its value and so parses the statement again at
    // every call.
    let mut st = c.prepare_cached(ENTRIES)?;
    let rows = st
        .query_map(params![tenant, plugin, prefix, prefix_end(prefix)], |r| {
            Ok(Entry {
                key: r.get(0)?,
                bytes: r.get(1)?,
            })
        })?
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn value(
    c: &Connection,
    tenant: &str,
    plugin: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(
        c.prepare_cached("SELECT value FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key = ?3")?
            .query_row(params![tenant, plugin, key], |r| r.get(0))
            .optional()?,
    )
}

/// Deletes the selected keys; how many there were.
pub fn remove(
    c: &Connection,
    tenant: &str,
    plugin: &str,
    which: &Selection,
) -> Result<usize, StoreError> {
    Ok(match which {
        Selection::Key(k) => c
            .prepare_cached("DELETE FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key = ?3")?
            .execute(params![tenant, plugin, k])?,
        Selection::Prefix(p) => c
            .prepare_cached(
                "DELETE FROM kv WHERE tenant = ?1 AND plugin = ?2 AND key >= ?3 AND key < ?4",
            )?
            .execute(params![tenant, plugin, p, prefix_end(p)])?,
    })
}

/// The upper bound of the keys starting with `prefix`: the next string in
/// SQLite's order, or for none (an empty prefix) an empty BLOB, which
/// sorts after every TEXT value.
fn prefix_end(prefix: &str) -> rusqlite::types::Value {
    match successor(prefix) {
        Some(s) => rusqlite::types::Value::Text(s),
        None => rusqlite::types::Value::Blob(Vec::new()),
    }
}

/// The first string after every string that starts with `prefix`, in
/// SQLite's (byte-wise UTF-8, so code point) order; `None` when there is
/// none (an empty prefix, or only `char::MAX`).
fn successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    fn usage(store: &Store, plugin: &str) -> (i64, i64) {
        let plugin = plugin.to_string();
        store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT keys, bytes FROM kv_usage WHERE tenant = 't' AND plugin = ?1",
                    [plugin],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .unwrap()
    }

    fn quota(r: Result<(), StoreError>) -> bool {
        matches!(r, Err(StoreError::Invalid(m)) if m == KvError::Quota.to_string())
    }

    #[test]
    fn the_quota_counts_each_plugins_keys_and_bytes_as_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        let set = |plugin: &str, key: &str, len: usize| {
            store.kv_set("t", plugin, key.into(), vec![1; len], 3, 100)
        };
        set("p", "a", 10).unwrap();
        set("p", "bé", 20).unwrap(); // "é" is two bytes
        assert_eq!(usage(&store, "p"), (2, 11 + 23));
        // An overwrite counts the new size, not a new key.
        set("p", "a", 40).unwrap();
        assert_eq!(usage(&store, "p"), (2, 41 + 23));
        // 100 bytes exactly fit; one more does not, and changes nothing.
        set("p", "c", 35).unwrap();
        assert_eq!(usage(&store, "p"), (3, 100));
        assert!(quota(set("p", "c", 36)));
        // A fourth key is over the key quota.
        assert!(quota(set("p", "d", 0)));
        // Another plugin's usage is its own.
        set("q", "a", 90).unwrap();
        assert_eq!(usage(&store, "q"), (1, 91));
        // A delete frees its key and bytes.
        store.kv_delete("t", "p", "bé".into()).unwrap();
        assert_eq!(usage(&store, "p"), (2, 77));
        set("p", "d", 20).unwrap();
        assert_eq!(usage(&store, "p"), (3, 98));
        assert_eq!(
            store.kv_get(super::super::kv_scope("t", "p"), "c").unwrap(),
            Some(vec![1; 35])
        );
        store.close();
    }

    #[test]
    fn listing_a_prefix_finds_exactly_its_keys() {
        assert_eq!(successor("ab").as_deref(), Some("ac"));
        assert_eq!(successor("a\u{d7ff}").as_deref(), Some("a\u{e000}"));
        assert_eq!(successor("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(successor(""), None);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        for k in [
            "a",
            "a/1",
            "a/2",
            "a0",
            "a/\u{10ffff}",
            "b",
            "a%",
            "\u{10ffff}x",
        ] {
            store
                .kv_set("t", "p", k.into(), vec![1], 100, 1000)
                .unwrap();
        }
        store
            .kv_set("t", "q", "a/3".into(), vec![1], 100, 1000)
            .unwrap();
        let list = |prefix: &str, limit: u64| {
            store
                .kv_list(super::super::kv_scope("t", "p"), prefix, limit)
                .unwrap()
        };
        assert_eq!(list("a/", 100), ["a/1", "a/2", "a/\u{10ffff}"]);
        assert_eq!(list("a/", 2), ["a/1", "a/2"]);
        assert_eq!(list("a%", 100), ["a%"]);
        assert_eq!(list("\u{10ffff}", 100), ["\u{10ffff}x"]);
        assert_eq!(list("", 100).len(), 8);
        assert!(list("c", 100).is_empty());
        store.close();
    }

    #[test]
    fn listing_stops_at_the_limit_without_preparing_its_statement_again() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c, std::path::Path::new(":memory:")).unwrap();
        for k in ["k1", "k2", "k3", "x"] {
            c.execute(
                "INSERT INTO kv (tenant, plugin, key, value) VALUES ('t', 'p', ?1, x'00')",
                [k],
            )
            .unwrap();
        }
        let keys = |limit| -> Vec<String> {
            entries(&c, "t", "p", "k", limit)
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect()
        };
        assert_eq!(keys(2), ["k1", "k2"]);
        assert_eq!(keys(10), ["k1", "k2", "k3"]);
        assert_eq!(keys(1), ["k1"]);
        assert!(keys(0).is_empty());
        let st = c.prepare_cached(ENTRIES).unwrap();
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }
}
