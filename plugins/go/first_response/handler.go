// first-response: how long customers waited for our first answer.
//
// When a customer writes in a chat that is not already waiting, the time of
// that message is kept in the plugin's key-value store (`waiting/CHAT`);
// the next message the number sends in that chat answers it, and one log
// line says how long it took:
//
//	⏱️ Answered after 3 min: 573001112233@c.us (waited since message ABCD1234)
//
// Group chats are left out. A message sent by another plugin through the
// gateway (an automatic reply) counts as an answer too.
//
// This file is the package `export_hookhost_plugin_handler` of the bindings
// that `wit-bindgen go` generates from the WIT folder; see the README's
// "In Go" section.
package export_hookhost_plugin_handler

import (
	"fmt"
	"strconv"
	"strings"

	"wit_component/hookhost_plugin_kv"
	"wit_component/hookhost_plugin_log"
	types "wit_component/hookhost_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

type outcome = witTypes.Result[witTypes.Unit, types.HandlerError]

func Subscriptions() []types.EventKind {
	return []types.EventKind{types.EventKind_MessageReceived, types.EventKind_MessageSent}
}

func Handle(event types.Event, context types.DeliveryContext) outcome {
	switch event.Tag() {
	case types.Event_MessageReceived:
		return received(event.MessageReceived())
	case types.Event_MessageSent:
		return sent(event.MessageSent())
	}
	return ok()
}

// A chat's wait: its key, and "<unix seconds> <message id>" if it waits.
func waiting(chat string) (string, witTypes.Option[[]byte], *types.HostError) {
	key := "waiting/" + chat
	found := hookhost_plugin_kv.Get(key)
	if found.IsErr() {
		e := found.Err()
		return key, witTypes.None[[]byte](), &e
	}
	return key, found.Ok(), nil
}

// A customer's message: the chat waits from it, unless it already waits.
func received(m types.Message) outcome {
	if m.IsGroup || m.FromMe {
		return ok()
	}
	key, since, e := waiting(m.ChatId)
	if e != nil {
		return failed("reading the chat's wait", *e)
	}
	if since.IsSome() {
		return ok()
	}
	value := strconv.FormatInt(m.Timestamp, 10) + " " + m.Id
	if set := hookhost_plugin_kv.Set(key, []byte(value)); set.IsErr() {
		if set.Err().Tag() == types.HostError_QuotaExceeded {
			// Chats never answered fill the quota: this one goes untimed.
			hookhost_plugin_log.Log(hookhost_plugin_log.Level_Warn,
				"key-value quota reached: this chat's wait is not timed",
				[]witTypes.Tuple2[string, string]{{F0: "chat", F1: m.ChatId}})
			return ok()
		}
		return failed("keeping the chat's wait", set.Err())
	}
	return ok()
}

// Our message in a waiting chat answers it.
func sent(m types.Message) outcome {
	if m.IsGroup {
		return ok()
	}
	key, since, e := waiting(m.ChatId)
	if e != nil {
		return failed("reading the chat's wait", *e)
	}
	if since.IsNone() {
		return ok()
	}
	at, first, _ := strings.Cut(string(since.Some()), " ")
	from, err := strconv.ParseInt(at, 10, 64)
	if err == nil {
		waited := max(m.Timestamp-from, 0)
		hookhost_plugin_log.Log(hookhost_plugin_log.Level_Info,
			fmt.Sprintf("⏱️ Answered after %s: %s (waited since message %s)", duration(waited), m.ChatId, first),
			[]witTypes.Tuple2[string, string]{
				{F0: "chat", F1: m.ChatId},
				{F0: "seconds", F1: strconv.FormatInt(waited, 10)},
			})
	}
	if deleted := hookhost_plugin_kv.Delete(key); deleted.IsErr() {
		return failed("ending the chat's wait", deleted.Err())
	}
	return ok()
}

// "42 s", "12 min", "5 h", "3 days": rounded down.
func duration(seconds int64) string {
	switch {
	case seconds < 120:
		return fmt.Sprintf("%d s", seconds)
	case seconds < 120*60:
		return fmt.Sprintf("%d min", seconds/60)
	case seconds < 48*3600:
		return fmt.Sprintf("%d h", seconds/3600)
	}
	return fmt.Sprintf("%d days", seconds/86400)
}

func ok() outcome {
	return witTypes.Ok[witTypes.Unit, types.HandlerError](witTypes.Unit{})
}

// A transient store failure is retried; anything else is a dead letter
// with the reason.
func failed(what string, e types.HostError) outcome {
	var why string
	switch e.Tag() {
	case types.HostError_AccessDenied:
		why = "access denied"
	case types.HostError_QuotaExceeded:
		why = "quota exceeded"
	case types.HostError_Invalid:
		why = e.Invalid()
	case types.HostError_Unavailable:
		return witTypes.Err[witTypes.Unit](types.MakeHandlerErrorRetry(what + ": " + e.Unavailable()))
	default:
		why = e.Other()
	}
	return witTypes.Err[witTypes.Unit](types.MakeHandlerErrorReject(what + ": " + why))
}
