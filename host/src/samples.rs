//! The five sample events of the gateway's documentation, used by
//! `hookhost send` and by the tests.

pub const NAMES: &[&str] = &[
    "message_received",
    "message_sent",
    "ack_update",
    "message_reaction",
    "test_webhook",
];

pub fn get(name: &str) -> Option<&'static str> {
    Some(match name {
        "message_received" => MESSAGE_RECEIVED,
        "message_sent" => MESSAGE_SENT,
        "ack_update" => ACK_UPDATE,
        "message_reaction" => MESSAGE_REACTION,
        "test_webhook" => TEST_WEBHOOK,
        _ => return None,
    })
}

pub const MESSAGE_RECEIVED: &str = r#"{
  "event_type":"message_received",
  "id":"ABCD1234",
  "instance_id":"123",
  "chat_id":"573001112233@c.us",
  "from":"573001112233@c.us",
  "to":"573009998877@c.us",
  "from_me":0,
  "sender_name":"Juan Pérez",
  "body":"Hola, ¿tienen menú?",
  "type":"text",
  "timestamp":1724716800,
  "is_group":0,
  "quoted_message_id":null,
  "reaction":null,
  "media_url":null,
  "latitude":null,
  "longitude":null,
  "vcard":null,
  "status":"received",
  "ack":"pending",
  "group_sender":null
}"#;

pub const MESSAGE_SENT: &str = r#"{
  "event_type":"message_sent",
  "id":"WXYZ5678",
  "instance_id":"123",
  "chat_id":"573001112233@c.us",
  "from":"573009998877@c.us",
  "to":"573001112233@c.us",
  "body":"¡Hola! Te comparto el menú 👇",
  "type":"text",
  "timestamp":1724716890,
  "is_group":0,
  "media_url":null,
  "latitude":null,
  "longitude":null,
  "vcard":null,
  "status":"sent",
  "group_sender":null
}"#;

pub const ACK_UPDATE: &str = r#"{
  "event_type":"ack_update",
  "id":"WXYZ5678",
  "ack":"delivered"
}"#;

pub const MESSAGE_REACTION: &str = r#"{
  "event_type":"message_reaction",
  "instance_id":"123",
  "message_id":"WXYZ5678",
  "from_number":"573001112233@c.us",
  "reaction":"👍",
  "timestamp":1724717000
}"#;

pub const TEST_WEBHOOK: &str = r#"{
  "event_type":"test_webhook",
  "instance_id":"123",
  "timestamp":1724717100,
  "message":"This is a test webhook message from WhApi.co"
}"#;

/// A sample (or any event body) made into another event: `id` replaces
/// its message id (and its timestamp becomes now, so it is not a
/// duplicate), `body` its text. Fields the event does not have stay absent.
pub fn vary(v: &mut serde_json::Value, id: Option<&str>, body: Option<&str>) {
    if let Some(id) = id {
        for k in ["id", "message_id"] {
            if v.get(k).is_some() {
                v[k] = id.into();
            }
        }
        if v.get("timestamp").is_some() {
            v["timestamp"] = (crate::store::now_ms() / 1000).into();
        }
    }
    if let (Some(b), Some(_)) = (body, v.get("body")) {
        v["body"] = b.into();
    }
}
