//! From the receiver's typed events to the WIT types.

use crate::bindings::types as wit;
use crate::event::{Event, Message};

fn message_type(t: Option<&str>) -> wit::MessageType {
    use wit::MessageType as M;
    match t.unwrap_or("text") {
        "text" => M::Text,
        "image" => M::Image,
        "video" => M::Video,
        "audio" => M::Audio,
        "document" => M::Document,
        "sticker" => M::Sticker,
        "location" => M::Location,
        "vcard" => M::Vcard,
        other => M::Other(other.to_string()),
    }
}

pub fn ack_state(a: &str) -> wit::AckState {
    use wit::AckState as A;
    match a {
        "pending" => A::Pending,
        "sent" => A::Sent,
        "delivered" => A::Delivered,
        "read" => A::Read,
        other => A::Other(other.to_string()),
    }
}

fn message(m: &Message, sent: bool) -> wit::Message {
    wit::Message {
        id: m.id.clone(),
        instance_id: m.instance_id.clone(),
        chat_id: m.chat_id.clone(),
        sender: m.from.clone(),
        recipient: m.to.clone(),
        // `message_sent` payloads leave out `from_me`: they are ours.
        from_me: m.from_me.unwrap_or(sent),
        sender_name: m.sender_name.clone(),
        body: m.body.clone(),
        message_type: message_type(m.message_type.as_deref()),
        timestamp: m.timestamp.unwrap_or(0),
        is_group: m.is_group.unwrap_or(m.chat_id.ends_with("@g.us")),
        quoted_message_id: m.quoted_message_id.clone(),
        reaction: m.reaction.clone(),
        media_url: m.media_url.clone(),
        latitude: m.latitude,
        longitude: m.longitude,
        vcard: m.vcard.clone(),
        status: m.status.clone(),
        ack: m.ack.as_deref().map(ack_state),
        group_sender: m.group_sender.clone(),
    }
}

pub fn event(e: &Event, raw: &str) -> wit::Event {
    match e {
        Event::MessageReceived(m) => wit::Event::MessageReceived(message(m, false)),
        Event::MessageSent(m) => wit::Event::MessageSent(message(m, true)),
        Event::AckUpdate(a) => wit::Event::AckUpdate(wit::AckUpdate {
            id: a.id.clone(),
            ack: ack_state(&a.ack),
        }),
        Event::MessageReaction(r) => wit::Event::MessageReaction(wit::Reaction {
            instance_id: r.instance_id.clone(),
            message_id: r.message_id.clone(),
            from_number: r.from_number.clone(),
            reaction: r.reaction.clone(),
            timestamp: r.timestamp,
        }),
        Event::TestWebhook(t) => wit::Event::TestWebhook(wit::TestPing {
            instance_id: t.instance_id.clone(),
            timestamp: t.timestamp,
            message: t.message.clone(),
        }),
        Event::Unknown { event_type } => wit::Event::Unknown(wit::UnknownEvent {
            event_type: event_type.clone(),
            raw_json: raw.to_string(),
        }),
    }
}

pub fn kind(e: &Event) -> wit::EventKind {
    match e {
        Event::MessageReceived(_) => wit::EventKind::MessageReceived,
        Event::MessageSent(_) => wit::EventKind::MessageSent,
        Event::AckUpdate(_) => wit::EventKind::AckUpdate,
        Event::MessageReaction(_) => wit::EventKind::MessageReaction,
        Event::TestWebhook(_) => wit::EventKind::TestWebhook,
        Event::Unknown { .. } => wit::EventKind::Unknown,
    }
}

/// The kind of a stored event from its `event_type` column.
pub fn kind_of_type(event_type: &str) -> wit::EventKind {
    match event_type {
        "message_received" => wit::EventKind::MessageReceived,
        "message_sent" => wit::EventKind::MessageSent,
        "ack_update" => wit::EventKind::AckUpdate,
        "message_reaction" => wit::EventKind::MessageReaction,
        "test_webhook" => wit::EventKind::TestWebhook,
        _ => wit::EventKind::Unknown,
    }
}

pub fn kind_name(k: wit::EventKind) -> &'static str {
    match k {
        wit::EventKind::MessageReceived => "message_received",
        wit::EventKind::MessageSent => "message_sent",
        wit::EventKind::AckUpdate => "ack_update",
        wit::EventKind::MessageReaction => "message_reaction",
        wit::EventKind::TestWebhook => "test_webhook",
        wit::EventKind::Unknown => "unknown",
    }
}
