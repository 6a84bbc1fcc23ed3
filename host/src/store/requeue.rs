//! Deliveries put back in the queue by hand: an event replayed through its
//! plugins (one, or a range for a new plugin's history), and dead letters
//! retried or discarded, one or all of a tenant's or a plugin's at once.

use super::{now_ms, Store, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

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
    let mut st = c.prepare_cached(REQUEUE)?;
    for p in plugins {
        st.execute(params![seq, p, tenant, ordering_key, now, resend])?;
    }
    Ok(plugins.to_vec())
}

/// A delivery back to pending, attempts reset (created if missing).
const REQUEUE: &str =
    "INSERT INTO deliveries (event_seq, plugin, tenant, ordering_key, state, attempts, next_at, updated_at, resend)
     VALUES (?1, ?2, ?3, ?4, 'pending', 0, 0, ?5, ?6)
     ON CONFLICT (event_seq, plugin) DO UPDATE SET state = 'pending', attempts = 0, next_at = 0,
        last_error = NULL, updated_at = excluded.updated_at, resend = excluded.resend";

/// What [`replay_many`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// Events with at least one delivery queued.
    pub events: usize,
    pub deliveries: usize,
    /// Deliveries left alone because they were running.
    pub running: usize,
}

/// [`replay`] for many events at once, in the caller's transaction: each
/// `(seq, plugins)` queued again, except deliveries running right now
/// (counted) and events that are gone.
pub fn replay_many(
    c: &Connection,
    items: &[(i64, Vec<String>)],
    resend: bool,
) -> Result<Replayed, StoreError> {
    let now = now_ms();
    let mut event = c.prepare_cached("SELECT tenant, ordering_key FROM events WHERE seq = ?1")?;
    let mut state =
        c.prepare_cached("SELECT state FROM deliveries WHERE event_seq = ?1 AND plugin = ?2")?;
    let mut requeue = c.prepare_cached(REQUEUE)?;
    let mut done = Replayed::default();
    for (seq, plugins) in items {
        let Some((tenant, ordering_key)) = event
            .query_row([seq], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?
        else {
            continue;
        };
        let mut queued = 0;
        for p in plugins {
            let current: Option<String> =
                state.query_row(params![seq, p], |r| r.get(0)).optional()?;
            if current.as_deref() == Some("running") {
                done.running += 1;
                continue;
            }
            requeue.execute(params![seq, p, tenant, ordering_key, now, resend])?;
            queued += 1;
        }
        done.deliveries += queued;
        done.events += usize::from(queued > 0);
    }
    Ok(done)
}

/// What the operator does with a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetter {
    /// Back to pending, attempts reset.
    Retry,
    /// Given up: `discarded`, kept in the ledger as a record, and no longer
    /// holding its event back from retention.
    Discard,
}

impl DeadLetter {
    /// What it does to a dead letter's row (an SQL `SET` list).
    fn change(self) -> &'static str {
        match self {
            DeadLetter::Retry => "state = 'pending', attempts = 0, next_at = 0",
            DeadLetter::Discard => "state = 'discarded'",
        }
    }

    /// The action's name: `retry`, `discard` (the admin API's paths).
    pub fn verb(self) -> &'static str {
        match self {
            DeadLetter::Retry => "retry",
            DeadLetter::Discard => "discard",
        }
    }

    /// What was done: `retried`, `discarded` (the bulk answer's key).
    pub fn done(self) -> &'static str {
        match self {
            DeadLetter::Retry => "retried",
            DeadLetter::Discard => "discarded",
        }
    }
}

pub fn settle_dead(
    c: &Connection,
    seq: i64,
    plugin: &str,
    action: DeadLetter,
) -> Result<(), StoreError> {
    let set = action.change();
    let n = c.execute(
        &format!(
            "UPDATE deliveries SET {set}, updated_at = ?3
             WHERE event_seq = ?1 AND plugin = ?2 AND state = 'dead'"
        ),
        params![seq, plugin, now_ms()],
    )?;
    if n == 0 {
        return Err(ReplayError::NotDead(seq, plugin.to_string()).into());
    }
    Ok(())
}

/// Which dead letters a bulk retry or discard (or a listing) takes: all of
/// them, or a tenant's, a plugin's, or one plugin's of one tenant. A
/// misspelt field is refused rather than read as "all".
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadFilter {
    pub tenant: Option<String>,
    pub plugin: Option<String>,
}

/// Retries or discards every dead letter `filter` takes, in one statement
/// (one transaction). Returns how many.
pub fn settle_dead_all(
    c: &Connection,
    filter: &DeadFilter,
    action: DeadLetter,
) -> Result<usize, StoreError> {
    let set = action.change();
    // `state = 'dead'` written out, so that the partial index of dead
    // letters serves it rather than a walk of the whole ledger.
    Ok(c.execute(
        &format!(
            "UPDATE deliveries SET {set}, updated_at = ?3
             WHERE state = 'dead' AND (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR plugin = ?2)"
        ),
        params![filter.tenant, filter.plugin, now_ms()],
    )?)
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
        self.ledger_changed(self.write(move |c| replay(c, seq, &plugins, resend)).await)
    }

    pub async fn replay_many(
        &self,
        items: Vec<(i64, Vec<String>)>,
        resend: bool,
    ) -> Result<Replayed, StoreError> {
        self.ledger_changed(self.write(move |c| replay_many(c, &items, resend)).await)
    }

    pub async fn settle_dead(
        &self,
        seq: i64,
        plugin: String,
        action: DeadLetter,
    ) -> Result<(), StoreError> {
        self.ledger_changed(
            self.write(move |c| settle_dead(c, seq, &plugin, action))
                .await,
        )
    }

    pub async fn settle_dead_all(
        &self,
        filter: DeadFilter,
        action: DeadLetter,
    ) -> Result<usize, StoreError> {
        self.ledger_changed(
            self.write_statement(move |c| settle_dead_all(c, &filter, action))
                .await,
        )
    }
}
