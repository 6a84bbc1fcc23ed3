//! Logs one line per event, like the gateway's reference receivers:
//! direction, from → to, type and body; ack changes; reactions; test pings;
//! unknown event types.

use hookhost_sdk::prelude::*;

struct Logger;

impl Plugin for Logger {
    fn on_message(m: &Message, _: &Context) -> Result {
        log::info(
            &format!(
                "📥 In: {} -> {} | {} | {}",
                m.sender,
                m.recipient,
                m.message_type.as_str(),
                m.body
            ),
            &[
                ("id", &m.id),
                ("chat", &m.chat_id),
                ("type", m.message_type.as_str()),
            ],
        );
        Ok(())
    }

    fn on_message_sent(m: &Message, _: &Context) -> Result {
        let status = m.status.as_deref().unwrap_or("");
        log::info(
            &format!(
                "📤 Out: {} | {} | {}",
                m.recipient,
                m.message_type.as_str(),
                status
            ),
            &[("id", &m.id), ("chat", &m.chat_id), ("status", status)],
        );
        Ok(())
    }

    fn on_ack(a: &AckUpdate, _: &Context) -> Result {
        log::info(
            &format!("✅ ACK: {} -> {}", a.id, a.ack.as_str()),
            &[("id", &a.id), ("ack", a.ack.as_str())],
        );
        Ok(())
    }

    fn on_reaction(r: &Reaction, _: &Context) -> Result {
        log::info(
            &format!(
                "😍 Reaction: {} {} by {}",
                r.message_id, r.reaction, r.from_number
            ),
            &[("message_id", &r.message_id), ("from", &r.from_number)],
        );
        Ok(())
    }

    fn on_test(t: &TestPing, _: &Context) -> Result {
        log::info(&format!("🧪 Test: {}", t.message), &[]);
        Ok(())
    }

    fn on_unknown(u: &UnknownEvent, _: &Context) -> Result {
        log::info(
            &format!("ℹ️ Unknown event: {}", u.event_type),
            &[("event_type", &u.event_type)],
        );
        Ok(())
    }
}

export_plugin!(Logger);
