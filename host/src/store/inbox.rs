//! The inbox: every accepted event, once per (tenant, idempotency key).

use super::writer::Batch;
use super::{Store, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub tenant: String,
    pub key: String,
    pub event_type: String,
    pub ordering_key: String,
    pub body: Vec<u8>,
    pub received_at: i64,
}

#[cfg(test)]
impl NewEvent {
    /// An event of `tenant` with idempotency key `key`, for tests.
    pub(crate) fn sample(tenant: &str, key: &str) -> NewEvent {
        NewEvent {
            tenant: tenant.into(),
            key: key.into(),
            event_type: "message".into(),
            ordering_key: "chat".into(),
            body: b"{}".to_vec(),
            received_at: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    Stored { seq: i64 },
    Duplicate { seq: i64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub seq: i64,
    pub tenant: String,
    pub key: String,
    pub event_type: String,
    pub received_at: i64,
    #[serde(skip)]
    pub ordering_key: String,
    #[serde(skip)]
    pub body: Vec<u8>,
}

const INSERT: &str = "INSERT INTO events (tenant, key, event_type, ordering_key, body, received_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (tenant, key) DO NOTHING";

fn insert(b: &mut Batch<'_>, e: &NewEvent) -> Result<IngestOutcome, StoreError> {
    let n = b.statement(INSERT)?.execute(params![
        e.tenant,
        e.key,
        e.event_type,
        e.ordering_key,
        e.body,
        e.received_at
    ])?;
    if n == 1 {
        return Ok(IngestOutcome::Stored {
            seq: b.conn.last_insert_rowid(),
        });
    }
    let seq = b
        .conn
        .prepare_cached("SELECT seq FROM events WHERE tenant = ?1 AND key = ?2")?
        .query_row(params![e.tenant, e.key], |r| r.get(0))?;
    Ok(IngestOutcome::Duplicate { seq })
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        seq: r.get(0)?,
        tenant: r.get(1)?,
        key: r.get(2)?,
        event_type: r.get(3)?,
        ordering_key: r.get(4)?,
        body: r.get(5)?,
        received_at: r.get(6)?,
    })
}

const COLUMNS: &str = "seq, tenant, key, event_type, ordering_key, body, received_at";

/// Events after `after_seq`, oldest first.
pub fn list(
    c: &Connection,
    tenant: Option<&str>,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<EventRow>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE seq > ?1 AND (?2 IS NULL OR tenant = ?2) ORDER BY seq LIMIT ?3"
    ))?;
    let rows = st
        .query_map(params![after_seq, tenant, limit], row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The newest `limit` events before `before` (all of them: `None`),
/// oldest first.
pub fn list_last(
    c: &Connection,
    tenant: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<EventRow>, StoreError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE (?1 IS NULL OR tenant = ?1) AND seq < ?3
         ORDER BY seq DESC LIMIT ?2"
    ))?;
    let mut rows = st
        .query_map(params![tenant, limit, before.unwrap_or(i64::MAX)], row)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.reverse();
    Ok(rows)
}

/// What fan-out needs of an event (no body).
#[derive(Debug, Clone)]
pub struct EventHead {
    pub seq: i64,
    pub tenant: String,
    pub event_type: String,
    pub ordering_key: String,
}

const HEADS: &str =
    "SELECT seq, tenant, event_type, ordering_key FROM events WHERE seq > ?1 ORDER BY seq";

/// Heads of all tenants' events after `after_seq`, oldest first, at most
/// `limit`.
pub fn heads(c: &Connection, after_seq: i64, limit: i64) -> Result<Vec<EventHead>, StoreError> {
    // The rows come in `seq` order as they are stepped, so the limit is
    // where the reading stops rather than a `LIMIT ?`: SQLite plans a bound
    // `LIMIT` for its value and so parses the statement again each time one
    // is bound, which the dispatcher did at every pass.
    let mut st = c.prepare_cached(HEADS)?;
    let rows = st
        .query_map(params![after_seq], |r| {
            Ok(EventHead {
                seq: r.get(0)?,
                tenant: r.get(1)?,
                event_type: r.get(2)?,
                ordering_key: r.get(3)?,
            })
        })?
        .take(limit.max(0) as usize)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn get(c: &Connection, seq: i64) -> Result<Option<EventRow>, StoreError> {
    let mut st = c.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE seq = ?1"))?;
    Ok(st.query_row([seq], row).optional()?)
}

impl Store {
    /// Commits `event` (or finds its duplicate) before returning.
    pub async fn ingest(&self, event: NewEvent) -> Result<IngestOutcome, StoreError> {
        let _waiting = self.inner.pressure.wait();
        self.write_batch_statement(move |b: &mut Batch<'_>| insert(b, &event))
            .await
    }

    /// Whether webhook events have been queueing for the store (see
    /// [`super::pressure`]).
    pub fn ingest_crowded(&self) -> bool {
        self.inner.pressure.crowded()
    }

    pub fn events_after(
        &self,
        tenant: Option<&str>,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.read(|c| list(c, tenant, after_seq, limit))
    }

    pub fn last_events(
        &self,
        tenant: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.read(|c| list_last(c, tenant, before, limit))
    }

    pub fn event_heads(&self, after_seq: i64, limit: i64) -> Result<Vec<EventHead>, StoreError> {
        self.read(|c| heads(c, after_seq, limit))
    }

    pub fn event(&self, seq: i64) -> Result<Option<EventRow>, StoreError> {
        self.read(|c| get(c, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_stop_at_the_limit_and_their_statement_is_never_prepared_again() {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c, std::path::Path::new(":memory:")).unwrap();
        let mut b = Batch::new(&c);
        for i in 0..10 {
            insert(&mut b, &NewEvent::sample("t", &format!("k{i}"))).unwrap();
        }
        drop(b);
        let seqs = |after, limit| -> Vec<i64> {
            heads(&c, after, limit)
                .unwrap()
                .iter()
                .map(|h| h.seq)
                .collect()
        };
        assert_eq!(seqs(0, 3), [1, 2, 3]);
        assert_eq!(seqs(3, 100), (4..=10).collect::<Vec<_>>());
        assert_eq!(seqs(8, 1), [9]);
        assert!(seqs(10, 5).is_empty());
        assert!(seqs(0, 0).is_empty());
        let st = c.prepare_cached(HEADS).unwrap();
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }
}
