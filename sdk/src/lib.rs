//! Write hookhost plugins in Rust (the host and its README are in the same repository).
//!
//! A plugin is a type implementing [`Plugin`]; every method has a default
//! that does nothing, so you write only the events you care about. One call
//! to [`export_plugin!`] turns it into the component's exports.
//!
//! ```ignore
//! use hookhost_sdk::prelude::*;
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn subscriptions() -> Vec<EventKind> {
//!         vec![EventKind::MessageReceived]
//!     }
//!
//!     fn on_message(msg: &Message, ctx: &Context) -> Result {
//!         if msg.from_me || msg.body.is_empty() {
//!             return Ok(());
//!         }
//!         log::info("echoing", &[("chat", &msg.chat_id)]);
//!         ctx.reply(msg, &format!("You said: {}", msg.body))?;
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(Echo);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and drop the `.wasm` into the host's plugins folder.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/since_v0.1.0",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "hookhost_sdk::bindings",
    });
}

pub mod kv;
pub mod log;
pub mod settings;
pub mod sql;

pub use bindings::hookhost::plugin::types::{
    AckState, AckUpdate, DeliveryContext, Event, EventKind, HandlerError, HostError, Message,
    MessageType, Reaction, TestPing, UnknownEvent,
};

/// What a handler returns.
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// A failed delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Transient: the host tries again later with backoff.
    Retry(String),
    /// Permanent: the delivery becomes a dead letter at once.
    Reject(String),
}

impl Error {
    pub fn retry(m: impl Into<String>) -> Error {
        Error::Retry(m.into())
    }
    pub fn reject(m: impl Into<String>) -> Error {
        Error::Reject(m.into())
    }
}

/// A host error inside a handler: transient ones retry, the rest reject.
impl From<HostError> for Error {
    fn from(e: HostError) -> Error {
        let text = match &e {
            HostError::AccessDenied => "access denied".to_string(),
            HostError::QuotaExceeded => "quota exceeded".to_string(),
            HostError::Invalid(m) => format!("invalid: {m}"),
            HostError::Unavailable(m) => format!("unavailable: {m}"),
            HostError::Other(m) => m.clone(),
        };
        match e {
            HostError::Unavailable(_) => Error::Retry(text),
            _ => Error::Reject(text),
        }
    }
}

impl From<Error> for HandlerError {
    fn from(e: Error) -> HandlerError {
        match e {
            Error::Retry(m) => HandlerError::Retry(m),
            Error::Reject(m) => HandlerError::Reject(m),
        }
    }
}

/// Where the event comes from, and helpers that act on it.
pub struct Context {
    pub tenant: String,
    pub plugin: String,
    /// The event's idempotency key within the tenant.
    pub event_key: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// Unix milliseconds when the receiver stored the event.
    pub received_at: i64,
    /// The body as the gateway sent it.
    pub raw_json: String,
}

impl From<DeliveryContext> for Context {
    fn from(c: DeliveryContext) -> Context {
        Context {
            tenant: c.tenant,
            plugin: c.plugin,
            event_key: c.event_key,
            attempt: c.attempt,
            received_at: c.received_at,
            raw_json: c.raw_json,
        }
    }
}

impl Context {
    /// Sends `text` to the chat of `msg`. Returns the gateway's message id.
    pub fn reply(&self, msg: &Message, text: &str) -> Result<Option<String>, HostError> {
        send(&msg.chat_id, text, None)
    }

    /// Sends `text` to the chat of `msg`, quoting it.
    pub fn reply_quoting(&self, msg: &Message, text: &str) -> Result<Option<String>, HostError> {
        send(&msg.chat_id, text, Some(&msg.id))
    }
}

/// Sends a text message (`to`: a number with country code or a chat id).
/// A retried delivery does not send the same message twice.
pub fn send(
    to: &str,
    text: &str,
    quoted_message_id: Option<&str>,
) -> Result<Option<String>, HostError> {
    bindings::hookhost::plugin::messaging::send_text(
        &bindings::hookhost::plugin::messaging::OutgoingText {
            to: to.to_string(),
            text: text.to_string(),
            quoted_message_id: quoted_message_id.map(str::to_string),
        },
    )
}

/// A plugin. Every method has a default; implement what you need.
pub trait Plugin {
    /// The event kinds to receive; empty means all.
    fn subscriptions() -> Vec<EventKind> {
        Vec::new()
    }

    /// A message was received.
    fn on_message(_msg: &Message, _ctx: &Context) -> Result {
        Ok(())
    }

    /// A message was sent from the account.
    fn on_message_sent(_msg: &Message, _ctx: &Context) -> Result {
        Ok(())
    }

    /// A message's delivery state changed.
    fn on_ack(_ack: &AckUpdate, _ctx: &Context) -> Result {
        Ok(())
    }

    /// Somebody reacted to a message.
    fn on_reaction(_reaction: &Reaction, _ctx: &Context) -> Result {
        Ok(())
    }

    /// The gateway's test ping.
    fn on_test(_ping: &TestPing, _ctx: &Context) -> Result {
        Ok(())
    }

    /// An event type this SDK does not know.
    fn on_unknown(_event: &UnknownEvent, _ctx: &Context) -> Result {
        Ok(())
    }

    /// Every event; by default calls the method for its kind.
    fn on_event(event: &Event, ctx: &Context) -> Result {
        match event {
            Event::MessageReceived(m) => Self::on_message(m, ctx),
            Event::MessageSent(m) => Self::on_message_sent(m, ctx),
            Event::AckUpdate(a) => Self::on_ack(a, ctx),
            Event::MessageReaction(r) => Self::on_reaction(r, ctx),
            Event::TestWebhook(t) => Self::on_test(t, ctx),
            Event::Unknown(u) => Self::on_unknown(u, ctx),
        }
    }
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::MessageReceived => "message_received",
            EventKind::MessageSent => "message_sent",
            EventKind::AckUpdate => "ack_update",
            EventKind::MessageReaction => "message_reaction",
            EventKind::TestWebhook => "test_webhook",
            EventKind::Unknown => "unknown",
        }
    }
}

impl AckState {
    /// pending < sent < delivered < read; unknown states rank lowest.
    pub fn rank(&self) -> u8 {
        match self {
            AckState::Other(_) => 0,
            AckState::Pending => 1,
            AckState::Sent => 2,
            AckState::Delivered => 3,
            AckState::Read => 4,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            AckState::Pending => "pending",
            AckState::Sent => "sent",
            AckState::Delivered => "delivered",
            AckState::Read => "read",
            AckState::Other(s) => s,
        }
    }
}

impl MessageType {
    pub fn as_str(&self) -> &str {
        match self {
            MessageType::Text => "text",
            MessageType::Image => "image",
            MessageType::Video => "video",
            MessageType::Audio => "audio",
            MessageType::Document => "document",
            MessageType::Sticker => "sticker",
            MessageType::Location => "location",
            MessageType::Vcard => "vcard",
            MessageType::Other(s) => s,
        }
    }
}

/// Everything a plugin usually needs.
pub mod prelude {
    pub use crate::{
        export_plugin, kv, log, send, settings, sql, AckState, AckUpdate, Context, Error, Event,
        EventKind, HostError, Message, MessageType, Plugin, Reaction, Result, TestPing,
        UnknownEvent,
    };
}

/// Exports a [`Plugin`] type as the component's `handler`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __HookhostExport;

        impl $crate::bindings::exports::hookhost::plugin::handler::Guest for __HookhostExport {
            fn subscriptions() -> ::std::vec::Vec<$crate::EventKind> {
                <$plugin as $crate::Plugin>::subscriptions()
            }

            fn handle(event: $crate::Event, context: $crate::DeliveryContext) -> ::std::result::Result<(), $crate::HandlerError> {
                let ctx = $crate::Context::from(context);
                <$plugin as $crate::Plugin>::on_event(&event, &ctx).map_err(::std::convert::Into::into)
            }
        }

        $crate::bindings::export!(__HookhostExport with_types_in $crate::bindings);
    };
}
