//! Schema migrations, applied in order at start. A released migration is
//! never edited: changes are new entries at the end of `MIGRATIONS`.

use super::StoreError;
use rusqlite::Connection;
use std::path::Path;

const MIGRATIONS: &[&str] = &[
    // 1: inbox, delivery ledger, sends, plugin key-value, meta.
    r#"
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        key TEXT NOT NULL,
        event_type TEXT NOT NULL,
        ordering_key TEXT NOT NULL,
        body BLOB NOT NULL,
        received_at INTEGER NOT NULL,
        UNIQUE (tenant, key)
    );
    CREATE TABLE deliveries (
        event_seq INTEGER NOT NULL REFERENCES events(seq),
        plugin TEXT NOT NULL,
        tenant TEXT NOT NULL,
        ordering_key TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        last_error TEXT,
        plugin_hash TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (event_seq, plugin)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_due ON deliveries (next_at)
        WHERE state IN ('pending', 'failed');
    CREATE INDEX deliveries_open ON deliveries (tenant, plugin, ordering_key, event_seq)
        WHERE state IN ('pending', 'running', 'failed');
    CREATE TABLE sends (
        idem_key TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        plugin TEXT NOT NULL,
        event_seq INTEGER NOT NULL,
        recipient TEXT NOT NULL,
        message_id TEXT,
        sent_at INTEGER NOT NULL
    );
    CREATE TABLE kv (
        tenant TEXT NOT NULL,
        plugin TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (tenant, plugin, key)
    ) WITHOUT ROWID;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
    "#,
    // 2: replays may ask the messaging capability to send again.
    r#"
    ALTER TABLE deliveries ADD COLUMN resend INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: the scheduler walks open deliveries in event order without sorting.
    r#"
    CREATE INDEX deliveries_queue ON deliveries (event_seq)
        WHERE state IN ('pending', 'failed');
    "#,
    // 4: a send is recorded before it leaves ('sending') so that a crash
    // mid-send is reconciled with the gateway's echo instead of guessed.
    r#"
    ALTER TABLE sends ADD COLUMN state TEXT NOT NULL DEFAULT 'sent';
    ALTER TABLE sends ADD COLUMN text TEXT;
    ALTER TABLE sends ADD COLUMN watermark INTEGER;
    CREATE INDEX sends_message_id ON sends (tenant, message_id);
    "#,
    // 5: while a plugin compiles or a tenant is at its cap, the scheduler
    // reads the queues of the others one (tenant, plugin) lane at a time
    // instead of stepping over the waiting rows at every pass.
    r#"
    CREATE INDEX deliveries_lane ON deliveries (tenant, plugin, event_seq)
        WHERE state IN ('pending', 'failed');
    "#,
    // 6: fewer indexes for each delivery to keep up to date. The scheduler
    // walks each (tenant, plugin) lane's open rows in event order and
    // keeps a chat's later rows back itself, so the index by chat (whose
    // entries land on a random page per delivery) and the one by event
    // order go; the retry clock reads only the rows waiting for a retry.
    r#"
    DROP INDEX deliveries_due;
    DROP INDEX deliveries_open;
    DROP INDEX deliveries_queue;
    DROP INDEX deliveries_lane;
    CREATE INDEX deliveries_open_lane ON deliveries (tenant, plugin, event_seq)
        WHERE state IN ('pending', 'running', 'failed');
    CREATE INDEX deliveries_retry ON deliveries (next_at) WHERE state = 'failed';
    "#,
    // 7: each (tenant, plugin)'s key-value usage kept up to date by
    // triggers, so the quota check at every `set` reads one row instead of
    // summing all of the plugin's keys on the writer thread. Bytes are the
    // key's UTF-8 bytes plus the value's.
    r#"
    CREATE TABLE kv_usage (
        tenant TEXT NOT NULL,
        plugin TEXT NOT NULL,
        keys INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY (tenant, plugin)
    ) WITHOUT ROWID;
    INSERT INTO kv_usage (tenant, plugin, keys, bytes)
        SELECT tenant, plugin, count(*), sum(length(CAST(key AS BLOB)) + length(value))
        FROM kv GROUP BY tenant, plugin;
    CREATE TRIGGER kv_usage_insert AFTER INSERT ON kv BEGIN
        INSERT OR IGNORE INTO kv_usage (tenant, plugin, keys, bytes)
            VALUES (new.tenant, new.plugin, 0, 0);
        UPDATE kv_usage SET keys = keys + 1,
            bytes = bytes + length(CAST(new.key AS BLOB)) + length(new.value)
            WHERE tenant = new.tenant AND plugin = new.plugin;
    END;
    CREATE TRIGGER kv_usage_update AFTER UPDATE ON kv BEGIN
        UPDATE kv_usage SET
            bytes = bytes - length(CAST(old.key AS BLOB)) - length(old.value)
                + length(CAST(new.key AS BLOB)) + length(new.value)
            WHERE tenant = old.tenant AND plugin = old.plugin;
    END;
    CREATE TRIGGER kv_usage_delete AFTER DELETE ON kv BEGIN
        UPDATE kv_usage SET keys = keys - 1,
            bytes = bytes - length(CAST(old.key AS BLOB)) - length(old.value)
            WHERE tenant = old.tenant AND plugin = old.plugin;
    END;
    "#,
    // 8: dead letters found without walking the ledger, for retrying or
    // discarding them all (or a tenant's, or a plugin's) at once.
    r#"
    CREATE INDEX deliveries_dead ON deliveries (tenant, plugin) WHERE state = 'dead';
    "#,
];

/// The schema version this build writes (`PRAGMA user_version`).
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// The schema version of the store at `c`; 0 for an empty database.
pub fn version(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// A store written by a newer hookhost: its schema may hold what this build
/// would misread or undo, so it is neither read nor written.
pub fn newer(path: &Path, version: i64) -> StoreError {
    StoreError::Unavailable(format!(
        "{} has schema version {version}, newer than this hookhost's {}: \
         run the hookhost release that upgraded it (or a later one), \
         or restore a backup taken before that upgrade",
        path.display(),
        latest()
    ))
}

/// A store an older hookhost still runs on, for a command that does not
/// upgrade it.
pub fn older(path: &Path, version: i64) -> StoreError {
    StoreError::Unavailable(format!(
        "{} has schema version {version}, older than this hookhost's {}: \
         start this version's `hookhost serve` on it (it upgrades the store at start)",
        path.display(),
        latest()
    ))
}

/// Applies the migrations the store at `c` (the file `path`) lacks.
pub fn migrate(c: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version = version(&tx)?;
    if version > latest() {
        return Err(newer(path, version));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    Ok(tx.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_usage_is_counted_from_the_data_a_store_already_holds() {
        let mut c = Connection::open_in_memory().unwrap();
        // A store as the release before `kv_usage` left it.
        for sql in &MIGRATIONS[..6] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", 6).unwrap();
        c.execute_batch(
            "INSERT INTO kv VALUES ('t', 'p', 'a', x'0102'), ('t', 'p', 'bé', x'01'),
                                   ('t', 'q', 'k', x'010203');",
        )
        .unwrap();
        migrate(&mut c, Path::new(":memory:")).unwrap();
        let usage = |plugin: &str| -> (i64, i64) {
            c.query_row(
                "SELECT keys, bytes FROM kv_usage WHERE tenant = 't' AND plugin = ?1",
                [plugin],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(usage("p"), (2, 3 + 4));
        assert_eq!(usage("q"), (1, 4));
        // And kept from then on.
        c.execute("DELETE FROM kv WHERE key = 'a'", []).unwrap();
        assert_eq!(usage("p"), (1, 4));
    }
}
