//! Events as deliveries need them, read from the inbox and parsed once for
//! all the plugins that get them: fan-out queues an event's deliveries
//! together and the scheduler takes them in event order, so they run close
//! together. Stored events never change, so a kept copy is never stale.

use crate::bindings::types as wit;
use crate::event;
use crate::runtime::{convert, Failure};
use crate::store::Store;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How many prepared events are kept at most…
const KEEP: usize = 512;
/// …and how many bytes of bodies (a prepared event holds its body about
/// twice: as sent and parsed), so that large events cannot make it big.
const KEEP_BYTES: usize = 4 << 20;

pub struct Prepared {
    pub key: String,
    pub received_at: i64,
    /// The body as the gateway sent it.
    pub raw: String,
    pub kind: wit::EventKind,
    pub event: wit::Event,
}

/// The last events prepared (up to [`KEEP`] and [`KEEP_BYTES`]), oldest
/// dropped first.
#[derive(Default)]
pub struct Recent {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_seq: HashMap<i64, Arc<Prepared>>,
    order: VecDeque<i64>,
    bytes: usize,
}

impl Recent {
    /// Event `seq`, kept or read and parsed now.
    pub fn get(&self, store: &Store, seq: i64) -> Result<Arc<Prepared>, Failure> {
        if let Some(p) = self.kept.lock().unwrap().by_seq.get(&seq) {
            return Ok(p.clone());
        }
        let row = match store.event(seq) {
            Ok(Some(row)) => row,
            Ok(None) => return Err(Failure::Reject("event not found".into())),
            Err(e) => return Err(Failure::Retry(format!("store: {e}"))),
        };
        let parsed = event::parse(&row.body)
            .map_err(|e| Failure::Reject(format!("stored event does not parse: {e}")))?;
        let raw = String::from_utf8_lossy(&row.body).into_owned();
        let prepared = Arc::new(Prepared {
            kind: convert::kind(&parsed.event),
            event: convert::event(&parsed.event, &raw),
            key: row.key,
            received_at: row.received_at,
            raw,
        });
        let mut kept = self.kept.lock().unwrap();
        if kept.by_seq.insert(seq, prepared.clone()).is_none() {
            kept.order.push_back(seq);
            kept.bytes += prepared.raw.len();
            while kept.order.len() > KEEP || kept.bytes > KEEP_BYTES {
                let Some(old) = kept.order.pop_front() else {
                    break;
                };
                if let Some(p) = kept.by_seq.remove(&old) {
                    kept.bytes -= p.raw.len();
                }
            }
        }
        Ok(prepared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::{IngestOutcome, NewEvent};

    /// Stores a message with `text` in its body; returns its seq.
    fn store_message(store: &Store, id: &str, text: &str) -> i64 {
        let body = format!(
            r#"{{"event_type":"message_received","id":"{id}","chat_id":"c@c.us","body":"{text}"}}"#
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let stored = rt.block_on(store.ingest(NewEvent {
            tenant: "default".into(),
            key: id.into(),
            event_type: "message_received".into(),
            ordering_key: "c@c.us".into(),
            body: body.into_bytes(),
            received_at: 7,
        }));
        match stored.unwrap() {
            IngestOutcome::Stored { seq } => seq,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_is_read_once_for_its_deliveries_and_the_oldest_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        let seqs: Vec<i64> = (0..KEEP + 2)
            .map(|i| store_message(&store, &format!("m{i}"), &format!("hola {i}")))
            .collect();
        let recent = Recent::default();
        let first = recent.get(&store, seqs[0]).unwrap();
        assert_eq!((first.key.as_str(), first.received_at), ("m0", 7));
        assert_eq!(first.kind, wit::EventKind::MessageReceived);
        assert!(first.raw.contains("hola 0"));
        // The second delivery of the event gets the same copy.
        assert!(Arc::ptr_eq(&first, &recent.get(&store, seqs[0]).unwrap()));
        for seq in &seqs[1..] {
            recent.get(&store, *seq).unwrap();
        }
        // Past KEEP events the first was dropped: read again, a new copy.
        let again = recent.get(&store, seqs[0]).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(again.key, "m0");
        assert!(matches!(
            recent.get(&store, 1_000_000),
            Err(Failure::Reject(_))
        ));
        store.close();
    }

    #[test]
    fn large_events_are_not_kept_past_the_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        let big = "x".repeat(KEEP_BYTES / 2 + 1);
        let a = store_message(&store, "big-a", &big);
        let b = store_message(&store, "big-b", &big);
        let recent = Recent::default();
        let first = recent.get(&store, a).unwrap();
        recent.get(&store, b).unwrap();
        {
            let kept = recent.kept.lock().unwrap();
            assert!(kept.bytes <= KEEP_BYTES, "{}", kept.bytes);
            assert!(!kept.by_seq.contains_key(&a));
            assert!(kept.by_seq.contains_key(&b));
        }
        assert!(!Arc::ptr_eq(&first, &recent.get(&store, a).unwrap()));
        store.close();
    }
}
