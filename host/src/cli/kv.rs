//! `hookhost kv`: the plugins' key-value data, through a running server's
//! admin API (`--url`) or the data directory.

use super::out::outln;
use super::remote::{remote, remote_bytes};
use super::Target;
use crate::store::{self, KvEntry, KvSelection, KvUsage};
use anyhow::Context;
use serde_json::{json, Value};

fn rows<T: serde::de::DeserializeOwned>(v: &Value, field: &str) -> anyhow::Result<Vec<T>> {
    serde_json::from_value(v[field].clone())
        .with_context(|| format!("reading the server's `{field}`"))
}

/// A query string value.
fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A path segment, escaped like a query value but with `%20` for a space
/// (`+` means a space only in a query).
fn seg(s: &str) -> String {
    q(s).replace('+', "%20")
}

/// With `json`, one object a line; whether it printed.
fn print_json<T: serde::Serialize>(rows: &[T], json: bool) -> anyhow::Result<bool> {
    if json {
        for r in rows {
            outln!("{}", serde_json::to_string(r)?);
        }
    }
    Ok(json)
}

pub fn usage(t: &Target, tenant: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let rows: Vec<KvUsage> = if t.url.is_some() {
        let path = match tenant {
            Some(tn) => format!("/admin/kv?tenant={}", q(tn)),
            None => "/admin/kv".into(),
        };
        rows(&remote(t, "GET", &path, None)?, "usage")?
    } else {
        store::kv_usage(&store::open_read_only(&t.data_dir)?, tenant)?
    };
    if print_json(&rows, json)? {
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("no key-value data");
    } else {
        outln!(
            "{:<12}  {:<16}  {:>8}  {:>12}",
            "TENANT",
            "PLUGIN",
            "KEYS",
            "BYTES"
        );
        for r in &rows {
            outln!(
                "{:<12}  {:<16}  {:>8}  {:>12}",
                r.tenant,
                r.plugin,
                r.keys,
                r.bytes
            );
        }
    }
    Ok(0)
}

pub fn list(
    t: &Target,
    tenant: &str,
    plugin: &str,
    prefix: &str,
    limit: u64,
    json: bool,
) -> anyhow::Result<i32> {
    let rows: Vec<KvEntry> = if t.url.is_some() {
        let path = format!(
            "/admin/kv/{}/{}?prefix={}&limit={limit}",
            seg(tenant),
            seg(plugin),
            q(prefix)
        );
        rows(&remote(t, "GET", &path, None)?, "keys")?
    } else {
        let c = store::open_read_only(&t.data_dir)?;
        store::kv_entries(&c, tenant, plugin, prefix, limit)?
    };
    if print_json(&rows, json)? {
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("no keys");
    } else {
        outln!("{:>8}  KEY", "BYTES");
        for r in &rows {
            outln!("{:>8}  {}", r.bytes, r.key);
        }
        if rows.len() as u64 == limit {
            outln!("(the first {limit} keys: --limit or --prefix for the others)");
        }
    }
    Ok(0)
}

/// Writes the value's bytes to standard output as they are stored; exit
/// code 1 when there is no such key.
pub fn get(t: &Target, tenant: &str, plugin: &str, key: &str) -> anyhow::Result<i32> {
    let value = if t.url.is_some() {
        let path = format!(
            "/admin/kv/{}/{}/value?key={}",
            seg(tenant),
            seg(plugin),
            q(key)
        );
        remote_bytes(t, &path)?
    } else {
        store::kv_value(&store::open_read_only(&t.data_dir)?, tenant, plugin, key)?
    };
    match value {
        Some(v) => {
            super::out::bytes(&v);
            Ok(0)
        }
        None => {
            eprintln!("no key `{key}` for plugin `{plugin}` of tenant `{tenant}`");
            Ok(1)
        }
    }
}

pub fn delete(t: &Target, tenant: &str, plugin: &str, which: KvSelection) -> anyhow::Result<i32> {
    let deleted = if t.url.is_some() {
        let body = match &which {
            KvSelection::Key(k) => json!({ "key": k }),
            KvSelection::Prefix(p) => json!({ "prefix": p }),
        };
        let path = format!("/admin/kv/{}/{}/delete", seg(tenant), seg(plugin));
        remote(t, "POST", &path, Some(body))?["deleted"]
            .as_u64()
            .unwrap_or(0) as usize
    } else {
        let mut c = store::open_for_update(&t.data_dir)?;
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = store::kv_remove(&tx, tenant, plugin, &which)?;
        tx.commit()?;
        n
    };
    outln!(
        "deleted {deleted} key{} of plugin `{plugin}` for tenant `{tenant}`",
        if deleted == 1 { "" } else { "s" }
    );
    Ok(0)
}
