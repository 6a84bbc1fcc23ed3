//! The operator commands on events, deliveries, dead letters, retention and
//! backups, against a running server's admin API (`--url`) or the data
//! directory (SQLite serialises them with a running server).

use super::out::outln;
use super::remote::{remote, Refused};
use super::{fmt_ms, Target};
use crate::store::{self, EventRow};
use anyhow::Context;
use serde_json::Value;
use std::path::Path;

fn events_header() {
    outln!(
        "{:>6}  {:<24}  {:<10}  {:<18}  KEY",
        "SEQ",
        "RECEIVED",
        "TENANT",
        "TYPE"
    );
}

/// Prints rows of events; `header` false when following (printed once).
fn print_events(rows: &[Value], json: bool, header: bool) {
    if json {
        rows.iter().for_each(|r| outln!("{r}"));
        return;
    }
    if header {
        if rows.is_empty() {
            outln!("no events");
            return;
        }
        events_header();
    }
    for r in rows {
        outln!(
            "{:>6}  {:<24}  {:<10}  {:<18}  {}",
            r["seq"].to_string(),
            fmt_ms(r["received_at"].as_i64().unwrap_or(0)),
            r["tenant"].as_str().unwrap_or(""),
            r["event_type"].as_str().unwrap_or(""),
            r["key"].as_str().unwrap_or("")
        );
    }
}

fn print_deliveries(rows: &[Value], json: bool, dead: bool) {
    if json {
        rows.iter().for_each(|r| outln!("{r}"));
        return;
    }
    if rows.is_empty() {
        outln!(
            "{}",
            if dead {
                "no dead letters"
            } else {
                "no deliveries"
            }
        );
        return;
    }
    outln!(
        "{:>6}  {:<14}  {:<10}  {:<9}  {:>8}  {:<24}  LAST ERROR",
        "SEQ",
        "PLUGIN",
        "TENANT",
        "STATE",
        "ATTEMPTS",
        "UPDATED"
    );
    for r in rows {
        outln!(
            "{:>6}  {:<14}  {:<10}  {:<9}  {:>8}  {:<24}  {}",
            r["event_seq"].to_string(),
            r["plugin"].as_str().unwrap_or(""),
            r["tenant"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["attempts"].to_string(),
            fmt_ms(r["updated_at"].as_i64().unwrap_or(0)),
            r["last_error"].as_str().unwrap_or("")
        );
    }
}

impl Page {
    /// The same page with one row more, which tells whether there are more
    /// than it shows.
    fn one_more(self) -> Page {
        match self {
            Page::After(after, n) => Page::After(after, n + 1),
            Page::Last(n) => Page::Last(n + 1),
            Page::Before(before, n) => Page::Before(before, n + 1),
        }
    }

    fn rows(self) -> i64 {
        match self {
            Page::After(_, n) | Page::Last(n) | Page::Before(_, n) => n,
        }
    }

    /// Whether the page is the newest rows (its extra row is its oldest).
    fn newest(self) -> bool {
        !matches!(self, Page::After(..))
    }
}

/// The rows `page` shows of `rows` (fetched with [`Page::one_more`]) and
/// whether there were more: the extra row is the newest for a page after a
/// sequence number, the oldest for the newest rows.
fn cut(mut rows: Vec<Value>, page: Page) -> (Vec<Value>, bool) {
    let limit = page.rows() as usize;
    if rows.len() <= limit {
        return (rows, false);
    }
    if page.newest() {
        rows.drain(..rows.len() - limit);
    } else {
        rows.truncate(limit);
    }
    (rows, true)
}

/// Says on standard error, after a listing cut short, how to see the rest:
/// `{command}--after LAST`, or for the newest rows `{command}--last N
/// --before FIRST`.
fn say_more(rows: &[Value], seq: &str, page: Page, command: &str) {
    let seq_of = |r: Option<&Value>| r.and_then(|r| r[seq].as_i64());
    let rest = if page.newest() {
        seq_of(rows.first()).map(|first| {
            format!(
                "older with {command}--last {} --before {first}",
                page.rows()
            )
        })
    } else {
        seq_of(rows.last()).map(|last| format!("more with {command}--after {last}"))
    };
    if let Some(rest) = rest {
        eprintln!("({} shown; {rest})", rows.len());
    }
}

fn to_values<T: serde::Serialize>(rows: &[T]) -> Vec<Value> {
    rows.iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect()
}

/// Which rows a listing shows.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    /// Up to `limit` after a sequence number (deliveries: from the first).
    After(i64, i64),
    /// The newest N.
    Last(i64),
    /// The newest N before a sequence number.
    Before(i64, i64),
}

pub fn events_list(
    t: &Target,
    tenant: Option<&str>,
    json: bool,
    page: Page,
    follow: bool,
) -> anyhow::Result<i32> {
    if !follow {
        let rows = fetch_events(t, tenant, page.one_more())?;
        let (rows, more) = cut(rows, page);
        print_events(&rows, json, true);
        if more {
            say_more(&rows, "seq", page, "");
        }
        return Ok(0);
    }
    let rows = fetch_events(t, tenant, page)?;
    // The header even with nothing yet: what follows goes under it.
    if !json && rows.is_empty() {
        events_header();
    } else {
        print_events(&rows, json, true);
    }
    let mut after = match (rows.last(), page) {
        (Some(r), _) => r["seq"].as_i64().unwrap_or(0),
        (None, Page::After(after, _)) => after,
        (None, Page::Last(_) | Page::Before(..)) => 0,
    };
    // A server restarting (or a store briefly unreadable) is waited for,
    // said once on standard error, as `tail -F` waits for its file.
    let mut lost = false;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let rows = match fetch_events(t, tenant, Page::After(after, 1000)) {
            Ok(rows) => rows,
            Err(e) => {
                if !lost {
                    eprintln!("{e:#}; trying again every second");
                    lost = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
                continue;
            }
        };
        if lost {
            eprintln!("reached again; following on after event {after}");
            lost = false;
        }
        if let Some(last) = rows.last() {
            after = last["seq"].as_i64().unwrap_or(after);
        }
        print_events(&rows, json, false);
    }
}

fn fetch_events(t: &Target, tenant: Option<&str>, page: Page) -> anyhow::Result<Vec<Value>> {
    Ok(if t.url.is_some() {
        let ask = |page: Page, before: Option<i64>| -> anyhow::Result<Vec<Value>> {
            let mut q = form_urlencoded::Serializer::new(String::new());
            match page {
                Page::After(after, limit) => q
                    .append_pair("after", &after.to_string())
                    .append_pair("limit", &limit.to_string()),
                Page::Last(n) | Page::Before(_, n) => q.append_pair("last", &n.to_string()),
            };
            if let Some(b) = before {
                q.append_pair("before", &b.to_string());
            }
            if let Some(t) = tenant {
                q.append_pair("tenant", t);
            }
            let q = q.finish();
            Ok(
                remote(t, "GET", &format!("/admin/events?{q}"), None)?["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        match page {
            // The server answers in pages (10 000 at most): ask on from
            // the last one until the limit is reached or nothing is left.
            Page::After(mut after, limit) => {
                let mut rows = Vec::new();
                while (rows.len() as i64) < limit {
                    let got = ask(Page::After(after, limit - rows.len() as i64), None)?;
                    match got.last().and_then(|r| r["seq"].as_i64()) {
                        Some(seq) => after = seq,
                        None => break,
                    }
                    rows.extend(got);
                }
                rows
            }
            // The newest N come back a page at a time too, each before the
            // oldest of the one before.
            Page::Last(n) | Page::Before(_, n) => {
                let mut rows: Vec<Value> = Vec::new();
                let mut before = match page {
                    Page::Before(seq, _) => Some(seq),
                    _ => None,
                };
                while (rows.len() as i64) < n {
                    let got = ask(Page::Last(n - rows.len() as i64), before)?;
                    match got.first().and_then(|r| r["seq"].as_i64()) {
                        Some(seq) => before = Some(seq),
                        None => break,
                    }
                    rows.splice(0..0, got);
                }
                rows
            }
        }
    } else {
        let c = store::open_read_only(&t.data_dir)?;
        let rows: Vec<EventRow> = match page {
            Page::After(after, limit) => store::list_events(&c, tenant, after, limit)?,
            Page::Last(n) => store::list_last_events(&c, tenant, None, n)?,
            Page::Before(seq, n) => store::list_last_events(&c, tenant, Some(seq), n)?,
        };
        to_values(&rows)
    })
}

pub fn event_show(t: &Target, seq: i64) -> anyhow::Result<i32> {
    let v = if t.url.is_some() {
        remote(t, "GET", &format!("/admin/events/{seq}"), None)?
    } else {
        let c = store::open_read_only(&t.data_dir)?;
        let ev = store::get_event(&c, seq)?.with_context(|| format!("no event {seq}"))?;
        let dels = store::list_deliveries(&c, &store::DeliveryFilter::event(seq), 1000)?;
        let body: Value = serde_json::from_slice(&ev.body).unwrap_or(Value::Null);
        serde_json::json!({ "event": ev, "body": body, "deliveries": dels })
    };
    outln!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}

pub fn deliveries(
    t: &Target,
    filter: store::DeliveryFilter,
    json: bool,
    page: Page,
) -> anyhow::Result<i32> {
    let dead = filter.state.as_deref() == Some("dead");
    let mut filter = filter;
    match page {
        Page::After(after, _) => filter.after = Some(after),
        Page::Before(before, _) => filter.before = Some(before),
        Page::Last(_) => {}
    }
    // The ledger says whether there are more, and ends a page cut short
    // at an event's last delivery (`store::delivery_page`).
    let (rows, more) = if t.url.is_some() {
        let mut q = form_urlencoded::Serializer::new(String::new());
        match page {
            Page::After(_, n) => q.append_pair("limit", &n.to_string()),
            Page::Last(n) | Page::Before(_, n) => q.append_pair("last", &n.to_string()),
        };
        if let Some(e) = filter.event {
            q.append_pair("event", &e.to_string());
        }
        for (key, value) in [("after", filter.after), ("before", filter.before)] {
            if let Some(v) = value {
                q.append_pair(key, &v.to_string());
            }
        }
        for (key, value) in [
            ("state", &filter.state),
            ("tenant", &filter.tenant),
            ("plugin", &filter.plugin),
        ] {
            if let Some(v) = value {
                q.append_pair(key, v);
            }
        }
        let q = q.finish();
        let answer = remote(t, "GET", &format!("/admin/deliveries?{q}"), None)?;
        let rows = answer["deliveries"].as_array().cloned().unwrap_or_default();
        (rows, answer["more"] == true)
    } else {
        let c = store::open_read_only(&t.data_dir)?;
        let p = store::delivery_page(&c, &filter, page.rows(), page.newest())?;
        (to_values(&p.deliveries), p.more)
    };
    print_deliveries(&rows, json, dead);
    if more {
        let command = if dead {
            "hookhost deliveries --state dead "
        } else {
            ""
        };
        say_more(&rows, "event_seq", page, command);
    }
    Ok(0)
}

/// `dead-letters retry|discard`: one dead letter, or `--all` of them.
pub fn settle(t: &Target, which: super::Settle, action: store::DeadLetter) -> anyhow::Result<i32> {
    match (which.all, which.seq, which.plugin_name) {
        (false, Some(seq), Some(plugin)) => settle_dead(t, seq, &plugin, action),
        (true, _, _) => settle_all(
            t,
            store::DeadFilter {
                tenant: which.tenant,
                plugin: which.only_plugin,
            },
            action,
        ),
        _ => anyhow::bail!("give SEQ and PLUGIN, or --all"),
    }
}

fn settle_all(
    t: &Target,
    filter: store::DeadFilter,
    action: store::DeadLetter,
) -> anyhow::Result<i32> {
    let (verb, done) = (action.verb(), action.done());
    let n = if t.url.is_some() {
        let body = serde_json::json!({ "tenant": filter.tenant, "plugin": filter.plugin });
        remote(
            t,
            "POST",
            &format!("/admin/dead-letters/{verb}"),
            Some(body),
        )?[done]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("the server did not say how many were {done}"))?
            as usize
    } else {
        let c = store::open_for_update(&t.data_dir)?;
        store::settle_dead_all(&c, &filter, action)?
    };
    let letters = if n == 1 {
        "dead letter"
    } else {
        "dead letters"
    };
    let queued = match action {
        store::DeadLetter::Retry => " (queued again)",
        store::DeadLetter::Discard => "",
    };
    outln!("{done} {n} {letters}{queued}");
    Ok(0)
}

fn settle_dead(
    t: &Target,
    seq: i64,
    plugin: &str,
    action: store::DeadLetter,
) -> anyhow::Result<i32> {
    let verb = action.verb();
    let done = match action {
        store::DeadLetter::Retry => "queued",
        store::DeadLetter::Discard => "discarded",
    };
    if t.url.is_some() {
        remote(
            t,
            "POST",
            &format!("/admin/dead-letters/{seq}/{plugin}/{verb}"),
            None,
        )?;
    } else {
        let c = store::open_for_update(&t.data_dir)?;
        store::settle_dead(&c, seq, plugin, action)?;
    }
    outln!("{done}: event {seq} → {plugin}");
    Ok(0)
}

/// `reload`: what the server's answer says changed, one line each.
pub fn reload(t: &Target, json: bool) -> anyhow::Result<i32> {
    let v = remote(t, "POST", "/admin/reload", None).map_err(|e| {
        match e.downcast_ref::<Refused>() {
            // The admin API is off (or this is not hookhost): a signal
            // needs no token.
            Some(r) if r.status == 404 => {
                anyhow::anyhow!("{e:#}; `kill -HUP PID` reloads a server without it")
            }
            _ => e,
        }
    })?;
    if json {
        outln!("{v}");
        return Ok(0);
    }
    let names = |key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut lines = Vec::new();
    for (key, what) in [
        ("added", "tenants added"),
        ("removed", "tenants removed"),
        ("changed", "tenants changed"),
    ] {
        let n = names(key);
        if !n.is_empty() {
            lines.push(format!("{what}: {}", n.join(", ")));
        }
    }
    for (key, what) in [
        ("limits_changed", "default limits changed"),
        ("dispatch_changed", "dispatch settings changed"),
        ("retention_changed", "retention changed"),
        ("admin_token_changed", "admin token changed"),
    ] {
        if v[key].as_bool() == Some(true) {
            lines.push(what.into());
        }
    }
    if lines.is_empty() {
        lines.push("nothing that applies while running changed".into());
    }
    outln!("reloaded: {}", lines.join("; "));
    for what in names("restart_needed") {
        outln!("needs a restart: {what}");
    }
    Ok(0)
}

pub fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<i32> {
    let copied = store::backup(data_dir, to)?;
    for (file, bytes) in &copied {
        outln!("{} ({bytes} bytes)", file.display());
    }
    outln!(
        "backed up {} database(s) into {}",
        copied.len(),
        to.display()
    );
    Ok(0)
}

pub fn events_prune(t: &Target, age: std::time::Duration) -> anyhow::Result<i32> {
    let (n, uncounted) = if t.url.is_some() {
        prune_remote(t, age)?
    } else {
        let mut c = store::open_for_update(&t.data_dir)?;
        (store::retention::prune_offline(&mut c, age)?, false)
    };
    let events = if n == 1 { "event" } else { "events" };
    if uncounted {
        outln!(
            "pruned at least {n} {events} (a part timed out and was asked for again; \
             hookhost_events_pruned_total counts them all)"
        );
    } else {
        outln!("pruned {n} {events}");
    }
    Ok(0)
}

/// Retention through the admin API, which answers a long pass in parts:
/// asks again from where each stopped. A part that timed out (a busy
/// server) is asked for again; what it pruned stays pruned but is not
/// counted here (the second value says so).
fn prune_remote(t: &Target, age: std::time::Duration) -> anyhow::Result<(usize, bool)> {
    let (mut n, mut after, mut uncounted) = (0, 0, false);
    loop {
        let body = serde_json::json!({
            "older_than": format!("{}s", age.as_secs()),
            "after": after,
        });
        let mut tries = 0;
        let v = loop {
            match remote(t, "POST", "/admin/events/prune", Some(body.clone())) {
                Err(e)
                    if tries < 5
                        && e.downcast_ref::<Refused>()
                            .is_some_and(|r| r.status == 408 || r.status == 503) =>
                {
                    tries += 1;
                    uncounted = true;
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                other => break other?,
            }
        };
        n += v["pruned"].as_u64().unwrap_or(0) as usize;
        match v["resume_after"].as_i64() {
            Some(seq) if v["more"] == true && seq > after => after = seq,
            _ => return Ok((n, uncounted)),
        }
    }
}
