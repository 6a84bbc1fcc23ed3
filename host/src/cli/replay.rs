//! `hookhost replay`: one event, or a range of them, through their plugins
//! again.

use super::out::outln;
use super::remote::remote;
use super::Target;
use crate::store;

pub fn replay(t: &Target, seq: i64, plugin: Option<String>, resend: bool) -> anyhow::Result<i32> {
    let plugins: Vec<String> = if t.url.is_some() {
        let v = remote(
            t,
            "POST",
            &format!("/admin/events/{seq}/replay"),
            Some(serde_json::json!({ "plugin": plugin, "resend": resend })),
        )?;
        v["plugins"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        let c = store::open_for_update(&t.data_dir)?;
        // Offline, "all plugins" means those that had this event before;
        // a running server (--url) knows its current plugins.
        let plugins = match plugin {
            Some(p) => vec![p],
            None => store::delivered_plugins(&c, seq)?,
        };
        store::replay(&c, seq, &plugins, resend)?
    };
    outln!(
        "queued: event {seq} → {}{}",
        plugins.join(", "),
        if resend { " (resend)" } else { "" }
    );
    Ok(0)
}

/// Events for `replay --from`.
#[derive(Debug, Clone)]
pub struct Range {
    pub from: i64,
    pub to: Option<i64>,
    pub tenant: Option<String>,
    pub plugin: Option<String>,
}

/// Replays a range of events. Through the server, every plugin that now
/// runs for an event's tenant and wants its type (the way to give a plugin
/// added later the history); offline, the plugins that had each event.
pub fn replay_range(t: &Target, r: &Range, resend: bool) -> anyhow::Result<i32> {
    let mut done = store::Replayed::default();
    if t.url.is_some() {
        let mut from = r.from;
        loop {
            let body = serde_json::json!({
                "from": from, "to": r.to, "tenant": r.tenant, "plugin": r.plugin, "resend": resend,
            });
            let v = match remote(t, "POST", "/admin/events/replay", Some(body)) {
                Ok(v) => v,
                // A later part is not asked again by itself (deliveries
                // that finished in between would run once more): say
                // where to go on from.
                Err(e) if from > r.from => {
                    return Err(e.context(format!(
                        "{} deliveries queued before event {from}; `replay --from {from}` goes on",
                        done.deliveries
                    )))
                }
                Err(e) => return Err(e),
            };
            let n = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
            done.events += n("events");
            done.deliveries += n("deliveries");
            done.running += n("running");
            match v["resume_after"].as_i64() {
                Some(seq) if v["more"] == true && seq >= from => from = seq + 1,
                _ => break,
            }
        }
    } else {
        let mut c = store::open_for_update(&t.data_dir)?;
        let mut after = r.from - 1;
        let to = r.to.unwrap_or(i64::MAX);
        loop {
            let heads = store::event_heads(&c, after, 500)?;
            let Some(last) = heads.last().map(|h| h.seq) else {
                break;
            };
            let mut items = Vec::new();
            for h in heads.iter().filter(|h| h.seq <= to) {
                if r.tenant.as_ref().is_some_and(|t| *t != h.tenant) {
                    continue;
                }
                let plugins: Vec<String> = store::delivered_plugins(&c, h.seq)?
                    .into_iter()
                    .filter(|p| r.plugin.as_ref().is_none_or(|only| only == p))
                    .collect();
                if !plugins.is_empty() {
                    items.push((h.seq, plugins));
                }
            }
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let d = store::replay_many(&tx, &items, resend)?;
            tx.commit()?;
            done.events += d.events;
            done.deliveries += d.deliveries;
            done.running += d.running;
            if last >= to || heads.len() < 500 {
                break;
            }
            after = last;
        }
    }
    outln!(
        "queued {} deliver{} for {} event{}{}{}",
        done.deliveries,
        if done.deliveries == 1 { "y" } else { "ies" },
        done.events,
        if done.events == 1 { "" } else { "s" },
        if resend { " (resend)" } else { "" },
        if done.running > 0 {
            format!("; {} running now, left alone", done.running)
        } else {
            String::new()
        }
    );
    Ok(0)
}
