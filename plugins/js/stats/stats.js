// hookhost plugin in JavaScript: daily statistics of the account's traffic.
//
// Keeps a `daily_stats` table in its private SQL database (messages in and
// out per day and type, acks per state, reactions) and logs a line per
// event.

import { log } from "hookhost:plugin/log@0.1.0";
import { execute, query } from "hookhost:plugin/sql@0.1.0";

function day(unixSeconds) {
  const ts = Number(unixSeconds);
  return new Date((ts > 0 ? ts : Date.now() / 1000) * 1000).toISOString().slice(0, 10);
}

function text(s) {
  return { tag: "text", val: s };
}

// Each event is counted once, by the trigger, when its key first goes into
// `events_counted`: one SQL call a delivery, and a retried delivery
// counts nothing twice. (Each call out of JavaScript costs about as much
// as the rest of the delivery.)
const TABLES = [
  "CREATE TABLE IF NOT EXISTS daily_stats (day TEXT, metric TEXT, n INTEGER NOT NULL, PRIMARY KEY (day, metric))",
  "CREATE TABLE IF NOT EXISTS events_counted (event_key TEXT PRIMARY KEY, day TEXT NOT NULL, metric TEXT NOT NULL)",
];
const TRIGGER =
  "CREATE TRIGGER IF NOT EXISTS count_event AFTER INSERT ON events_counted BEGIN " +
  "INSERT INTO daily_stats (day, metric, n) VALUES (NEW.day, NEW.metric, 1) " +
  "ON CONFLICT (day, metric) DO UPDATE SET n = n + 1; END";

// Creates the tables and the trigger in one transaction (a delivery
// stopped half-way leaves nothing, so no table can exist without its
// trigger). The previous version of this plugin kept the keys it had
// counted in `counted`: they move to `events_counted` before the trigger
// exists, so they are not counted again, and that table goes.
function createTables() {
  execute("BEGIN IMMEDIATE", []);
  for (const statement of TABLES) {
    execute(statement, []);
  }
  const previous = query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'counted'", []);
  if (previous.rows.length) {
    execute(
      "INSERT OR IGNORE INTO events_counted (event_key, day, metric) SELECT event_key, '', '' FROM counted",
      [],
    );
    execute("DROP TABLE counted", []);
  }
  execute(TRIGGER, []);
  execute("COMMIT", []);
}

// Runs `f`; when the tables do not exist yet (the plugin's first
// delivery), creates them and runs it again. Each delivery is a fresh
// instance, so checking the schema every time would cost every delivery.
function withTables(f) {
  try {
    return f();
  } catch (e) {
    if (!String(e?.payload?.val ?? e).includes("no such table")) {
      throw e;
    }
    createTables();
    return f();
  }
}

// Counts the event in the day's metric; false when it was counted before
// (a retried delivery).
function count(eventKey, dayStr, metric) {
  return withTables(
    () =>
      execute("INSERT OR IGNORE INTO events_counted (event_key, day, metric) VALUES (?1, ?2, ?3)", [
        text(eventKey),
        text(dayStr),
        text(metric),
      ]) === 1n,
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
    const counted = count(context.eventKey, d, metric);
    log("info", `stats ${d} ${metric} ${counted ? "+1" : "already counted"}`, [["day", d], ["metric", metric]]);
  },
};
