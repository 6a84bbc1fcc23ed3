// read-times: how long after sending were our messages delivered and read.
//
// Each message the number sends and each `delivered` or `read` ack is
// recorded in the plugin's SQL database, in one row per message:
//
//   messages (id, chat, sent_at, delivered_at, read_at, seen_at)
//
// (Unix seconds: `sent_at` as the gateway stamped the message, the acks'
// when hookhost stored them.) Once a message's send time and an ack's time
// are both known, one log line says how long it took:
//
//   👀 Read after 42 s: 5215551234567@s.whatsapp.net (message 3EB0...)
//
// An ack may be handled before its message (they queue apart: a backlog, a
// retry): its time is kept and the line is logged when the message comes.
// A retried delivery logs the same figure again and changes nothing. Rows
// go a week after they were last touched, so acks of messages sent before
// the plugin ran do not pile up. Ask the table for averages:
//
//   SELECT avg(read_at - sent_at) FROM messages WHERE read_at IS NOT NULL
//
// Built with `wit-bindgen c` and clang's wasm32 target; see the README's
// "In C" section. The bindings (`plugin.h`, `plugin.c`) are generated at
// build time from the WIT folder.

#include "plugin.h"

#include <stdlib.h>
#include <string.h>

#define KEEP_SECONDS (7 * 86400)

// Text built without stdio, which would add WASI imports to the component.
typedef struct {
  char bytes[512];
  size_t len;
} text_t;

static void put(text_t *t, const void *bytes, size_t len) {
  if (len > sizeof t->bytes - 1 - t->len) {
    len = sizeof t->bytes - 1 - t->len;
  }
  memcpy(t->bytes + t->len, bytes, len);
  t->len += len;
  t->bytes[t->len] = 0;
}

static void put_str(text_t *t, const char *s) { put(t, s, strlen(s)); }

static void put_int(text_t *t, long long n) {
  char digits[24];
  size_t i = sizeof digits;
  unsigned long long u =
      n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n;
  do {
    digits[--i] = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  if (n < 0) {
    digits[--i] = '-';
  }
  put(t, digits + i, sizeof digits - i);
}

// "42 s", "12 min", "5 h", "3 days": rounded down.
static void put_duration(text_t *t, long long seconds) {
  if (seconds < 120) {
    put_int(t, seconds);
    put_str(t, " s");
  } else if (seconds < 120 * 60) {
    put_int(t, seconds / 60);
    put_str(t, " min");
  } else if (seconds < 48 * 3600) {
    put_int(t, seconds / 3600);
    put_str(t, " h");
  } else {
    put_int(t, seconds / 86400);
    put_str(t, " days");
  }
}

// SQL parameters and results.
typedef hookhost_plugin_sql_value_t value_t;

static value_t integer(int64_t n) {
  value_t v = {.tag = HOOKHOST_PLUGIN_SQL_VALUE_INTEGER};
  v.val.integer = n;
  return v;
}

static value_t text(const plugin_string_t *s) {
  value_t v = {.tag = HOOKHOST_PLUGIN_SQL_VALUE_TEXT};
  v.val.text = *s;
  return v;
}

static bool is_integer(const value_t *v) {
  return v->tag == HOOKHOST_PLUGIN_SQL_VALUE_INTEGER;
}

// A failed host call as the delivery's error: a transient one is retried,
// anything else is a dead letter with the reason.
static bool fail(exports_hookhost_plugin_handler_handler_error_t *err,
                 const char *what, hookhost_plugin_sql_host_error_t *cause) {
  const plugin_string_t *detail = NULL;
  switch (cause->tag) {
  case HOOKHOST_PLUGIN_TYPES_HOST_ERROR_INVALID:
    detail = &cause->val.invalid;
    break;
  case HOOKHOST_PLUGIN_TYPES_HOST_ERROR_UNAVAILABLE:
    detail = &cause->val.unavailable;
    break;
  case HOOKHOST_PLUGIN_TYPES_HOST_ERROR_OTHER:
    detail = &cause->val.other;
    break;
  }
  text_t t = {.len = 0};
  put_str(&t, what);
  if (cause->tag == HOOKHOST_PLUGIN_TYPES_HOST_ERROR_ACCESS_DENIED) {
    put_str(&t, ": access denied");
  } else if (cause->tag == HOOKHOST_PLUGIN_TYPES_HOST_ERROR_QUOTA_EXCEEDED) {
    put_str(&t, ": quota exceeded");
  } else if (detail != NULL) {
    put_str(&t, ": ");
    put(&t, detail->ptr, detail->len);
  }
  bool retry = cause->tag == HOOKHOST_PLUGIN_TYPES_HOST_ERROR_UNAVAILABLE;
  err->tag = retry ? HOOKHOST_PLUGIN_TYPES_HANDLER_ERROR_RETRY
                   : HOOKHOST_PLUGIN_TYPES_HANDLER_ERROR_REJECT;
  plugin_string_dup(retry ? &err->val.retry : &err->val.reject, t.bytes);
  hookhost_plugin_types_host_error_free(cause);
  return false;
}

static bool execute(const char *statement, value_t *params, size_t n,
                    exports_hookhost_plugin_handler_handler_error_t *err) {
  plugin_string_t sql;
  plugin_string_set(&sql, statement);
  hookhost_plugin_sql_list_value_t list = {.ptr = params, .len = n};
  uint64_t changed;
  hookhost_plugin_sql_host_error_t cause;
  if (!hookhost_plugin_sql_execute(&sql, &list, &changed, &cause)) {
    return fail(err, "SQL", &cause);
  }
  return true;
}

static bool query(const char *statement, value_t *params, size_t n,
                  hookhost_plugin_sql_rows_t *rows,
                  exports_hookhost_plugin_handler_handler_error_t *err) {
  plugin_string_t sql;
  plugin_string_set(&sql, statement);
  hookhost_plugin_sql_list_value_t list = {.ptr = params, .len = n};
  hookhost_plugin_sql_host_error_t cause;
  if (!hookhost_plugin_sql_query(&sql, &list, rows, &cause)) {
    return fail(err, "SQL", &cause);
  }
  return true;
}

// The table, made at the first delivery (cheap to ask again: SQLite sees
// it exists).
static bool schema(exports_hookhost_plugin_handler_handler_error_t *err) {
  return execute("CREATE TABLE IF NOT EXISTS messages ("
                 " id TEXT PRIMARY KEY, chat TEXT, sent_at INTEGER,"
                 " delivered_at INTEGER, read_at INTEGER,"
                 " seen_at INTEGER NOT NULL)",
                 NULL, 0, err) &&
         execute("CREATE INDEX IF NOT EXISTS messages_seen"
                 " ON messages (seen_at)",
                 NULL, 0, err);
}

static void log_took(const char *what, long long seconds, const value_t *chat,
                     const plugin_string_t *id) {
  if (seconds < 0) {
    seconds = 0;
  }
  text_t line = {.len = 0};
  put_str(&line, what);
  put_str(&line, " after ");
  put_duration(&line, seconds);
  put_str(&line, ": ");
  if (chat->tag == HOOKHOST_PLUGIN_SQL_VALUE_TEXT) {
    put(&line, chat->val.text.ptr, chat->val.text.len);
  }
  put_str(&line, " (message ");
  put(&line, id->ptr, id->len);
  put_str(&line, ")");

  text_t digits = {.len = 0};
  put_int(&digits, seconds);
  plugin_string_t message;
  plugin_string_set(&message, line.bytes);
  plugin_tuple2_string_string_t field;
  plugin_string_set(&field.f0, "seconds");
  plugin_string_set(&field.f1, digits.bytes);
  plugin_list_tuple2_string_string_t fields = {.ptr = &field, .len = 1};
  hookhost_plugin_log_log(HOOKHOST_PLUGIN_LOG_LEVEL_INFO, &message, &fields);
}

// A sent message: its row gets the chat and send time; acks that came
// first are logged now. Rows not touched for a week go.
static bool on_sent(const hookhost_plugin_types_message_t *m, int64_t now,
                    exports_hookhost_plugin_handler_handler_error_t *err) {
  value_t params[] = {text(&m->id), text(&m->chat_id), integer(m->timestamp),
                      integer(now)};
  hookhost_plugin_sql_rows_t rows;
  if (!query("INSERT INTO messages (id, chat, sent_at, seen_at)"
             " VALUES (?1, ?2, ?3, ?4)"
             " ON CONFLICT (id) DO UPDATE SET chat = excluded.chat,"
             " sent_at = excluded.sent_at, seen_at = excluded.seen_at"
             " RETURNING chat, delivered_at, read_at",
             params, 4, &rows, err)) {
    return false;
  }
  if (rows.rows.len == 1 && rows.rows.ptr[0].len == 3) {
    value_t *row = rows.rows.ptr[0].ptr;
    if (is_integer(&row[1])) {
      log_took("📬 Delivered", row[1].val.integer - m->timestamp, &row[0],
               &m->id);
    }
    if (is_integer(&row[2])) {
      log_took("👀 Read", row[2].val.integer - m->timestamp, &row[0], &m->id);
    }
  }
  hookhost_plugin_sql_rows_free(&rows);

  value_t before[] = {integer(now - KEEP_SECONDS)};
  return execute("DELETE FROM messages WHERE seen_at < ?1", before, 1, err);
}

// A `delivered` or `read` ack: its time is kept (the first one, so that a
// retry logs the same figure), and logged when the send time is known.
static bool on_ack(const hookhost_plugin_types_ack_update_t *ack, int64_t now,
                   exports_hookhost_plugin_handler_handler_error_t *err) {
  const char *what;
  const char *statement;
  switch (ack->ack.tag) {
  case HOOKHOST_PLUGIN_TYPES_ACK_STATE_DELIVERED:
    what = "📬 Delivered";
    statement = "INSERT INTO messages (id, delivered_at, seen_at)"
                " VALUES (?1, ?2, ?2)"
                " ON CONFLICT (id) DO UPDATE SET"
                " delivered_at = coalesce(delivered_at, excluded.delivered_at),"
                " seen_at = excluded.seen_at"
                " RETURNING chat, sent_at, delivered_at";
    break;
  case HOOKHOST_PLUGIN_TYPES_ACK_STATE_READ:
    what = "👀 Read";
    statement = "INSERT INTO messages (id, read_at, seen_at)"
                " VALUES (?1, ?2, ?2)"
                " ON CONFLICT (id) DO UPDATE SET"
                " read_at = coalesce(read_at, excluded.read_at),"
                " seen_at = excluded.seen_at"
                " RETURNING chat, sent_at, read_at";
    break;
  default:
    return true;
  }
  value_t params[] = {text(&ack->id), integer(now)};
  hookhost_plugin_sql_rows_t rows;
  if (!query(statement, params, 2, &rows, err)) {
    return false;
  }
  if (rows.rows.len == 1 && rows.rows.ptr[0].len == 3) {
    value_t *row = rows.rows.ptr[0].ptr;
    if (is_integer(&row[1]) && is_integer(&row[2])) {
      log_took(what, row[2].val.integer - row[1].val.integer, &row[0],
               &ack->id);
    }
  }
  hookhost_plugin_sql_rows_free(&rows);
  return true;
}

void exports_hookhost_plugin_handler_subscriptions(
    exports_hookhost_plugin_handler_list_event_kind_t *ret) {
  ret->len = 2;
  ret->ptr = malloc(2 * sizeof *ret->ptr);
  ret->ptr[0] = HOOKHOST_PLUGIN_TYPES_EVENT_KIND_MESSAGE_SENT;
  ret->ptr[1] = HOOKHOST_PLUGIN_TYPES_EVENT_KIND_ACK_UPDATE;
}

// The arguments belong to the plugin: freed before returning.
bool exports_hookhost_plugin_handler_handle(
    exports_hookhost_plugin_handler_event_t *event,
    exports_hookhost_plugin_handler_delivery_context_t *context,
    exports_hookhost_plugin_handler_handler_error_t *err) {
  // When hookhost stored the event, in Unix seconds.
  int64_t now = context->received_at / 1000;
  bool ok = schema(err);
  if (ok && event->tag == HOOKHOST_PLUGIN_TYPES_EVENT_MESSAGE_SENT) {
    ok = on_sent(&event->val.message_sent, now, err);
  } else if (ok && event->tag == HOOKHOST_PLUGIN_TYPES_EVENT_ACK_UPDATE) {
    ok = on_ack(&event->val.ack_update, now, err);
  }
  exports_hookhost_plugin_handler_event_free(event);
  exports_hookhost_plugin_handler_delivery_context_free(context);
  return ok;
}
