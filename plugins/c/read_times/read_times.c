// read-times: how long after sending were our messages delivered and read.
//
// Each message the number sends is remembered (its time and chat) in the
// plugin's key-value store; when its `delivered` and `read` acks arrive,
// one log line says how long they took:
//
//   👀 Read after 42 s: 5215551234567@s.whatsapp.net (message 3EB0...)
//
// A message's key goes once it is read. A retried delivery logs again but
// changes nothing else, so at-least-once delivery is harmless here.
//
// Built with `wit-bindgen c` and clang's wasm32 target; see the README's
// "In C" section. The bindings (`plugin.h`, `plugin.c`) are generated at
// build time from the WIT folder.

#include "plugin.h"

#include <stdlib.h>
#include <string.h>

#define KEY_PREFIX "sent:"

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
  unsigned long long u = n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n;
  do {
    digits[--i] = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  if (n < 0) {
    digits[--i] = '-';
  }
  put(t, digits + i, sizeof digits - i);
}

static void log_line(hookhost_plugin_log_level_t level, const char *text,
                     const char *field, const plugin_string_t *value) {
  plugin_string_t message;
  plugin_string_set(&message, text);
  plugin_tuple2_string_string_t pair;
  plugin_list_tuple2_string_string_t fields = {.ptr = &pair, .len = 0};
  if (field != NULL) {
    plugin_string_set(&pair.f0, field);
    pair.f1 = *value;
    fields.len = 1;
  }
  hookhost_plugin_log_log(level, &message, &fields);
}

// The key of a sent message: "sent:" followed by its id.
static plugin_string_t key_of(const plugin_string_t *id) {
  plugin_string_t key;
  size_t prefix = strlen(KEY_PREFIX);
  key.len = prefix + id->len;
  key.ptr = malloc(key.len);
  memcpy(key.ptr, KEY_PREFIX, prefix);
  memcpy(key.ptr + prefix, id->ptr, id->len);
  return key;
}

static void set_error(exports_hookhost_plugin_handler_handler_error_t *err,
                      uint8_t tag, const char *what,
                      const hookhost_plugin_types_host_error_t *cause) {
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
  text_t text = {.len = 0};
  put_str(&text, what);
  if (cause->tag == HOOKHOST_PLUGIN_TYPES_HOST_ERROR_ACCESS_DENIED) {
    put_str(&text, ": access denied");
  } else if (detail != NULL) {
    put_str(&text, ": ");
    put(&text, detail->ptr, detail->len);
  } else {
    put_str(&text, " failed");
  }
  err->tag = tag;
  plugin_string_dup(tag == HOOKHOST_PLUGIN_TYPES_HANDLER_ERROR_RETRY
                        ? &err->val.retry
                        : &err->val.reject,
                    text.bytes);
}

// A transient store failure is retried; anything else is a dead letter.
static uint8_t error_kind(const hookhost_plugin_types_host_error_t *cause) {
  return cause->tag == HOOKHOST_PLUGIN_TYPES_HOST_ERROR_UNAVAILABLE
             ? HOOKHOST_PLUGIN_TYPES_HANDLER_ERROR_RETRY
             : HOOKHOST_PLUGIN_TYPES_HANDLER_ERROR_REJECT;
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

static bool remember(const hookhost_plugin_types_message_t *m,
                     exports_hookhost_plugin_handler_handler_error_t *err) {
  // The value: "<unix seconds> <chat id>".
  text_t text = {.len = 0};
  put_int(&text, m->timestamp);
  put_str(&text, " ");
  put(&text, m->chat_id.ptr, m->chat_id.len);
  plugin_list_u8_t value = {.ptr = (uint8_t *)text.bytes, .len = text.len};

  plugin_string_t key = key_of(&m->id);
  hookhost_plugin_kv_host_error_t cause;
  bool ok = hookhost_plugin_kv_set(&key, &value, &cause);
  free(key.ptr);
  if (ok) {
    return true;
  }
  if (cause.tag == HOOKHOST_PLUGIN_TYPES_HOST_ERROR_QUOTA_EXCEEDED) {
    // The store is full of messages never read: this one goes untimed.
    log_line(HOOKHOST_PLUGIN_LOG_LEVEL_WARN,
             "key-value quota reached: this message's acks will not be timed",
             "message", &m->id);
    hookhost_plugin_types_host_error_free(&cause);
    return true;
  }
  set_error(err, error_kind(&cause), "remembering a sent message", &cause);
  hookhost_plugin_types_host_error_free(&cause);
  return false;
}

static bool timed(const hookhost_plugin_types_ack_update_t *ack,
                  int64_t received_ms,
                  exports_hookhost_plugin_handler_handler_error_t *err) {
  const char *what;
  switch (ack->ack.tag) {
  case HOOKHOST_PLUGIN_TYPES_ACK_STATE_DELIVERED:
    what = "📬 Delivered";
    break;
  case HOOKHOST_PLUGIN_TYPES_ACK_STATE_READ:
    what = "👀 Read";
    break;
  default:
    return true;
  }

  plugin_string_t key = key_of(&ack->id);
  plugin_option_list_u8_t found;
  hookhost_plugin_kv_host_error_t cause;
  if (!hookhost_plugin_kv_get(&key, &found, &cause)) {
    free(key.ptr);
    set_error(err, error_kind(&cause), "reading a sent message", &cause);
    hookhost_plugin_types_host_error_free(&cause);
    return false;
  }
  if (!found.is_some) {
    // Sent before this plugin ran, or already read.
    free(key.ptr);
    return true;
  }

  // Parse "<unix seconds> <chat id>".
  plugin_list_u8_t *v = &found.val;
  long long sent = 0;
  size_t i = 0;
  while (i < v->len && v->ptr[i] >= '0' && v->ptr[i] <= '9') {
    sent = sent * 10 + (v->ptr[i] - '0');
    i++;
  }
  size_t chat_at = i < v->len ? i + 1 : v->len;
  long long after = received_ms / 1000 - sent;
  if (after < 0) {
    after = 0;
  }

  text_t text = {.len = 0};
  put_str(&text, what);
  put_str(&text, " after ");
  put_duration(&text, after);
  put_str(&text, ": ");
  put(&text, v->ptr + chat_at, v->len - chat_at);
  put_str(&text, " (message ");
  put(&text, ack->id.ptr, ack->id.len);
  put_str(&text, ")");
  text_t digits = {.len = 0};
  put_int(&digits, after);
  plugin_string_t seconds;
  plugin_string_set(&seconds, digits.bytes);
  log_line(HOOKHOST_PLUGIN_LOG_LEVEL_INFO, text.bytes, "seconds", &seconds);
  plugin_option_list_u8_free(&found);

  bool ok = true;
  if (ack->ack.tag == HOOKHOST_PLUGIN_TYPES_ACK_STATE_READ &&
      !hookhost_plugin_kv_delete(&key, &cause)) {
    set_error(err, error_kind(&cause), "forgetting a read message", &cause);
    hookhost_plugin_types_host_error_free(&cause);
    ok = false;
  }
  free(key.ptr);
  return ok;
}

void exports_hookhost_plugin_handler_subscriptions(
    exports_hookhost_plugin_handler_list_event_kind_t *ret) {
  ret->len = 2;
  ret->ptr = malloc(2 * sizeof *ret->ptr);
  ret->ptr[0] = HOOKHOST_PLUGIN_TYPES_EVENT_KIND_MESSAGE_SENT;
  ret->ptr[1] = HOOKHOST_PLUGIN_TYPES_EVENT_KIND_ACK_UPDATE;
}

bool exports_hookhost_plugin_handler_handle(
    exports_hookhost_plugin_handler_event_t *event,
    exports_hookhost_plugin_handler_delivery_context_t *context,
    exports_hookhost_plugin_handler_handler_error_t *err) {
  bool ok = true;
  switch (event->tag) {
  case HOOKHOST_PLUGIN_TYPES_EVENT_MESSAGE_SENT:
    ok = remember(&event->val.message_sent, err);
    break;
  case HOOKHOST_PLUGIN_TYPES_EVENT_ACK_UPDATE:
    ok = timed(&event->val.ack_update, context->received_at, err);
    break;
  }
  exports_hookhost_plugin_handler_event_free(event);
  exports_hookhost_plugin_handler_delivery_context_free(context);
  return ok;
}
