// hookhost plugin in JavaScript: daily statistics of the account's traffic.
//
// Keeps a `daily_stats` table in its private SQL database (messages in and
// out per day and type, acks per state, reactions) and logs a line per
// event. Upserts keyed by the event make a retried delivery harmless.

import { log } from "hookhost:plugin/log@0.1.0";
import { execute, query } from "hookhost:plugin/sql@0.1.0";

function day(unixSeconds) {
  const ts = Number(unixSeconds);
  return new Date((ts > 0 ? ts : Date.now() / 1000) * 1000).toISOString().slice(0, 10);
}

function text(s) {
  return { tag: "text", val: s };
}

function count(eventKey, dayStr, metric) {
  execute(
    "CREATE TABLE IF NOT EXISTS daily_stats (day TEXT, metric TEXT, n INTEGER NOT NULL, PRIMARY KEY (day, metric))",
    [],
  );
  execute("CREATE TABLE IF NOT EXISTS counted (event_key TEXT PRIMARY KEY)", []);
  // Count each event once, even when its delivery is retried.
  const fresh = execute("INSERT OR IGNORE INTO counted (event_key) VALUES (?1)", [text(eventKey)]);
  if (fresh === 0n) {
    return;
  }
  execute(
    "INSERT INTO daily_stats (day, metric, n) VALUES (?1, ?2, 1) ON CONFLICT (day, metric) DO UPDATE SET n = n + 1",
    [text(dayStr), text(metric)],
  );
}

function typeName(t) {
  return t.tag === "other" ? t.val : t.tag;
}

export const handler = {
  subscriptions() {
    return [];
  },

  handle(event, context) {
    let d;
    let metric;
    switch (event.tag) {
      case "message-received":
        d = day(event.val.timestamp);
        metric = `in.${typeName(event.val.messageType)}`;
        break;
      case "message-sent":
        d = day(event.val.timestamp);
        metric = `out.${typeName(event.val.messageType)}`;
        break;
      case "ack-update":
        d = day(Number(context.receivedAt) / 1000);
        metric = `ack.${event.val.ack.tag === "other" ? event.val.ack.val : event.val.ack.tag}`;
        break;
      case "message-reaction":
        d = day(event.val.timestamp);
        metric = "reaction";
        break;
      case "test-webhook":
        d = day(event.val.timestamp);
        metric = "test";
        break;
      default:
        d = day(Number(context.receivedAt) / 1000);
        metric = `unknown.${event.val.eventType}`;
    }
    count(context.eventKey, d, metric);
    const rows = query("SELECT n FROM daily_stats WHERE day = ?1 AND metric = ?2", [text(d), text(metric)]);
    const n = rows.rows.length ? rows.rows[0][0].val : 0n;
    log("info", `stats ${d} ${metric} = ${n}`, [["day", d], ["metric", metric]]);
  },
};
