//! The delivery ledger: one row per (event, plugin).
//! pending → running → done | failed (retry at `next_at`) → dead.

use super::{now_ms, Store, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub event_seq: i64,
    pub plugin: String,
    pub tenant: String,
    pub ordering_key: String,
}

#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub event_seq: i64,
    pub plugin: String,
    pub tenant: String,
    pub ordering_key: String,
    pub attempts: u32,
    /// An operator's replay asked for messages to be sent again.
    pub resend: bool,
}

#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    Done,
    Retry { error: String, next_at: i64 },
    Dead { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    pub event_seq: i64,
    pub plugin: String,
    pub tenant: String,
    pub state: String,
    pub attempts: u32,
    pub next_at: i64,
    pub last_error: Option<String>,
    pub plugin_hash: Option<String>,
    pub updated_at: i64,
}

pub(super) fn requeue_running(c: &Connection) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE deliveries SET state = 'pending' WHERE state = 'running'",
        [],
    )
}

const FANOUT_CURSOR: &str = "fanout_cursor";
/// At most this many lanes are read by [`Store::open_lanes`].
const MAX_LANES: usize = 10_000;

/// What the scheduler reads of a delivery that may run (a macro, so the
/// queries below are literals built once at compile time).
macro_rules! due_columns {
    () => {
        "d.event_seq, d.plugin, d.tenant, d.ordering_key, d.attempts, d.resend"
    };
}

/// `d` is the oldest open delivery of its (tenant, plugin, chat).
macro_rules! first_of_its_chat {
    () => {
        "NOT EXISTS (
            SELECT 1 FROM deliveries o
            WHERE o.tenant = d.tenant AND o.plugin = d.plugin
              AND o.ordering_key = d.ordering_key AND o.event_seq < d.event_seq
              AND o.state IN ('pending', 'running', 'failed'))"
    };
}

fn due_row(r: &rusqlite::Row) -> rusqlite::Result<DueDelivery> {
    Ok(DueDelivery {
        event_seq: r.get(0)?,
        plugin: r.get(1)?,
        tenant: r.get(2)?,
        ordering_key: r.get(3)?,
        attempts: r.get(4)?,
        resend: r.get(5)?,
    })
}

impl Store {
    /// Where fan-out stopped: every event with a smaller or equal seq has its
    /// delivery rows.
    pub fn fanout_cursor(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            let v: Option<i64> = c
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    [FANOUT_CURSOR],
                    |r| r.get(0),
                )
                .ok();
            Ok(v.unwrap_or(0))
        })
    }

    /// Creates delivery rows and moves the cursor, in one transaction.
    pub async fn fan_out(&self, rows: Vec<NewDelivery>, cursor: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            let now = now_ms();
            let mut st = c.prepare_cached(
                "INSERT INTO deliveries (event_seq, plugin, tenant, ordering_key, state, next_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5) ON CONFLICT DO NOTHING",
            )?;
            for r in &rows {
                st.execute(params![r.event_seq, r.plugin, r.tenant, r.ordering_key, now])?;
            }
            c.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            )?
            .execute(params![FANOUT_CURSOR, cursor])?;
            Ok(())
        })
        .await
    }

    /// Deliveries that may run now: due, and the oldest open one of their
    /// (tenant, plugin, ordering key), so one chat reaches a plugin in order.
    /// `held`: plugins whose deliveries wait (still compiling); `full`:
    /// tenants running as many deliveries as they may.
    pub fn due(
        &self,
        now: i64,
        limit: i64,
        held: &[String],
        full: &[String],
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let held = serde_json::to_string(held).unwrap_or_else(|_| "[]".into());
        let full = serde_json::to_string(full).unwrap_or_else(|_| "[]".into());
        self.read(|c| {
            let mut st = c.prepare_cached(concat!(
                "SELECT ",
                due_columns!(),
                " FROM deliveries d INDEXED BY deliveries_queue
                 WHERE d.state IN ('pending', 'failed') AND d.next_at <= ?1
                   AND d.plugin NOT IN (SELECT value FROM json_each(?3))
                   AND d.tenant NOT IN (SELECT value FROM json_each(?4))
                   AND ",
                first_of_its_chat!(),
                " ORDER BY d.event_seq LIMIT ?2"
            ))?;
            let rows = st
                .query_map(params![now, limit, held, full], due_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// [`Store::due`] for the given (tenant, plugin) lanes only, read one
    /// lane at a time: rows of other lanes (a plugin still compiling, a
    /// tenant at its cap) are not even stepped over, however many wait.
    pub fn due_in_lanes(
        &self,
        now: i64,
        limit: i64,
        lanes: &[(String, String)],
    ) -> Result<Vec<DueDelivery>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(concat!(
                "SELECT ",
                due_columns!(),
                " FROM deliveries d INDEXED BY deliveries_lane
                 WHERE d.tenant = ?1 AND d.plugin = ?2
                   AND d.state IN ('pending', 'failed') AND d.next_at <= ?3
                   AND ",
                first_of_its_chat!(),
                " ORDER BY d.event_seq LIMIT ?4"
            ))?;
            let mut all = Vec::new();
            for (tenant, plugin) in lanes {
                for row in st.query_map(params![tenant, plugin, now, limit], due_row)? {
                    all.push(row?);
                }
            }
            // Oldest first across lanes, as the single query gives them.
            all.sort_by_key(|d| d.event_seq);
            all.truncate(limit.max(0) as usize);
            Ok(all)
        })
    }

    /// The (tenant, plugin) lanes that have open deliveries, plugins and
    /// tenants no longer configured included, one index seek per lane.
    pub fn open_lanes(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                // Past every row of the previous lane in one seek: with
                // `(tenant, plugin) > (?1, ?2)` SQLite would step over them.
                "SELECT tenant, plugin FROM deliveries INDEXED BY deliveries_lane
                 WHERE state IN ('pending', 'failed')
                   AND (tenant, plugin, event_seq) > (?1, ?2, 9223372036854775807)
                 ORDER BY tenant, plugin, event_seq LIMIT 1",
            )?;
            let mut lanes: Vec<(String, String)> = Vec::new();
            // Bounded: a lane is a configured (tenant, plugin) pair or one
            // that used to be.
            while lanes.len() < MAX_LANES {
                let (t, p) = lanes
                    .last()
                    .map(|(t, p)| (t.as_str(), p.as_str()))
                    .unwrap_or(("", ""));
                match st
                    .query_row(params![t, p], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?
                {
                    Some(lane) => lanes.push(lane),
                    None => break,
                }
            }
            Ok(lanes)
        })
    }

    /// Deliveries waiting for their first run.
    pub fn pending_count(&self) -> Result<usize, StoreError> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT count(*) FROM deliveries WHERE state = 'pending'")?
                .query_row([], |r| r.get(0))?;
            Ok(n as usize)
        })
    }

    /// The newest event's seq and the number of open deliveries.
    pub fn backlog(&self) -> Result<(i64, i64), StoreError> {
        self.read(|c| {
            let max: i64 = c
                .prepare_cached("SELECT coalesce(max(seq), 0) FROM events")?
                .query_row([], |r| r.get(0))?;
            let open: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'running', 'failed')",
                )?
                .query_row([], |r| r.get(0))?;
            Ok((max, open))
        })
    }

    /// The earliest `next_at` of a delivery waiting for a retry.
    pub fn next_retry_at(&self) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT min(next_at) FROM deliveries WHERE state IN ('pending', 'failed')",
            )?
            .query_row([], |r| r.get(0))?)
        })
    }

    /// Marks deliveries running (the dispatcher waits for the commit).
    pub fn mark_running(
        &self,
        items: Vec<(i64, String, String)>,
    ) -> tokio::sync::oneshot::Receiver<Result<(), StoreError>> {
        self.submit(move |c| {
            let now = now_ms();
            let mut st = c.prepare_cached(
                "UPDATE deliveries SET state = 'running', attempts = attempts + 1, plugin_hash = ?3, updated_at = ?4
                 WHERE event_seq = ?1 AND plugin = ?2",
            )?;
            for (seq, plugin, hash) in &items {
                st.execute(params![seq, plugin, hash, now])?;
            }
            Ok(())
        })
    }

    pub async fn finish(
        &self,
        event_seq: i64,
        plugin: String,
        outcome: DeliveryOutcome,
    ) -> Result<(), StoreError> {
        self.write_statement(move |c| {
            let now = now_ms();
            let (state, error, next_at) = match &outcome {
                DeliveryOutcome::Done => ("done", None::<&str>, 0),
                DeliveryOutcome::Retry { error, next_at } => {
                    ("failed", Some(error.as_str()), *next_at)
                }
                DeliveryOutcome::Dead { error } => ("dead", Some(error.as_str()), 0),
            };
            c.prepare_cached(
                "UPDATE deliveries SET state = ?3, last_error = ?4, next_at = ?5, updated_at = ?6,
                    resend = CASE WHEN ?3 = 'failed' THEN resend ELSE 0 END
                 WHERE event_seq = ?1 AND plugin = ?2",
            )?
            .execute(params![event_seq, plugin, state, error, next_at, now])?;
            Ok(())
        })
        .await
    }

    pub fn deliveries(
        &self,
        event_seq: Option<i64>,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(|c| list_deliveries(c, event_seq, state, limit))
    }
}

pub fn list_deliveries(
    c: &Connection,
    event_seq: Option<i64>,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT event_seq, plugin, tenant, state, attempts, next_at, last_error, plugin_hash, updated_at
         FROM deliveries WHERE (?1 IS NULL OR event_seq = ?1) AND (?2 IS NULL OR state = ?2)
         ORDER BY event_seq, plugin LIMIT ?3",
    )?;
    let rows = st
        .query_map(params![event_seq, state, limit], |r| {
            Ok(DeliveryRow {
                event_seq: r.get(0)?,
                plugin: r.get(1)?,
                tenant: r.get(2)?,
                state: r.get(3)?,
                attempts: r.get(4)?,
                next_at: r.get(5)?,
                last_error: r.get(6)?,
                plugin_hash: r.get(7)?,
                updated_at: r.get(8)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("no event {0}")]
    NoEvent(i64),
    #[error("no dead letter for event {0} and plugin `{1}`")]
    NotDead(i64, String),
    #[error("the delivery of event {0} to `{1}` is running; try again when it ends")]
    Running(i64, String),
    #[error("no plugin to replay to")]
    NoPlugin,
}

impl From<ReplayError> for StoreError {
    fn from(e: ReplayError) -> Self {
        StoreError::Invalid(e.to_string())
    }
}

/// Puts deliveries of event `seq` back to pending (creating missing rows):
/// one per plugin in `plugins`. Returns the plugins queued.
pub fn replay(
    c: &Connection,
    seq: i64,
    plugins: &[String],
    resend: bool,
) -> Result<Vec<String>, StoreError> {
    let (tenant, ordering_key): (String, String) = c
        .query_row(
            "SELECT tenant, ordering_key FROM events WHERE seq = ?1",
            [seq],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|_| ReplayError::NoEvent(seq))?;
    if plugins.is_empty() {
        return Err(ReplayError::NoPlugin.into());
    }
    for p in plugins {
        let state: Option<String> = c
            .query_row(
                "SELECT state FROM deliveries WHERE event_seq = ?1 AND plugin = ?2",
                params![seq, p],
                |r| r.get(0),
            )
            .ok();
        if state.as_deref() == Some("running") {
            return Err(ReplayError::Running(seq, p.clone()).into());
        }
    }
    let now = now_ms();
    let mut st = c.prepare_cached(
        "INSERT INTO deliveries (event_seq, plugin, tenant, ordering_key, state, attempts, next_at, updated_at, resend)
         VALUES (?1, ?2, ?3, ?4, 'pending', 0, 0, ?5, ?6)
         ON CONFLICT (event_seq, plugin) DO UPDATE SET state = 'pending', attempts = 0, next_at = 0,
            last_error = NULL, updated_at = excluded.updated_at, resend = excluded.resend",
    )?;
    for p in plugins {
        st.execute(params![seq, p, tenant, ordering_key, now, resend])?;
    }
    Ok(plugins.to_vec())
}

/// A dead letter back to pending, attempts reset.
pub fn retry_dead(c: &Connection, seq: i64, plugin: &str) -> Result<(), StoreError> {
    let n = c.execute(
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = 0, updated_at = ?3
         WHERE event_seq = ?1 AND plugin = ?2 AND state = 'dead'",
        params![seq, plugin, now_ms()],
    )?;
    if n == 0 {
        return Err(ReplayError::NotDead(seq, plugin.to_string()).into());
    }
    Ok(())
}

/// Plugins that have a delivery row for `seq`.
pub fn delivered_plugins(c: &Connection, seq: i64) -> Result<Vec<String>, StoreError> {
    let mut st =
        c.prepare_cached("SELECT plugin FROM deliveries WHERE event_seq = ?1 ORDER BY plugin")?;
    let rows = st
        .query_map([seq], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(rows)
}

impl Store {
    pub async fn replay(
        &self,
        seq: i64,
        plugins: Vec<String>,
        resend: bool,
    ) -> Result<Vec<String>, StoreError> {
        self.write(move |c| replay(c, seq, &plugins, resend)).await
    }

    pub async fn retry_dead(&self, seq: i64, plugin: String) -> Result<(), StoreError> {
        self.write(move |c| retry_dead(c, seq, &plugin)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    #[test]
    fn open_lanes_lists_each_lane_with_open_rows_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        // Lanes interleaved in event order; many rows in one lane; a lane
        // whose rows are all done or dead is not open.
        let rows: Vec<(&str, &str, &str)> = (0..300)
            .map(|i| match i % 6 {
                0..=2 => ("acme", "logger", "pending"),
                3 => ("acme", "stats", "failed"),
                4 => ("beta", "logger", "done"),
                _ => ("beta", "stats", if i == 299 { "pending" } else { "dead" }),
            })
            .collect();
        store
            .write_blocking(move |c| {
                for (i, (tenant, plugin, state)) in rows.iter().enumerate() {
                    c.execute(
                        "INSERT INTO events (seq, tenant, key, event_type, ordering_key, body, received_at)
                         VALUES (?1, ?2, ?1, 'message', 'chat', x'7b7d', 0)",
                        params![i as i64 + 1, tenant],
                    )?;
                    c.execute(
                        "INSERT INTO deliveries (event_seq, plugin, tenant, ordering_key, state, next_at, updated_at)
                         VALUES (?1, ?2, ?3, 'chat', ?4, 0, 0)",
                        params![i as i64 + 1, plugin, tenant, state],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let lanes = store.open_lanes().unwrap();
        let want = [("acme", "logger"), ("acme", "stats"), ("beta", "stats")];
        assert_eq!(
            lanes,
            want.map(|(t, p)| (t.to_string(), p.to_string())).to_vec()
        );
        store.close();
    }
}
