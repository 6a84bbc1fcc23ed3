//! Answers incoming text messages with rules from its settings:
//! keyword → reply (case- and accent-insensitive, whole words), a greeting
//! the first time a chat writes (remembered in kv), an away message outside
//! business hours. Never answers its own messages, sent-message events or
//! (unless allowed) groups; at most `max_replies` per chat per period.
//!
//! Every decision depends only on the event and stored state keyed by the
//! event, so a retried delivery makes the same sends, which the host does
//! not repeat.

use hookhost_sdk::prelude::*;
use serde::Deserialize;

struct AutoReply;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Settings {
    rules: Vec<Rule>,
    greeting: Option<String>,
    away_message: Option<String>,
    business_hours: Option<Hours>,
    #[serde(default = "yes")]
    quote: bool,
    reply_to_groups: bool,
    #[serde(default = "three")]
    max_replies: usize,
    #[serde(default = "hour")]
    period_minutes: i64,
}

fn yes() -> bool {
    true
}
fn three() -> usize {
    3
}
fn hour() -> i64 {
    60
}

#[derive(Deserialize)]
struct Rule {
    keywords: Vec<String>,
    reply: String,
}

#[derive(Deserialize)]
struct Hours {
    /// "mon".."sun"; default Monday to Friday.
    #[serde(default = "weekdays")]
    days: Vec<String>,
    /// "HH:MM", local time.
    open: String,
    close: String,
    /// Offset of local time from UTC, "+HH:MM" or "-HH:MM", for places
    /// without daylight-saving time.
    #[serde(default)]
    utc_offset: String,
    /// An IANA time zone ("Europe/Madrid", "America/Mexico_City"): local
    /// time follows its daylight-saving changes. Takes precedence over
    /// `utc_offset`.
    #[serde(default)]
    time_zone: Option<String>,
}

fn weekdays() -> Vec<String> {
    ["mon", "tue", "wed", "thu", "fri"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Lowercase without accents: "Menú" and "MENU" compare equal.
pub fn fold(s: &str) -> String {
    s.chars()
        .flat_map(|c| c.to_lowercase())
        .map(|c| match c {
            'á' | 'à' | 'ä' | 'â' | 'ã' | 'å' | 'ā' => 'a',
            'é' | 'è' | 'ë' | 'ê' | 'ē' | 'ę' => 'e',
            'í' | 'ì' | 'ï' | 'î' | 'ī' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' | 'õ' | 'ø' | 'ō' => 'o',
            'ú' | 'ù' | 'ü' | 'û' | 'ū' => 'u',
            'ñ' => 'n',
            'ç' => 'c',
            'ý' | 'ÿ' => 'y',
            other => other,
        })
        .collect()
}

/// Whether `keyword` appears in `text` as whole words.
fn mentions(text: &str, keyword: &str) -> bool {
    let (t, k) = (fold(text), fold(keyword.trim()));
    if k.is_empty() {
        return false;
    }
    let mut start = 0;
    while let Some(pos) = t[start..].find(&k) {
        let i = start + pos;
        let before = t[..i]
            .chars()
            .next_back()
            .map(|c| c.is_alphanumeric())
            .unwrap_or(false);
        let after = t[i + k.len()..]
            .chars()
            .next()
            .map(|c| c.is_alphanumeric())
            .unwrap_or(false);
        if !before && !after {
            return true;
        }
        start = i + k.len().max(1);
        while !t.is_char_boundary(start) {
            start += 1;
        }
    }
    false
}

fn minutes(hhmm: &str) -> Option<i64> {
    let (h, m) = hhmm.trim().split_once(':')?;
    Some(h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?)
}

fn offset_minutes(o: &str) -> i64 {
    let o = o.trim();
    if o.is_empty() || o.eq_ignore_ascii_case("z") || o.eq_ignore_ascii_case("utc") {
        return 0;
    }
    let (sign, rest) = match o.as_bytes()[0] {
        b'-' => (-1, &o[1..]),
        b'+' => (1, &o[1..]),
        _ => (1, o),
    };
    sign * minutes(rest).unwrap_or(0)
}

impl Hours {
    /// The time zone named in the settings; `Ok(None)` when there is none.
    fn zone(&self) -> Result<Option<jiff::tz::TimeZone>, String> {
        match self.time_zone.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(name) => jiff::tz::TimeZone::get(name)
                .map(Some)
                .map_err(|e| format!("business_hours.time_zone `{name}`: {e}")),
        }
    }

    /// Local time as seconds since 1970-01-01 00:00 of the local calendar.
    fn local(&self, unix: i64) -> i64 {
        let zone = self.zone().ok().flatten();
        match (zone, jiff::Timestamp::from_second(unix)) {
            (Some(tz), Ok(ts)) => unix + i64::from(tz.to_offset(ts).seconds()),
            _ => unix + offset_minutes(&self.utc_offset) * 60,
        }
    }

    fn open_at(&self, unix: i64) -> bool {
        let local = self.local(unix);
        let days = local.div_euclid(86_400);
        // 1970-01-01 was a Thursday.
        let day = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"][days.rem_euclid(7) as usize];
        let minute = local.rem_euclid(86_400) / 60;
        let (Some(open), Some(close)) = (minutes(&self.open), minutes(&self.close)) else {
            return true;
        };
        self.days.iter().any(|d| d.eq_ignore_ascii_case(day)) && minute >= open && minute < close
    }
}

#[derive(serde::Serialize, Deserialize, Default)]
struct Sent {
    /// (event key, message timestamp) of each reply counted against the limit.
    replies: Vec<(String, i64)>,
}

impl Plugin for AutoReply {
    fn subscriptions() -> Vec<EventKind> {
        vec![EventKind::MessageReceived]
    }

    fn on_message(m: &Message, ctx: &Context) -> Result {
        if m.from_me || !matches!(m.message_type, MessageType::Text) || m.body.trim().is_empty() {
            return Ok(());
        }
        let s: Settings = settings::parse().map_err(Error::reject)?;
        if let Some(h) = &s.business_hours {
            h.zone().map_err(Error::reject)?;
        }
        if m.is_group && !s.reply_to_groups {
            return Ok(());
        }

        let mut replies: Vec<String> = Vec::new();
        let greeted_key = format!("greeted/{}", m.chat_id);
        if let Some(g) = &s.greeting {
            match kv::get_string(&greeted_key)? {
                None => {
                    kv::set(&greeted_key, &ctx.event_key)?;
                    replies.push(g.clone());
                }
                // A retry of the delivery that greeted: same decision.
                Some(k) if k == ctx.event_key => replies.push(g.clone()),
                Some(_) => {}
            }
        }
        let keyword = s
            .rules
            .iter()
            .find(|r| r.keywords.iter().any(|k| mentions(&m.body, k)))
            .map(|r| r.reply.clone());
        match (keyword, &s.business_hours, &s.away_message) {
            (Some(r), _, _) => replies.push(r),
            (None, Some(h), Some(away)) if !h.open_at(m.timestamp) => replies.push(away.clone()),
            _ => {}
        }
        if replies.is_empty() {
            return Ok(());
        }

        // Rate limit per chat, counted in message time so retries agree.
        let rate_key = format!("rate/{}", m.chat_id);
        let mut sent: Sent = kv::get(&rate_key)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let window_start = m.timestamp - s.period_minutes * 60;
        sent.replies.retain(|(_, ts)| *ts > window_start);
        let mine = sent
            .replies
            .iter()
            .filter(|(k, _)| k == &ctx.event_key)
            .count();
        let others = sent.replies.len() - mine;
        let allowed = s.max_replies.saturating_sub(others);
        if allowed < replies.len() {
            log::info(
                "reply limit reached",
                &[("chat", &m.chat_id), ("allowed", &allowed.to_string())],
            );
            replies.truncate(allowed);
        }
        for _ in mine..replies.len() {
            sent.replies.push((ctx.event_key.clone(), m.timestamp));
        }
        kv::set(&rate_key, serde_json::to_vec(&sent).unwrap_or_default())?;

        for text in &replies {
            if s.quote {
                ctx.reply_quoting(m, text)?;
            } else {
                ctx.reply(m, text)?;
            }
        }
        if !replies.is_empty() {
            log::info(
                "replied",
                &[
                    ("chat", &m.chat_id),
                    ("replies", &replies.len().to_string()),
                ],
            );
        }
        Ok(())
    }
}

export_plugin!(AutoReply);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_and_words() {
        assert!(mentions("¿Tienen MENÚ hoy?", "menu"));
        assert!(mentions("precio", "Precio"));
        assert!(!mentions("menudo", "menu"));
        assert!(!mentions("", "menu"));
    }

    #[test]
    fn business_hours() {
        let h = Hours {
            days: weekdays(),
            open: "09:00".into(),
            close: "18:00".into(),
            utc_offset: "-05:00".into(),
            time_zone: None,
        };
        // 2024-08-27 (Tuesday) 00:00 UTC = Monday 19:00 in UTC-5: closed.
        assert!(!h.open_at(1724716800));
        // Tuesday 15:00 UTC = 10:00 local: open.
        assert!(h.open_at(1724716800 + 15 * 3600));
        // Saturday 2024-08-31 15:00 UTC: closed.
        assert!(!h.open_at(1725116400));
    }

    #[test]
    fn business_hours_follow_daylight_saving_time() {
        let h = Hours {
            days: weekdays(),
            open: "09:00".into(),
            close: "18:00".into(),
            utc_offset: "+05:00".into(),
            time_zone: Some("Europe/Madrid".into()),
        };
        assert!(h.zone().unwrap().is_some());
        // Tuesday 2024-01-16: Madrid is UTC+1, opens at 08:00 UTC.
        let winter = 1705363200; // 00:00 UTC
        assert!(!h.open_at(winter + 7 * 3600 + 30 * 60));
        assert!(h.open_at(winter + 8 * 3600 + 30 * 60));
        // Tuesday 2024-07-16: Madrid is UTC+2, opens at 07:00 UTC.
        let summer = 1721088000;
        assert!(h.open_at(summer + 7 * 3600 + 30 * 60));
        assert!(!h.open_at(summer + 16 * 3600 + 30 * 60));
        let bad = Hours {
            time_zone: Some("Mars/Olympus".into()),
            ..h
        };
        assert!(bad.zone().is_err());
    }
}
