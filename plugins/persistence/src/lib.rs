//! Persists every event: `messages` (received and sent, every field, ack
//! state that never moves backwards) and `message_reactions` (one per
//! message and person, replaced by newer ones). Every write is an upsert, so
//! a retried delivery changes nothing.

use hookhost_sdk::prelude::*;
use hookhost_sdk::sql::Value;

struct Persistence;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS messages (
        id TEXT PRIMARY KEY,
        direction TEXT,
        instance_id TEXT,
        chat_id TEXT,
        from_number TEXT,
        to_number TEXT,
        from_me INTEGER,
        sender_name TEXT,
        body TEXT,
        type TEXT,
        timestamp INTEGER,
        is_group INTEGER,
        quoted_message_id TEXT,
        reaction TEXT,
        media_url TEXT,
        latitude REAL,
        longitude REAL,
        vcard TEXT,
        status TEXT,
        ack TEXT,
        ack_rank INTEGER NOT NULL DEFAULT 0,
        group_sender TEXT
    )",
    "CREATE TABLE IF NOT EXISTS message_reactions (
        message_id TEXT NOT NULL,
        from_number TEXT NOT NULL,
        reaction TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        instance_id TEXT,
        PRIMARY KEY (message_id, from_number)
    )",
];

fn schema() -> Result {
    for s in SCHEMA {
        sql::execute(s, &[])?;
    }
    Ok(())
}

fn save_message(m: &Message, direction: &str) -> Result {
    schema()?;
    let ack = m.ack.clone().unwrap_or(if direction == "out" {
        AckState::Sent
    } else {
        AckState::Pending
    });
    sql::execute(
        "INSERT INTO messages (id, direction, instance_id, chat_id, from_number, to_number, from_me, sender_name,
            body, type, timestamp, is_group, quoted_message_id, reaction, media_url, latitude, longitude, vcard,
            status, ack, ack_rank, group_sender)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)
         ON CONFLICT (id) DO UPDATE SET
            direction = excluded.direction, instance_id = excluded.instance_id, chat_id = excluded.chat_id,
            from_number = excluded.from_number, to_number = excluded.to_number, from_me = excluded.from_me,
            sender_name = excluded.sender_name, body = excluded.body, type = excluded.type,
            timestamp = excluded.timestamp, is_group = excluded.is_group,
            quoted_message_id = excluded.quoted_message_id, reaction = excluded.reaction,
            media_url = excluded.media_url, latitude = excluded.latitude, longitude = excluded.longitude,
            vcard = excluded.vcard, status = excluded.status, group_sender = excluded.group_sender,
            ack = CASE WHEN excluded.ack_rank > messages.ack_rank THEN excluded.ack ELSE messages.ack END,
            ack_rank = max(excluded.ack_rank, messages.ack_rank)",
        &[
            Value::from(&m.id),
            Value::from(direction),
            Value::from(m.instance_id.clone()),
            Value::from(&m.chat_id),
            Value::from(&m.sender),
            Value::from(&m.recipient),
            Value::from(m.from_me),
            Value::from(m.sender_name.clone()),
            Value::from(&m.body),
            Value::from(m.message_type.as_str()),
            Value::from(m.timestamp),
            Value::from(m.is_group),
            Value::from(m.quoted_message_id.clone()),
            Value::from(m.reaction.clone()),
            Value::from(m.media_url.clone()),
            Value::from(m.latitude),
            Value::from(m.longitude),
            Value::from(m.vcard.clone()),
            Value::from(m.status.clone()),
            Value::from(ack.as_str()),
            Value::Integer(ack.rank() as i64),
            Value::from(m.group_sender.clone()),
        ],
    )?;
    Ok(())
}

impl Plugin for Persistence {
    fn on_message(m: &Message, _: &Context) -> Result {
        save_message(m, "in")
    }

    fn on_message_sent(m: &Message, _: &Context) -> Result {
        save_message(m, "out")
    }

    /// An ack may arrive before its message: the row is created with the id
    /// alone and filled in when the message comes.
    fn on_ack(a: &AckUpdate, _: &Context) -> Result {
        schema()?;
        sql::execute(
            "INSERT INTO messages (id, ack, ack_rank) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET ack = excluded.ack, ack_rank = excluded.ack_rank
             WHERE excluded.ack_rank > messages.ack_rank",
            &[
                Value::from(&a.id),
                Value::from(a.ack.as_str()),
                Value::Integer(a.ack.rank() as i64),
            ],
        )?;
        Ok(())
    }

    /// One reaction per person and message; an empty emoji removes it.
    fn on_reaction(r: &Reaction, _: &Context) -> Result {
        schema()?;
        if r.reaction.is_empty() {
            sql::execute(
                "DELETE FROM message_reactions WHERE message_id = ?1 AND from_number = ?2 AND timestamp <= ?3",
                &[Value::from(&r.message_id), Value::from(&r.from_number), Value::from(r.timestamp)],
            )?;
            return Ok(());
        }
        sql::execute(
            "INSERT INTO message_reactions (message_id, from_number, reaction, timestamp, instance_id)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (message_id, from_number) DO UPDATE SET
                reaction = excluded.reaction, timestamp = excluded.timestamp, instance_id = excluded.instance_id
             WHERE excluded.timestamp >= message_reactions.timestamp",
            &[
                Value::from(&r.message_id),
                Value::from(&r.from_number),
                Value::from(&r.reaction),
                Value::from(r.timestamp),
                Value::from(r.instance_id.clone()),
            ],
        )?;
        Ok(())
    }
}

export_plugin!(Persistence);
