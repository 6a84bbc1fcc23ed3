//! Outgoing messages, recorded around the gateway call.
//!
//! A send is written as `sending` (with the inbox position at that moment)
//! before the request leaves and as `sent` once the gateway accepted it. A
//! row still `sending` when a delivery is retried means the outcome is
//! unknown: the process died, or the connection broke after the request
//! left. The gateway announces every message it sends with a
//! `message_sent` event; finding that echo in the inbox (after the
//! recorded position, same chat, same text, not already claimed by another
//! send) confirms the send without sending it again.

use super::{now_ms, Store, StoreError};
use rusqlite::{params, OptionalExtension};

/// What is known about one idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum SendState {
    /// Accepted by the gateway, with its message id when it gave one.
    Sent(Option<String>),
    /// Recorded before sending, never confirmed.
    InDoubt {
        recipient: String,
        text: String,
        watermark: i64,
        started_at: i64,
    },
}

/// A send about to leave.
pub struct NewSend<'a> {
    pub idem_key: &'a str,
    pub tenant: &'a str,
    pub plugin: &'a str,
    pub event_seq: i64,
    pub recipient: &'a str,
    pub text: &'a str,
}

impl Store {
    pub fn send_state(&self, idem_key: &str) -> Result<Option<SendState>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT state, message_id, recipient, coalesce(text, ''), coalesce(watermark, 0), sent_at
                 FROM sends WHERE idem_key = ?1",
            )?
            .query_row([idem_key], |r| {
                let state: String = r.get(0)?;
                Ok(if state == "sending" {
                    SendState::InDoubt {
                        recipient: r.get(2)?,
                        text: r.get(3)?,
                        watermark: r.get(4)?,
                        started_at: r.get(5)?,
                    }
                } else {
                    SendState::Sent(r.get(1)?)
                })
            })
            .optional()?)
        })
    }

    /// Records the intent, committed, before the request leaves.
    pub fn begin_send(&self, s: NewSend) -> Result<(), StoreError> {
        let (key, tenant, plugin, to, text) = (
            s.idem_key.to_string(),
            s.tenant.to_string(),
            s.plugin.to_string(),
            s.recipient.to_string(),
            s.text.to_string(),
        );
        let seq = s.event_seq;
        self.write_blocking(move |c| {
            let watermark: i64 =
                c.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
            c.prepare_cached(
                "INSERT INTO sends (idem_key, tenant, plugin, event_seq, recipient, message_id, sent_at, state, text, watermark)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, 'sending', ?7, ?8)
                 ON CONFLICT (idem_key) DO UPDATE SET state = 'sending', message_id = NULL,
                    sent_at = excluded.sent_at, recipient = excluded.recipient,
                    text = excluded.text, watermark = excluded.watermark",
            )?
            .execute(params![key, tenant, plugin, seq, to, now_ms(), text, watermark])?;
            Ok(())
        })
    }

    /// The gateway accepted the send.
    pub fn confirm_send(
        &self,
        idem_key: &str,
        message_id: Option<String>,
    ) -> Result<(), StoreError> {
        let key = idem_key.to_string();
        self.write_blocking(move |c| {
            c.prepare_cached(
                "UPDATE sends SET state = 'sent', message_id = ?2, sent_at = ?3 WHERE idem_key = ?1",
            )?
            .execute(params![key, message_id, now_ms()])?;
            Ok(())
        })
    }

    /// The gateway refused, or the request never left: nothing was sent.
    pub fn abandon_send(&self, idem_key: &str) -> Result<(), StoreError> {
        let key = idem_key.to_string();
        self.write_blocking(move |c| {
            c.prepare_cached("DELETE FROM sends WHERE idem_key = ?1 AND state = 'sending'")?
                .execute([key])?;
            Ok(())
        })
    }

    /// Looks for the gateway's echo of an in-doubt send and, when found,
    /// claims it. The inbox is scanned on a read connection (bounded, so an
    /// old send cannot hold anything up); the claim is one write
    /// transaction, so two sends never claim the same echo.
    /// `recipient`, `text` and `watermark` are the in-doubt send's, as
    /// [`Store::send_state`] returned them.
    pub fn reconcile_send(
        &self,
        idem_key: &str,
        tenant: &str,
        recipient: &str,
        text: &str,
        watermark: i64,
    ) -> Result<Option<String>, StoreError> {
        let candidates = self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT body FROM events WHERE seq > ?1 AND seq <= ?1 + ?3 AND tenant = ?2
                   AND event_type = 'message_sent' ORDER BY seq",
            )?;
            let mut rows = st.query(params![watermark, tenant, ECHO_SCAN])?;
            let mut ids = Vec::new();
            while let Some(row) = rows.next()? {
                let body: Vec<u8> = row.get(0)?;
                ids.extend(echo_of(&body, recipient, text));
            }
            Ok(ids)
        })?;
        if candidates.is_empty() {
            return Ok(None);
        }
        let (key, tenant) = (idem_key.to_string(), tenant.to_string());
        self.write_blocking(move |c| {
            let mut claimed =
                c.prepare_cached("SELECT 1 FROM sends WHERE tenant = ?1 AND message_id = ?2")?;
            for id in candidates {
                if claimed.exists(params![tenant, id])? {
                    continue;
                }
                let n = c
                    .prepare_cached(
                        "UPDATE sends SET state = 'sent', message_id = ?2, sent_at = ?3
                         WHERE idem_key = ?1 AND state = 'sending'",
                    )?
                    .execute(params![key, id, now_ms()])?;
                return Ok((n == 1).then_some(id));
            }
            Ok(None)
        })
    }
}

/// Events after a send's position searched for its echo.
const ECHO_SCAN: i64 = 200_000;

/// The echo's message id when `body` is a `message_sent` event of `text`
/// to `to`.
fn echo_of(body: &[u8], to: &str, text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("body")?.as_str()? != text {
        return None;
    }
    let chat = ["chat_id", "to"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(|x| x.as_str()))
        .any(|c| same_chat(c, to));
    if !chat {
        return None;
    }
    match v.get("id")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `573001112233`, `+573001112233` and `573001112233@c.us` name one chat.
fn same_chat(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> &str {
        let s = s.trim().trim_start_matches('+');
        s.split('@').next().unwrap_or(s)
    }
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_matches_chat_and_text() {
        let body = br#"{"event_type":"message_sent","id":"W1","chat_id":"573001112233@c.us","body":"hola"}"#;
        assert_eq!(echo_of(body, "573001112233", "hola").as_deref(), Some("W1"));
        assert_eq!(
            echo_of(body, "+573001112233@c.us", "hola").as_deref(),
            Some("W1")
        );
        assert_eq!(echo_of(body, "573001112234", "hola"), None);
        assert_eq!(echo_of(body, "573001112233", "hola!"), None);
        assert_eq!(echo_of(b"not json", "573001112233", "hola"), None);
    }
}
