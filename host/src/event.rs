//! Typed gateway events, their idempotency keys and ordering keys.
//!
//! Parsing is strict about types (a field that is present has the spec's
//! type) and lenient about presence (only the fields a key needs are
//! required). Unknown event types are kept as raw JSON.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body must be a JSON object")]
    NotObject,
    #[error("missing or invalid `event_type`")]
    EventType,
    #[error("invalid `{event_type}` event: {message}")]
    Invalid { event_type: String, message: String },
}

/// A message as received or sent (`message_received`, `message_sent`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Message {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    #[serde(default, deserialize_with = "opt_id_string")]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub chat_id: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default, deserialize_with = "opt_flag")]
    pub from_me: Option<bool>,
    #[serde(default)]
    pub sender_name: Option<String>,
    #[serde(default, deserialize_with = "nullable_string")]
    pub body: String,
    #[serde(default, rename = "type")]
    pub message_type: Option<String>,
    #[serde(default, deserialize_with = "opt_timestamp")]
    pub timestamp: Option<i64>,
    #[serde(default, deserialize_with = "opt_flag")]
    pub is_group: Option<bool>,
    #[serde(default, deserialize_with = "opt_id_string")]
    pub quoted_message_id: Option<String>,
    #[serde(default)]
    pub reaction: Option<String>,
    #[serde(default)]
    pub media_url: Option<String>,
    #[serde(default)]
    pub latitude: Option<f64>,
    #[serde(default)]
    pub longitude: Option<f64>,
    #[serde(default)]
    pub vcard: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub ack: Option<String>,
    #[serde(default)]
    pub group_sender: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct AckUpdate {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub ack: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Reaction {
    #[serde(default, deserialize_with = "opt_id_string")]
    pub instance_id: Option<String>,
    #[serde(deserialize_with = "id_string")]
    pub message_id: String,
    pub from_number: String,
    pub reaction: String,
    #[serde(deserialize_with = "timestamp")]
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TestPing {
    #[serde(default, deserialize_with = "opt_id_string")]
    pub instance_id: Option<String>,
    #[serde(deserialize_with = "timestamp")]
    pub timestamp: i64,
    #[serde(default, deserialize_with = "nullable_string")]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    MessageReceived(Message),
    MessageSent(Message),
    AckUpdate(AckUpdate),
    MessageReaction(Reaction),
    TestWebhook(TestPing),
    Unknown { event_type: String },
}

/// A parsed body with the keys the store needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub event: Event,
    /// Idempotency key, unique per tenant.
    pub key: String,
    /// Events with the same ordering key reach a plugin in arrival order.
    pub ordering_key: String,
}

impl Event {
    pub fn event_type(&self) -> &str {
        match self {
            Event::Unknown { event_type } => event_type,
            known => known.type_label(),
        }
    }

    /// The type as a metric label: an unknown type is `other`, so that
    /// senders cannot add series (and memory) with invented type names.
    pub fn type_label(&self) -> &'static str {
        match self {
            Event::MessageReceived(_) => "message_received",
            Event::MessageSent(_) => "message_sent",
            Event::AckUpdate(_) => "ack_update",
            Event::MessageReaction(_) => "message_reaction",
            Event::TestWebhook(_) => "test_webhook",
            Event::Unknown { .. } => "other",
        }
    }
}

/// Parses a raw body. Duplicate object keys are refused: two readers of the
/// same body must never see two different events.
pub fn parse(body: &[u8]) -> Result<Parsed, ParseError> {
    use crate::json_strict::{check, Scalar};
    // One pass checks the whole body and reads the top-level fields the
    // keys need; known types are then read straight into their structs.
    // JSON text is UTF-8 (RFC 8259): checked here once for the whole body,
    // both passes below then read it as text.
    let body = std::str::from_utf8(body)
        .map_err(|e| ParseError::Json(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let top = check(body, ["event_type", "id", "chat_id"])
        .map_err(|e| ParseError::Json(e.to_string()))?;
    if !top.is_object {
        return Err(ParseError::NotObject);
    }
    let [event_type, id, chat_id] = top.fields;
    let event_type = match event_type {
        Some(Scalar::Str(s)) if !s.is_empty() && s.len() <= 128 => s.into_owned(),
        _ => return Err(ParseError::EventType),
    };
    let invalid = |e: serde_json::Error| ParseError::Invalid {
        event_type: event_type.clone(),
        message: e.to_string(),
    };
    let parsed = match event_type.as_str() {
        "message_received" | "message_sent" => {
            let m: Message = serde_json::from_str(body).map_err(invalid)?;
            require_nonempty(&event_type, "id", &m.id)?;
            let key = key(&event_type, &(&m.id,));
            let ordering_key = if m.chat_id.is_empty() {
                format!("chat:{}", m.from)
            } else {
                format!("chat:{}", m.chat_id)
            };
            let event = if event_type == "message_received" {
                Event::MessageReceived(m)
            } else {
                Event::MessageSent(m)
            };
            Parsed {
                event,
                key,
                ordering_key,
            }
        }
        "ack_update" => {
            let a: AckUpdate = serde_json::from_str(body).map_err(invalid)?;
            require_nonempty(&event_type, "id", &a.id)?;
            require_nonempty(&event_type, "ack", &a.ack)?;
            Parsed {
                key: key(&event_type, &(&a.id, &a.ack)),
                ordering_key: format!("msg:{}", a.id),
                event: Event::AckUpdate(a),
            }
        }
        "message_reaction" => {
            let r: Reaction = serde_json::from_str(body).map_err(invalid)?;
            require_nonempty(&event_type, "message_id", &r.message_id)?;
            require_nonempty(&event_type, "from_number", &r.from_number)?;
            Parsed {
                key: key(
                    &event_type,
                    &(&r.message_id, &r.from_number, &r.reaction, r.timestamp),
                ),
                ordering_key: format!("msg:{}", r.message_id),
                event: Event::MessageReaction(r),
            }
        }
        "test_webhook" => {
            let t: TestPing = serde_json::from_str(body).map_err(invalid)?;
            Parsed {
                key: key(&event_type, &(&t.instance_id, t.timestamp)),
                ordering_key: "test".to_string(),
                event: Event::TestWebhook(t),
            }
        }
        _ => {
            // Unknown types: an `id` when there is one, else the body itself.
            let key = match id {
                Some(Scalar::Str(s)) if !s.is_empty() => key(&event_type, &("id", &s)),
                Some(Scalar::Num(n)) => key(&event_type, &("id", n.to_string())),
                _ => key(
                    &event_type,
                    &("sha256", hex::encode(Sha256::digest(body.as_bytes()))),
                ),
            };
            let ordering_key = match chat_id {
                Some(Scalar::Str(c)) => format!("chat:{c}"),
                _ => format!("key:{key}"),
            };
            Parsed {
                event: Event::Unknown {
                    event_type: event_type.clone(),
                },
                key,
                ordering_key,
            }
        }
    };
    Ok(parsed)
}

/// An idempotency key: the event type, `:` and the parts as a compact
/// JSON array (`message_received:["ABCD1234"]`). The format is stored:
/// it must not change.
fn key(event_type: &str, parts: &impl Serialize) -> String {
    let mut out = Vec::with_capacity(event_type.len() + 64);
    out.extend_from_slice(event_type.as_bytes());
    out.push(b':');
    // Strings and integers always serialize.
    serde_json::to_writer(&mut out, parts).expect("key parts serialize");
    String::from_utf8(out).expect("JSON is UTF-8")
}

fn require_nonempty(et: &str, field: &str, v: &str) -> Result<(), ParseError> {
    if v.is_empty() {
        Err(ParseError::Invalid {
            event_type: et.to_string(),
            message: format!("`{field}` must not be empty"),
        })
    } else {
        Ok(())
    }
}

// --- field deserializers for the spec's loose types -------------------------

/// A field's value as the gateway may write it. It is read once and then
/// judged, rather than tried against one type after another (each failed
/// try builds an error, which costs more than the parse).
enum Loose {
    Null,
    Bool(bool),
    I(i64),
    U(u64),
    F(f64),
    S(String),
}

struct LooseVisitor;

impl<'de> de::Visitor<'de> for LooseVisitor {
    type Value = Loose;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null, a boolean, a number or a string")
    }
    fn visit_unit<E>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Loose, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Loose, E> {
        Ok(Loose::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
        Ok(Loose::I(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
        Ok(Loose::U(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Loose, E> {
        Ok(Loose::F(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
        Ok(Loose::S(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Loose, E> {
        Ok(Loose::S(v))
    }
}

/// Reads a loose value; arrays, objects and malformed input are `Err(msg)`.
fn loose<'de, D: Deserializer<'de>>(d: D, msg: &'static str) -> Result<Loose, D::Error> {
    d.deserialize_any(LooseVisitor)
        .map_err(|_| de::Error::custom(msg))
}

fn id_of(v: Loose) -> Option<String> {
    match v {
        Loose::S(s) => Some(s),
        Loose::I(i) => Some(i.to_string()),
        Loose::U(u) => Some(u.to_string()),
        _ => None,
    }
}

fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    const MSG: &str = "expected a string or an integer";
    id_of(loose(d, MSG)?).ok_or_else(|| de::Error::custom(MSG))
}

fn opt_id_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    const MSG: &str = "expected a string, an integer or null";
    match loose(d, MSG)? {
        Loose::Null => Ok(None),
        v => id_of(v).map(Some).ok_or_else(|| de::Error::custom(MSG)),
    }
}

fn nullable_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

fn opt_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    const MSG: &str = "expected 0, 1, true, false or null";
    match loose(d, MSG)? {
        Loose::Null => Ok(None),
        Loose::Bool(b) => Ok(Some(b)),
        Loose::U(0) => Ok(Some(false)),
        Loose::U(1) => Ok(Some(true)),
        Loose::I(_) => Err(de::Error::custom("expected 0 or 1")),
        Loose::U(u) if u <= i64::MAX as u64 => Err(de::Error::custom("expected 0 or 1")),
        _ => Err(de::Error::custom(MSG)),
    }
}

/// Seconds since the epoch, `None` for anything but a number.
fn ts_of<E: de::Error>(v: Loose) -> Option<Result<i64, E>> {
    let f = match v {
        Loose::I(i) => return Some(Ok(i)),
        Loose::U(u) => match i64::try_from(u) {
            Ok(i) => return Some(Ok(i)),
            Err(_) => u as f64,
        },
        Loose::F(f) => f,
        _ => return None,
    };
    // Some senders write seconds with a fraction; keys use whole seconds.
    Some(if f.is_finite() && f.abs() < 1e15 {
        Ok(f.trunc() as i64)
    } else {
        Err(E::custom("timestamp out of range"))
    })
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    const MSG: &str = "timestamp must be a number";
    ts_of(loose(d, MSG)?).unwrap_or_else(|| Err(de::Error::custom(MSG)))
}

fn opt_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    const MSG: &str = "timestamp must be a number or null";
    match loose(d, MSG)? {
        Loose::Null => Ok(None),
        v => ts_of(v)
            .map(|r| r.map(Some))
            .unwrap_or_else(|| Err(de::Error::custom(MSG))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples;

    #[test]
    fn parses_every_sample_with_all_fields() {
        let p = parse(samples::get("message_received").unwrap().as_bytes()).unwrap();
        let Event::MessageReceived(m) = &p.event else {
            panic!("{p:?}")
        };
        assert_eq!(m.id, "ABCD1234");
        assert_eq!(m.instance_id.as_deref(), Some("123"));
        assert_eq!(m.chat_id, "573001112233@c.us");
        assert_eq!(m.from_me, Some(false));
        assert_eq!(m.sender_name.as_deref(), Some("Juan Pérez"));
        assert_eq!(m.body, "Hola, ¿tienen menú?");
        assert_eq!(m.message_type.as_deref(), Some("text"));
        assert_eq!(m.timestamp, Some(1724716800));
        assert_eq!(m.is_group, Some(false));
        assert_eq!(m.status.as_deref(), Some("received"));
        assert_eq!(m.ack.as_deref(), Some("pending"));
        assert_eq!(p.key, r#"message_received:["ABCD1234"]"#);
        assert_eq!(p.ordering_key, "chat:573001112233@c.us");

        for name in samples::NAMES {
            let p = parse(samples::get(name).unwrap().as_bytes()).unwrap();
            assert_eq!(p.event.event_type(), *name);
        }
    }

    #[test]
    fn loose_types() {
        let p = parse(br#"{"event_type":"message_received","id":42,"instance_id":123,"from_me":true,"is_group":1,"timestamp":1.5e9}"#).unwrap();
        let Event::MessageReceived(m) = p.event else {
            panic!()
        };
        assert_eq!(m.id, "42");
        assert_eq!(m.instance_id.as_deref(), Some("123"));
        assert_eq!(m.from_me, Some(true));
        assert_eq!(m.is_group, Some(true));
        assert_eq!(m.timestamp, Some(1_500_000_000));
    }

    #[test]
    fn wrong_types_are_refused() {
        for body in [
            r#"{"event_type":"message_received","id":"a","from_me":2}"#,
            r#"{"event_type":"message_received","id":"a","from_me":"0"}"#,
            r#"{"event_type":"message_received","id":"a","timestamp":"now"}"#,
            r#"{"event_type":"message_received","id":"a","body":5}"#,
            r#"{"event_type":"message_received","id":["a"]}"#,
            r#"{"event_type":"message_received","id":"a","latitude":"north"}"#,
            r#"{"event_type":"ack_update","id":"a","ack":1}"#,
            r#"{"event_type":"message_reaction","message_id":"m","from_number":"f","reaction":"x","timestamp":null}"#,
        ] {
            assert!(
                matches!(parse(body.as_bytes()), Err(ParseError::Invalid { .. })),
                "{body}"
            );
        }
    }

    #[test]
    fn missing_key_fields() {
        for body in [
            r#"{"event_type":"message_received"}"#,
            r#"{"event_type":"message_received","id":""}"#,
            r#"{"event_type":"ack_update","id":"x"}"#,
            r#"{"event_type":"message_reaction","message_id":"m"}"#,
            r#"{"event_type":"test_webhook"}"#,
        ] {
            assert!(
                matches!(parse(body.as_bytes()), Err(ParseError::Invalid { .. })),
                "{body}"
            );
        }
        assert_eq!(parse(b"{}"), Err(ParseError::EventType));
        assert_eq!(parse(br#"{"event_type":7}"#), Err(ParseError::EventType));
        assert_eq!(parse(b"[1]"), Err(ParseError::NotObject));
        assert!(matches!(parse(b"{\"a\":"), Err(ParseError::Json(_))));
        assert!(matches!(parse(b"{} {}"), Err(ParseError::Json(_))));
        assert!(matches!(parse(b"\xff\xfe"), Err(ParseError::Json(_))));
    }

    #[test]
    fn keys_keep_real_events_apart() {
        let k = |b: &str| parse(b.as_bytes()).unwrap().key;
        assert_ne!(
            k(r#"{"event_type":"ack_update","id":"m1","ack":"delivered"}"#),
            k(r#"{"event_type":"ack_update","id":"m1","ack":"read"}"#)
        );
        let r = |from: &str, emoji: &str, ts: i64| {
            k(&serde_json::json!({"event_type":"message_reaction","message_id":"m","from_number":from,"reaction":emoji,"timestamp":ts}).to_string())
        };
        assert_ne!(r("a", "👍", 1), r("b", "👍", 1));
        assert_ne!(r("a", "👍", 1), r("a", "❤️", 1));
        assert_ne!(r("a", "👍", 1), r("a", "👍", 2));
        assert_eq!(r("a", "👍", 1), r("a", "👍", 1));
        // Separators inside values cannot forge another key.
        assert_ne!(r("a\",\"b", "x", 1), r("a", "b\",\"x", 1));
    }

    #[test]
    fn duplicate_object_keys_are_refused() {
        let e = parse(br#"{"event_type":"ack_update","id":"a","id":"b","ack":"read"}"#);
        assert!(matches!(e, Err(ParseError::Json(_))), "{e:?}");
    }

    #[test]
    fn bodies_that_are_not_utf8_are_refused_where_the_bytes_go_wrong() {
        // In a string, and outside one.
        let e = parse(b"{\"event_type\":\"ack_update\",\"id\":\"\xff\",\"ack\":\"read\"}");
        assert_eq!(e, Err(ParseError::Json("invalid UTF-8 at byte 33".into())));
        assert!(matches!(parse(b"\xef\xbb\xbf{}"), Err(ParseError::Json(_))));
        // Escaped non-ASCII text is read as before.
        let p = parse(r#"{"event_type":"ack_update","id":"caf\u00e9","ack":"read"}"#.as_bytes());
        assert_eq!(p.unwrap().key, "ack_update:[\"café\",\"read\"]");
    }

    #[test]
    fn unknown_types_are_kept() {
        let p = parse(br#"{"event_type":"presence","who":"x"}"#).unwrap();
        assert_eq!(
            p.event,
            Event::Unknown {
                event_type: "presence".into()
            }
        );
        assert!(p.key.starts_with("presence:[\"sha256\""));
        let p2 = parse(br#"{"event_type":"presence","id":"7"}"#).unwrap();
        assert_eq!(p2.key, r#"presence:["id","7"]"#);
    }

    /// Keys are stored: each type's key must read exactly as the releases
    /// before wrote it (the parts as a `serde_json::Value` array, shown).
    #[test]
    fn keys_keep_their_stored_format() {
        use serde_json::json;
        let cases: [(&str, serde_json::Value); 8] = [
            (
                r#"{"event_type":"message_received","id":"A\"B\\é\u0001"}"#,
                json!(["A\"B\\é\u{1}"]),
            ),
            (r#"{"event_type":"message_sent","id":42}"#, json!(["42"])),
            (
                r#"{"event_type":"ack_update","id":"m1","ack":"read"}"#,
                json!(["m1", "read"]),
            ),
            (
                r#"{"event_type":"message_reaction","message_id":"m","from_number":"5","reaction":"👍","timestamp":-7}"#,
                json!(["m", "5", "👍", -7]),
            ),
            (
                r#"{"event_type":"test_webhook","timestamp":1700000000}"#,
                json!([null, 1700000000]),
            ),
            (
                r#"{"event_type":"test_webhook","instance_id":"i-1","timestamp":1}"#,
                json!(["i-1", 1]),
            ),
            (
                r#"{"event_type":"presence","id":"x/y"}"#,
                json!(["id", "x/y"]),
            ),
            (
                r#"{"event_type":"presence","id":1.5}"#,
                json!(["id", "1.5"]),
            ),
        ];
        for (body, parts) in cases {
            let p = parse(body.as_bytes()).unwrap();
            let t = p.event.event_type().to_string();
            assert_eq!(p.key, format!("{t}:{parts}"), "{body}");
        }
        let body = br#"{"event_type":"presence"}"#;
        assert_eq!(
            parse(body).unwrap().key,
            format!(
                "presence:{}",
                json!(["sha256", hex::encode(Sha256::digest(body))])
            )
        );
    }
}
