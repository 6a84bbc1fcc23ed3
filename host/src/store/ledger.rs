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
    /// Waiting in state `pending` (fanned out, replayed, retried by the
    /// operator or interrupted by a stop), not a retry after a failure.
    pub queued: bool,
}

impl DueDelivery {
    /// Queued again after the process (or the dispatcher) stopped while it
    /// was running: its attempt was counted, so it may be the one that
    /// stopped it. Such a delivery runs in a slot of its own.
    pub fn interrupted(&self) -> bool {
        self.queued && self.attempts > 0
    }
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

/// Where a walk of a lane's open rows ended ([`Store::due_in_lane`]).
#[derive(Debug, Clone)]
pub struct LaneWalk {
    /// The event of the last row stepped over (0: none yet).
    pub after: i64,
    /// Chats whose oldest open row was found: their later rows wait.
    pub held: std::collections::HashSet<String>,
    /// The earliest retry among the rows that hold their chat back (ms;
    /// `i64::MAX`: none).
    pub wakes_at: i64,
    /// The walk read to the lane's last open row.
    pub complete: bool,
}

impl Default for LaneWalk {
    fn default() -> Self {
        LaneWalk {
            after: 0,
            held: Default::default(),
            wakes_at: i64::MAX,
            complete: false,
        }
    }
}

/// Rows a lane's walk in [`Store::due_in_lane`] steps over before it settles for
/// `enough` deliveries instead of `limit`.
pub const DUE_SCAN_ROWS: usize = 1024;

/// The partial index `deliveries_open_lane` holds the open rows; queries
/// that read them name its condition word for word so SQLite uses it.
macro_rules! open_rows {
    () => {
        "state IN ('pending', 'running', 'failed')"
    };
}

pub(super) fn requeue_running(c: &Connection) -> rusqlite::Result<usize> {
    c.execute(
        concat!(
            "UPDATE deliveries INDEXED BY deliveries_open_lane SET state = 'pending'
             WHERE ",
            open_rows!(),
            " AND state = 'running'"
        ),
        [],
    )
}

const FANOUT_CURSOR: &str = "fanout_cursor";
/// At most this many lanes are read by [`Store::open_lanes`].
const MAX_LANES: usize = 10_000;

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

    /// Deliveries of one (tenant, plugin) lane that may run now, at most
    /// `limit`, oldest first: due, and the oldest open row of their chat
    /// (tenant, plugin, ordering key), so one chat reaches a plugin in
    /// order. The lane's open rows are walked in event order; a row that
    /// runs or waits for its retry keeps its chat's later rows back. Rows of
    /// lanes not asked for (a plugin still compiling, a tenant at its cap)
    /// are not even stepped over, however many wait.
    ///
    /// The walk also ends once it has found `enough` and stepped over
    /// [`DUE_SCAN_ROWS`] rows: when a few chats hold long queues, fewer
    /// chats are free than `limit`, and the walk would otherwise read every
    /// open row of the lane at every pass. What it leaves is newer than
    /// what it found.
    ///
    /// It starts after `walk.after`, with the chats `walk.held` holds back,
    /// and leaves `walk` where it ended. A walk that found nothing and read
    /// the whole lane can go on from there at the next pass, over the rows
    /// added since, as long as none of the rows it read has changed: no
    /// outcome recorded in the lane and no retry come due
    /// (`walk.wakes_at`).
    ///
    /// A retry set for later than `latest` (now plus the longest backoff)
    /// was set by a clock that has since been put back: it is due now
    /// rather than hours late.
    pub fn due_in_lane(
        &self,
        now: i64,
        latest: i64,
        limit: i64,
        enough: i64,
        (tenant, plugin): &(String, String),
        walk: &mut LaneWalk,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let limit = limit.max(0) as usize;
        let enough = (enough.max(1) as usize).min(limit);
        self.read(|c| {
            let mut st = c.prepare_cached(concat!(
                "SELECT event_seq, ordering_key, attempts, resend, state, next_at
                 FROM deliveries INDEXED BY deliveries_open_lane
                 WHERE tenant = ?1 AND plugin = ?2 AND event_seq > ?3 AND ",
                open_rows!(),
                " ORDER BY event_seq"
            ))?;
            let mut rows = st.query(params![tenant, plugin, walk.after])?;
            let mut due = Vec::new();
            let mut stepped = 0;
            walk.complete = false;
            while due.len() < limit && (due.len() < enough || stepped < DUE_SCAN_ROWS) {
                let Some(r) = rows.next()? else {
                    walk.complete = true;
                    break;
                };
                stepped += 1;
                walk.after = r.get(0)?;
                let chat: String = r.get(1)?;
                if walk.held.contains(&chat) {
                    continue;
                }
                let state: String = r.get(4)?;
                let next_at: i64 = r.get(5)?;
                if state != "running" && (next_at <= now || next_at > latest) {
                    due.push(DueDelivery {
                        event_seq: walk.after,
                        plugin: plugin.clone(),
                        tenant: tenant.clone(),
                        ordering_key: chat.clone(),
                        attempts: r.get(2)?,
                        resend: r.get(3)?,
                        queued: state == "pending",
                    });
                } else if state != "running" {
                    walk.wakes_at = walk.wakes_at.min(next_at);
                }
                walk.held.insert(chat);
            }
            Ok(due)
        })
    }

    /// The (tenant, plugin) lanes that have open deliveries, plugins and
    /// tenants no longer configured included, one index seek per lane.
    pub fn open_lanes(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(concat!(
                // Past every row of the previous lane in one seek: with
                // `(tenant, plugin) > (?1, ?2)` SQLite would step over them.
                "SELECT tenant, plugin FROM deliveries INDEXED BY deliveries_open_lane
                 WHERE ",
                open_rows!(),
                " AND (tenant, plugin, event_seq) > (?1, ?2, 9223372036854775807)
                 ORDER BY tenant, plugin, event_seq LIMIT 1"
            ))?;
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
                .prepare_cached(concat!(
                    "SELECT count(*) FROM deliveries INDEXED BY deliveries_open_lane WHERE ",
                    open_rows!(),
                    " AND state = 'pending'"
                ))?
                .query_row([], |r| r.get(0))?;
            Ok(n as usize)
        })
    }

    /// The database's size and the part of it free for reuse (pages
    /// retention freed), in bytes; the WAL is not counted.
    pub fn size(&self) -> Result<(i64, i64), StoreError> {
        self.read(|c| {
            let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            Ok((pages * page, free * page))
        })
    }

    /// Dead letters waiting for the operator, per (tenant, plugin) that
    /// has any (read from the partial index of dead letters).
    pub fn dead_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.read(|c| {
            let rows = c
                .prepare_cached(
                    "SELECT tenant, plugin, count(*) FROM deliveries INDEXED BY deliveries_dead
                     WHERE state = 'dead' GROUP BY tenant, plugin",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Dead letters of `plugin` per tenant that failed only because the
    /// plugin was not loaded (its file missing, broken or still compiling
    /// when their retries ran out): none of them ran its code.
    pub fn dead_unloaded(&self, plugin: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let plugin = plugin.to_string();
        self.read(move |c| {
            let rows = c
                .prepare_cached(
                    "SELECT tenant, count(*) FROM deliveries INDEXED BY deliveries_dead
                     WHERE state = 'dead' AND plugin = ?1
                       AND last_error LIKE 'instantiate: plugin is not loaded%'
                     GROUP BY tenant",
                )?
                .query_map([&plugin], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// The newest event's seq and the number of open deliveries.
    pub fn backlog(&self) -> Result<(i64, i64), StoreError> {
        self.read(|c| {
            let max: i64 = c
                .prepare_cached("SELECT coalesce(max(seq), 0) FROM events")?
                .query_row([], |r| r.get(0))?;
            let open: i64 = c
                .prepare_cached(concat!(
                    "SELECT count(*) FROM deliveries INDEXED BY deliveries_open_lane WHERE ",
                    open_rows!()
                ))?
                .query_row([], |r| r.get(0))?;
            Ok((max, open))
        })
    }

    /// The earliest `next_at` of a delivery waiting for a retry.
    pub fn next_retry_at(&self) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT min(next_at) FROM deliveries INDEXED BY deliveries_retry WHERE state = 'failed'",
            )?
            .query_row([], |r| r.get(0))?)
        })
    }

    /// Puts every `running` delivery back to `pending`, as opening the store
    /// does: for the dispatcher starting again after a failure, once the
    /// deliveries it had under way have ended (their outcomes went with it).
    pub async fn requeue_running(&self) -> Result<usize, StoreError> {
        self.write_statement(|c| Ok(requeue_running(c)?)).await
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

    /// Records the outcomes of one slot's deliveries in one commit. `None`:
    /// the delivery did not run (its slot's time ran out, or the dispatcher
    /// is stopping); it is queued again and its attempt not counted.
    pub async fn finish_all(
        &self,
        outcomes: Vec<(i64, String, Option<DeliveryOutcome>)>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            let now = now_ms();
            let mut ended = c.prepare_cached(
                "UPDATE deliveries SET state = ?3, last_error = ?4, next_at = ?5, updated_at = ?6,
                    resend = CASE WHEN ?3 = 'failed' THEN resend ELSE 0 END
                 WHERE event_seq = ?1 AND plugin = ?2",
            )?;
            let mut not_run = c.prepare_cached(
                "UPDATE deliveries SET state = 'pending', attempts = max(attempts - 1, 0), updated_at = ?3
                 WHERE event_seq = ?1 AND plugin = ?2 AND state = 'running'",
            )?;
            for (event_seq, plugin, outcome) in &outcomes {
                let (state, error, next_at) = match outcome {
                    None => {
                        not_run.execute(params![event_seq, plugin, now])?;
                        continue;
                    }
                    Some(DeliveryOutcome::Done) => ("done", None::<&str>, 0),
                    Some(DeliveryOutcome::Retry { error, next_at }) => {
                        ("failed", Some(error.as_str()), *next_at)
                    }
                    Some(DeliveryOutcome::Dead { error }) => ("dead", Some(error.as_str()), 0),
                };
                ended.execute(params![event_seq, plugin, state, error, next_at, now])?;
            }
            Ok(())
        })
        .await
    }

    pub fn deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.read(|c| list_deliveries(c, filter, limit))
    }

    /// See [`delivery_page`].
    pub fn delivery_page(
        &self,
        filter: &DeliveryFilter,
        limit: i64,
        newest: bool,
    ) -> Result<DeliveryPage, StoreError> {
        self.read(|c| delivery_page(c, filter, limit, newest))
    }
}

/// A page of the ledger, oldest first, and whether there are more rows
/// past it (after it, or for the newest rows before it).
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryRow>,
    pub more: bool,
}

/// The states a delivery goes through, as the ledger writes them.
pub const DELIVERY_STATES: [&str; 6] =
    ["pending", "running", "done", "failed", "dead", "discarded"];

/// Which deliveries a listing shows; `None` takes any.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// The event's sequence number.
    pub event: Option<i64>,
    pub state: Option<String>,
    pub tenant: Option<String>,
    pub plugin: Option<String>,
    /// Only events after this sequence number (to page on).
    pub after: Option<i64>,
    /// Only events before this sequence number (to page back).
    pub before: Option<i64>,
}

impl DeliveryFilter {
    pub fn event(seq: i64) -> DeliveryFilter {
        DeliveryFilter {
            event: Some(seq),
            ..Default::default()
        }
    }
}

pub fn list_deliveries(
    c: &Connection,
    filter: &DeliveryFilter,
    limit: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    select_deliveries(c, filter, limit, "ORDER BY event_seq, plugin")
}

/// Up to `limit` rows of `filter`, from its start (`filter.after`) or,
/// `newest`, its newest (before `filter.before`). A page cut short does not
/// end inside an event's deliveries, unless that event alone fills it, so
/// that the next page (`after` its last event, or `before` its first)
/// misses nothing.
pub fn delivery_page(
    c: &Connection,
    filter: &DeliveryFilter,
    limit: i64,
    newest: bool,
) -> Result<DeliveryPage, StoreError> {
    let order = if newest {
        "ORDER BY event_seq DESC, plugin DESC"
    } else {
        "ORDER BY event_seq, plugin"
    };
    // One more than asked for tells whether there are more.
    let mut rows = select_deliveries(c, filter, limit.saturating_add(1), order)?;
    let more = rows.len() as i64 > limit;
    let next = if more { rows.pop() } else { None };
    if let Some(next) = next {
        let keep = rows
            .iter()
            .rposition(|r| r.event_seq != next.event_seq)
            .map_or(rows.len(), |i| i + 1);
        rows.truncate(keep);
    }
    if newest {
        rows.reverse();
    }
    Ok(DeliveryPage {
        deliveries: rows,
        more,
    })
}

fn select_deliveries(
    c: &Connection,
    filter: &DeliveryFilter,
    limit: i64,
    order: &str,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT event_seq, plugin, tenant, state, attempts, next_at, last_error, plugin_hash, updated_at
         FROM deliveries WHERE (?1 IS NULL OR event_seq = ?1) AND (?2 IS NULL OR state = ?2)
             AND (?4 IS NULL OR tenant = ?4) AND (?5 IS NULL OR plugin = ?5)
             AND (?6 IS NULL OR event_seq > ?6) AND (?7 IS NULL OR event_seq < ?7)
         {order} LIMIT ?3"
    ))?;
    let f = filter;
    let rows = st
        .query_map(
            params![f.event, f.state, limit, f.tenant, f.plugin, f.after, f.before],
            |r| {
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
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::DeadLetter;

    type Row = (&'static str, &'static str, &'static str, i64);

    impl Store {
        /// [`Store::due_in_lane`] for each of `lanes` from its start, oldest
        /// first across them, as the dispatcher asks.
        fn due(
            &self,
            now: i64,
            limit: i64,
            enough: i64,
            lanes: &[(String, String)],
        ) -> Result<Vec<DueDelivery>, StoreError> {
            let mut all = Vec::new();
            for lane in lanes {
                all.extend(self.due_in_lane(
                    now,
                    i64::MAX,
                    limit,
                    enough,
                    lane,
                    &mut LaneWalk::default(),
                )?);
            }
            all.sort_by_key(|d| d.event_seq);
            Ok(all)
        }
    }

    /// A store in a new folder with [`add_rows`]`(1, rows)`.
    fn store_with(rows: Vec<Row>) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        add_rows(&store, 1, rows);
        (dir, store)
    }

    /// Inserts one event of tenant `acme` and its delivery row per
    /// `(plugin, chat, state, next_at)`, in seq order from `first`.
    fn add_rows(store: &Store, first: i64, rows: Vec<Row>) {
        store
            .write_blocking(move |c| {
                for (seq, (plugin, chat, state, next_at)) in (first..).zip(rows) {
                    c.execute(
                        "INSERT INTO events (seq, tenant, key, event_type, ordering_key, body, received_at)
                         VALUES (?1, 'acme', ?1, 'message', ?2, x'7b7d', 0)",
                        params![seq, chat],
                    )?;
                    c.execute(
                        "INSERT INTO deliveries (event_seq, plugin, tenant, ordering_key, state, next_at, updated_at)
                         VALUES (?1, ?2, 'acme', ?3, ?4, ?5, 0)",
                        params![seq, plugin, chat, state, next_at],
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn due_gives_the_oldest_open_row_of_each_chat_when_it_may_run() {
        let later = now_ms() + 60_000;
        let (_dir, store) = store_with(vec![
            ("logger", "a", "done", 0),       // 1: closed, no effect
            ("logger", "a", "running", 0),    // 2: holds a's later rows
            ("logger", "b", "failed", later), // 3: waits, holds b
            ("logger", "a", "pending", 0),    // 4
            ("logger", "c", "failed", 0),     // 5: retry due now
            ("logger", "b", "pending", 0),    // 6
            ("logger", "c", "pending", 0),    // 7: behind 5
            ("logger", "d", "pending", 0),    // 8
            ("stats", "a", "pending", 0),     // 9: another lane, own chats
            ("logger", "e", "dead", 0),       // 10: closed
            ("logger", "e", "pending", 0),    // 11
        ]);
        let lanes = |ps: &[&str]| -> Vec<(String, String)> {
            ps.iter()
                .map(|p| ("acme".to_string(), p.to_string()))
                .collect()
        };
        let seqs =
            |due: Vec<DueDelivery>| -> Vec<i64> { due.iter().map(|d| d.event_seq).collect() };
        let now = now_ms();
        assert_eq!(
            seqs(
                store
                    .due(now, 10, 10, &lanes(&["logger", "stats"]))
                    .unwrap()
            ),
            [5, 8, 9, 11]
        );
        // Only the lanes asked for; at most `limit` of each lane, oldest
        // first across them.
        assert_eq!(
            seqs(store.due(now, 10, 10, &lanes(&["stats"])).unwrap()),
            [9]
        );
        assert_eq!(
            seqs(store.due(now, 2, 2, &lanes(&["logger", "stats"])).unwrap()),
            [5, 8, 9]
        );
        // When b's retry comes, b's first row runs, not the one behind it.
        assert_eq!(
            seqs(store.due(later, 10, 10, &lanes(&["logger"])).unwrap()),
            [3, 5, 8, 11]
        );
        let d = store.due(now, 1, 1, &lanes(&["logger"])).unwrap().remove(0);
        assert_eq!(
            (
                d.plugin.as_str(),
                d.tenant.as_str(),
                d.ordering_key.as_str()
            ),
            ("logger", "acme", "c")
        );
        store.close();
    }

    #[test]
    fn due_stops_walking_a_long_held_queue_once_it_has_enough() {
        // Chats e and f are free; a's first row runs and holds its 2999
        // later rows; b and c come after all of them.
        let held = 3000;
        let mut rows = vec![
            ("logger", "e", "pending", 0), // 1
            ("logger", "f", "pending", 0), // 2
            ("logger", "a", "running", 0), // 3
        ];
        rows.extend((1..held).map(|_| ("logger", "a", "pending", 0)));
        rows.extend([
            ("logger", "b", "pending", 0), // held + 3
            ("logger", "c", "pending", 0), // held + 4
        ]);
        assert!(rows.len() > DUE_SCAN_ROWS * 2);
        let (_dir, store) = store_with(rows);
        let lanes = vec![("acme".to_string(), "logger".to_string())];
        let seqs =
            |due: Vec<DueDelivery>| -> Vec<i64> { due.iter().map(|d| d.event_seq).collect() };
        let now = now_ms();
        let (b, c) = (held as i64 + 3, held as i64 + 4);
        // With enough found, the walk ends after its budget of rows: b and
        // c, newer, wait for a later pass.
        assert_eq!(seqs(store.due(now, 10, 1, &lanes).unwrap()), [1, 2]);
        // Short of enough, it goes on past the budget, and stops once it
        // has enough.
        assert_eq!(seqs(store.due(now, 10, 3, &lanes).unwrap()), [1, 2, b]);
        assert_eq!(seqs(store.due(now, 10, 4, &lanes).unwrap()), [1, 2, b, c]);
        // `limit` still ends it first.
        assert_eq!(seqs(store.due(now, 2, 1, &lanes).unwrap()), [1, 2]);
        store.close();
    }

    #[test]
    fn a_walk_that_found_nothing_goes_on_over_the_rows_added_since() {
        let later = now_ms() + 60_000;
        let (_dir, store) = store_with(vec![
            ("logger", "a", "running", 0),    // 1: holds a
            ("logger", "a", "pending", 0),    // 2
            ("logger", "b", "failed", later), // 3: holds b until later
            ("logger", "b", "pending", 0),    // 4
        ]);
        let lane = ("acme".to_string(), "logger".to_string());
        let now = now_ms();
        let mut walk = LaneWalk::default();
        let found = store
            .due_in_lane(now, i64::MAX, 10, 1, &lane, &mut walk)
            .unwrap();
        assert!(found.is_empty(), "{found:?}");
        assert!(walk.complete);
        assert_eq!((walk.after, walk.wakes_at), (4, later));
        assert_eq!(walk.held.len(), 2);
        // New rows: two of the held chats, one of a new chat.
        add_rows(
            &store,
            5,
            vec![
                ("logger", "a", "pending", 0), // 5
                ("logger", "c", "pending", 0), // 6
                ("logger", "b", "pending", 0), // 7
            ],
        );
        let found = store
            .due_in_lane(now, i64::MAX, 10, 1, &lane, &mut walk)
            .unwrap();
        let seqs: Vec<i64> = found.iter().map(|d| d.event_seq).collect();
        assert_eq!(seqs, [6]);
        assert_eq!(walk.after, 7);
        // Read whole, the lane gives the same.
        let whole = store
            .due_in_lane(now, i64::MAX, 10, 1, &lane, &mut LaneWalk::default())
            .unwrap();
        assert_eq!(whole.iter().map(|d| d.event_seq).collect::<Vec<_>>(), [6]);
        store.close();
    }

    #[test]
    fn the_operators_changes_to_the_ledger_are_counted() {
        let (_dir, store) = store_with(vec![("logger", "a", "dead", 0)]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(store.ledger_changes(), 0);
        rt.block_on(store.settle_dead(1, "logger".into(), DeadLetter::Retry))
            .unwrap();
        assert_eq!(store.ledger_changes(), 1);
        rt.block_on(store.replay(1, vec!["logger".into()], false))
            .unwrap();
        assert_eq!(store.ledger_changes(), 2);
        // The dispatcher's own writes are not the operator's.
        rt.block_on(store.finish_all(vec![(1, "logger".into(), None)]))
            .unwrap();
        assert_eq!(store.ledger_changes(), 2);
        store.close();
    }

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
