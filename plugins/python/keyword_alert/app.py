"""hookhost plugin in Python: alert an operator about urgent messages.

When an incoming message mentions one of the alert words in the settings
(case- and accent-insensitive), the plugin forwards it to the operator's
number, with who wrote it and the chat. Settings:

    notify_to = "573001234567"      # the operator's number or chat id
    words = ["urgente", "queja", "reclamo"]
"""

import json
import unicodedata

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, log, messaging, types


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words_in(text: str) -> set:
    cleaned = "".join(c if c.isalnum() else " " for c in fold(text))
    return set(cleaned.split())


class Handler(exports.Handler):
    def subscriptions(self):
        return [types.EventKind.MESSAGE_RECEIVED]

    def handle(self, event, context):
        if not isinstance(event, types.Event_MessageReceived):
            return
        msg = event.value
        if msg.from_me or not msg.body:
            return
        settings = json.loads(config.get_json() or "{}")
        notify_to = settings.get("notify_to")
        alert_words = {fold(w) for w in settings.get("words", ["urgente"])}
        hits = sorted(alert_words & words_in(msg.body))
        if not hits or not notify_to:
            return
        who = msg.sender_name or msg.sender
        text = f"⚠️ {', '.join(hits)} — {who} ({msg.chat_id}): {msg.body}"
        try:
            messaging.send_text(messaging.OutgoingText(to=notify_to, text=text, quoted_message_id=None))
        except Err as e:
            kind = type(e.value).__name__
            if kind == "HostError_Unavailable":
                raise Err(types.HandlerError_Retry(f"alert not sent: {e.value.value}"))
            raise Err(types.HandlerError_Reject(f"alert not sent: {kind}"))
        log.log(log.Level.INFO, "alert forwarded", [("chat", msg.chat_id), ("words", ",".join(hits))])
