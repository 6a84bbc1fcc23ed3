//! `messaging`: send WhatsApp text through the tenant's gateway account.
//!
//! Each send carries an idempotency key derived from (event, plugin, call
//! number) and is recorded once the gateway accepted it, so a retried
//! delivery does not send the same message twice. The token never reaches
//! the plugin or the logs.

use super::{Action, Capabilities};
use crate::bindings::messaging::{Host, OutgoingText};
use crate::bindings::types::HostError;
use crate::config::{Grant, ResolvedWhapi};
use std::time::Duration;

const MAX_TEXT: usize = 64 * 1024;
const MAX_SENDS_PER_DELIVERY: u32 = 20;

/// The tenant's gateway client.
pub struct Messenger {
    whapi: ResolvedWhapi,
    agent: ureq::Agent,
}

/// The gateway's answer to one send.
#[derive(Debug, Clone, PartialEq)]
pub struct SentMessage {
    pub message_id: Option<String>,
}

impl Messenger {
    pub fn new(whapi: ResolvedWhapi) -> Messenger {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .new_agent();
        Messenger { whapi, agent }
    }

    /// One POST to `{base}/api/send-message`.
    pub fn send_text(
        &self,
        msg: &OutgoingText,
        idem_key: &str,
        timeout: Duration,
    ) -> Result<SentMessage, HostError> {
        let mut body = serde_json::json!({
            "instanceId": self.whapi.instance_id,
            "token": String::from_utf8_lossy(self.whapi.token.expose()),
            "to": msg.to,
            "type": "text",
            "message": msg.text,
        });
        if let Some(q) = &msg.quoted_message_id {
            body["quotedMessageId"] = serde_json::Value::String(q.clone());
        }
        let url = format!("{}/api/send-message", self.whapi.base_url);
        let resp = self
            .agent
            .post(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Idempotency-Key", idem_key)
            .send_json(&body);
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => {
                // ureq errors never include the body, so the token stays out.
                tracing::warn!(base_url = %self.whapi.base_url, error = %e, "gateway unreachable");
                return Err(HostError::Unavailable("gateway unreachable".into()));
            }
        };
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        match status {
            200..=299 => Ok(SentMessage {
                message_id: message_id(&text),
            }),
            429 | 500..=599 => Err(HostError::Unavailable(format!("gateway answered {status}"))),
            _ => Err(HostError::Other(format!(
                "gateway refused the message ({status})"
            ))),
        }
    }
}

/// The gateway does not document its answer: take an id where one is found.
fn message_id(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let pick = |v: &serde_json::Value| -> Option<String> {
        for k in ["id", "message_id", "messageId"] {
            match v.get(k) {
                Some(serde_json::Value::String(s)) => return Some(s.clone()),
                Some(serde_json::Value::Number(n)) => return Some(n.to_string()),
                _ => {}
            }
        }
        None
    };
    pick(&v)
        .or_else(|| v.get("data").and_then(pick))
        .or_else(|| v.get("message").and_then(pick))
}

impl Host for Capabilities {
    fn send_text(
        &mut self,
        message: OutgoingText,
    ) -> wasmtime::Result<Result<Option<String>, HostError>> {
        Ok((|| {
            self.check(Grant::Messaging)?;
            if message.text.is_empty()
                || message.text.len() > MAX_TEXT
                || message.to.is_empty()
                || message.to.len() > 256
            {
                return Err(HostError::Invalid("empty or oversized message".into()));
            }
            if self.sends >= MAX_SENDS_PER_DELIVERY {
                return Err(HostError::QuotaExceeded);
            }
            self.sends += 1;
            let idem_key = format!(
                "{}/{}/{}/{}",
                self.tenant, self.event_seq, self.plugin, self.sends
            );
            self.note(|| Action::Send {
                to: message.to.clone(),
                text: message.text.clone(),
                quoted_message_id: message.quoted_message_id.clone(),
            });
            if self.dry_run {
                // `plugin test`: report, do not send.
                return Ok(Some(format!("dry-run-{}", self.sends)));
            }
            let Some(messenger) = self.messenger.clone() else {
                // Permanent: retrying will not create the account.
                return Err(HostError::Other(
                    "no gateway account configured for this tenant".into(),
                ));
            };
            if !self.resend {
                match self.store.send_recorded(&idem_key) {
                    Ok(Some(id)) => {
                        tracing::info!(tenant = %self.tenant, plugin = %self.plugin, idem_key, "send already made; not sending again");
                        return Ok(id);
                    }
                    Ok(None) => {}
                    Err(_) => return Err(HostError::Unavailable("storage unavailable".into())),
                }
            }
            let timeout = self.remaining().min(Duration::from_secs(10));
            if timeout.is_zero() {
                return Err(HostError::Unavailable("delivery deadline reached".into()));
            }
            let sent = messenger.send_text(&message, &idem_key, timeout)?;
            if let Err(e) = self.store.record_send(
                idem_key,
                &self.tenant,
                &self.plugin,
                self.event_seq,
                message.to.clone(),
                sent.message_id.clone(),
            ) {
                tracing::error!(error = %e, "message sent but not recorded; a retry may send it again");
            }
            tracing::info!(tenant = %self.tenant, plugin = %self.plugin, to = %message.to, "message sent");
            Ok(sent.message_id)
        })())
    }
}
