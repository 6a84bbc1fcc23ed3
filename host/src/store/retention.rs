//! Retention: events older than the configured age are deleted once every
//! plugin is done with them, so the inbox stops growing (and a store with
//! `max_size_mb` does not fill up and answer 503 for ever).
//!
//! An event is kept while any of its deliveries is pending, running,
//! waiting for a retry or dead (a dead letter keeps its event until it is
//! retried or discarded), while fan-out has not reached it, and while it
//! is the newest. With the event go its finished deliveries and the record
//! of the messages it sent; unconfirmed sends stay. Freed pages are reused
//! by SQLite: the file stops growing rather than shrinking.

use super::{now_ms, Store, StoreError};
use rusqlite::{params, Connection};
use std::time::Duration;

/// Events looked at per transaction: one chunk holds the writer for a few
/// milliseconds, so ingest goes on between chunks.
const CHUNK: i64 = 500;

/// What one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub pruned: usize,
    /// The last event looked at: the next chunk starts after it.
    pub last_seq: i64,
    /// Whether older events may remain after `last_seq`.
    pub more: bool,
}

/// Deletes, in the caller's transaction, the events after `from` received
/// before `cutoff_ms` that nothing needs any more, at most [`CHUNK`] looked at.
pub fn prune_chunk(c: &Connection, from: i64, cutoff_ms: i64) -> Result<Chunk, StoreError> {
    // Up to the fan-out cursor, and never the newest event: SQLite numbers
    // a new row one above the largest, so deleting the newest would give
    // its number (which the cursor has passed, and which sends are keyed
    // by) to the next event.
    let (cursor, newest): (i64, i64) = c
        .prepare_cached(
            "SELECT coalesce((SELECT value FROM meta WHERE key = 'fanout_cursor'), 0),
                    coalesce((SELECT max(seq) FROM events), 0)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let cursor = cursor.min(newest - 1);
    let candidates: Vec<(i64, i64)> = c
        .prepare_cached(
            "SELECT seq, received_at FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![from, cursor, CHUNK], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut open = c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1 AND state NOT IN ('done', 'discarded'))",
    )?;
    let mut drop_deliveries = c.prepare_cached("DELETE FROM deliveries WHERE event_seq = ?1")?;
    let mut drop_sends =
        c.prepare_cached("DELETE FROM sends WHERE event_seq = ?1 AND state = 'sent'")?;
    let mut drop_event = c.prepare_cached("DELETE FROM events WHERE seq = ?1")?;
    let mut chunk = Chunk {
        pruned: 0,
        last_seq: from,
        more: candidates.len() as i64 == CHUNK,
    };
    for (seq, received_at) in candidates {
        // Events arrive in time order: the first young one ends the pass.
        if received_at >= cutoff_ms {
            chunk.more = false;
            break;
        }
        chunk.last_seq = seq;
        if open.query_row([seq], |r| r.get::<_, bool>(0))? {
            continue;
        }
        drop_deliveries.execute([seq])?;
        drop_sends.execute([seq])?;
        chunk.pruned += drop_event.execute([seq])?;
    }
    Ok(chunk)
}

fn cutoff(age: Duration) -> i64 {
    now_ms().saturating_sub(age.as_millis().min(i64::MAX as u128) as i64)
}

/// What a time-bounded pass did ([`Store::prune_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub pruned: usize,
    /// Set when the time ran out with older events left: the next pass
    /// starts after this event.
    pub resume_after: Option<i64>,
}

impl Store {
    /// Prunes every event older than `age` that nothing needs, one chunk per
    /// writer transaction. Returns how many went.
    pub async fn prune(&self, age: Duration) -> Result<usize, StoreError> {
        Ok(self.prune_for(age, 0, None).await?.pruned)
    }

    /// [`Store::prune`] from after event `after`, stopping between two
    /// chunks when another would not end within `budget` (an admin request
    /// answers in time and the caller asks again from where it stopped).
    pub async fn prune_for(
        &self,
        age: Duration,
        after: i64,
        budget: Option<Duration>,
    ) -> Result<Pass, StoreError> {
        let began = std::time::Instant::now();
        let cutoff_ms = cutoff(age);
        let (mut pruned, mut from) = (0, after);
        loop {
            let started = std::time::Instant::now();
            let chunk = self.write(move |c| prune_chunk(c, from, cutoff_ms)).await?;
            pruned += chunk.pruned;
            from = chunk.last_seq;
            if !chunk.more {
                return Ok(Pass {
                    pruned,
                    resume_after: None,
                });
            }
            // Room for the ingest between two chunks: pruning a long
            // backlog takes at most about a fifth of the writer's time.
            let pause = (started.elapsed() * 4).max(Duration::from_millis(2));
            // Stop unless the pause and one more chunk like this one fit.
            if budget.is_some_and(|b| began.elapsed() + pause + started.elapsed() > b) {
                return Ok(Pass {
                    pruned,
                    resume_after: Some(from),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// [`Store::prune`] for the offline command, on its own connection.
pub fn prune_offline(c: &mut Connection, age: Duration) -> Result<usize, StoreError> {
    let cutoff_ms = cutoff(age);
    let (mut total, mut from) = (0, 0);
    loop {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let chunk = prune_chunk(&tx, from, cutoff_ms)?;
        tx.commit()?;
        total += chunk.pruned;
        if !chunk.more {
            return Ok(total);
        }
        from = chunk.last_seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::{DeadLetter, DeliveryOutcome, NewDelivery, NewEvent};

    fn event(i: i64, received_at: i64) -> NewEvent {
        NewEvent {
            tenant: "t".into(),
            key: format!("k{i}"),
            event_type: "messages.post".into(),
            ordering_key: format!("chat{i}"),
            body: vec![b'x'; 100],
            received_at,
        }
    }

    fn seqs(store: &Store) -> Vec<i64> {
        let events = store.events_after(None, 0, 10_000).unwrap();
        events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn only_old_events_that_nothing_needs_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        let old = now_ms() - 3_600_000;
        // 1: done; 2: no plugin; 3: pending; 4: dead; 5: failed, waiting
        // for its retry; 6: done but not fanned out yet; 7: young.
        for i in 1..=6 {
            store.ingest(event(i, old)).await.unwrap();
        }
        store.ingest(event(7, now_ms())).await.unwrap();
        let rows = [1, 3, 4, 5]
            .iter()
            .map(|&seq| NewDelivery {
                event_seq: seq,
                plugin: "p".into(),
                tenant: "t".into(),
                ordering_key: format!("chat{seq}"),
            })
            .collect();
        store.fan_out(rows, 5).await.unwrap();
        let outcomes = [
            (1, DeliveryOutcome::Done),
            (4, DeliveryOutcome::Dead { error: "no".into() }),
            (
                5,
                DeliveryOutcome::Retry {
                    next_at: now_ms() + 60_000,
                    error: "later".into(),
                },
            ),
        ];
        let outcomes = outcomes
            .into_iter()
            .map(|(seq, outcome)| (seq, "p".to_string(), Some(outcome)))
            .collect();
        store.finish_all(outcomes).await.unwrap();
        store
            .write(|c| {
                c.execute_batch(
                    "INSERT INTO sends (idem_key, tenant, plugin, event_seq, recipient, sent_at, state)
                     VALUES ('a', 't', 'p', 1, 'r', 0, 'sent'), ('b', 't', 'p', 1, 'r', 0, 'sending')",
                )?;
                Ok(())
            })
            .await
            .unwrap();

        assert_eq!(store.prune(Duration::from_secs(60)).await.unwrap(), 2);
        assert_eq!(seqs(&store), [3, 4, 5, 6, 7]);
        let (deliveries, sends): (Vec<i64>, Vec<String>) = store
            .read(|c| {
                let d = c
                    .prepare("SELECT event_seq FROM deliveries ORDER BY event_seq")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let s = c
                    .prepare("SELECT idem_key FROM sends ORDER BY idem_key")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok((d, s))
            })
            .unwrap();
        assert_eq!(deliveries, [3, 4, 5]);
        assert_eq!(sends, ["b"], "the unconfirmed send stays");
        assert_eq!(store.prune(Duration::from_secs(60)).await.unwrap(), 0);
        // Once fanned out, 6 goes; 7 is still too young, and an age longer
        // than the events' keeps everything.
        store.fan_out(vec![], 7).await.unwrap();
        assert_eq!(store.prune(Duration::from_secs(86_400)).await.unwrap(), 0);
        assert_eq!(store.prune(Duration::from_secs(60)).await.unwrap(), 1);
        assert_eq!(seqs(&store), [3, 4, 5, 7]);
        // A discarded dead letter no longer holds its event.
        store
            .settle_dead(4, "p".into(), DeadLetter::Discard)
            .await
            .unwrap();
        assert_eq!(store.prune(Duration::from_secs(60)).await.unwrap(), 1);
        assert_eq!(seqs(&store), [3, 5, 7]);
        store.close();
    }

    #[tokio::test]
    async fn a_long_run_of_old_events_goes_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        let old = now_ms() - 3_600_000;
        let n = CHUNK * 2 + 7;
        for i in 1..=n {
            store.ingest(event(i, old)).await.unwrap();
        }
        store.fan_out(vec![], n).await.unwrap();
        assert_eq!(
            store.prune(Duration::from_secs(60)).await.unwrap(),
            n as usize - 1
        );
        assert_eq!(seqs(&store), [n], "the newest stays");
        // So the next event is numbered after every pruned one.
        let next = store.ingest(event(n + 1, now_ms())).await.unwrap();
        assert_eq!(next, crate::store::IngestOutcome::Stored { seq: n + 1 });
        store.close();
    }
}
