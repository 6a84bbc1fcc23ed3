//! `messaging`: send WhatsApp text through the tenant's gateway account.
//!
//! Each send carries an idempotency key derived from (event, plugin, call
//! number) and is recorded before it leaves and again once the gateway
//! accepted it, so a retried delivery does not send the same message twice.
//! When an earlier attempt's outcome is unknown (see `store::sends`), the
//! gateway's `message_sent` echo decides: found, the send is confirmed;
//! missing after `echo_wait_secs`, it is sent again. The token never
//! reaches the plugin or the logs.

use super::{Action, Capabilities};
use crate::bindings::messaging::{Host, OutgoingText};
use crate::bindings::types::HostError;
use crate::config::{Grant, ResolvedWhapi};
use crate::store::{NewSend, SendState};
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

/// A send that did not get a 2xx.
#[derive(Debug, Clone)]
pub enum SendFailure {
    /// The gateway answered, or the request never left: nothing was sent.
    NotSent(HostError),
    /// The request may have reached the gateway (timeout, broken
    /// connection after writing).
    InDoubt(HostError),
}

/// Connections to the gateway kept open between sends, per tenant.
const IDLE_CONNECTIONS: usize = 32;

impl Messenger {
    pub fn new(whapi: ResolvedWhapi) -> Messenger {
        // A tenant's deliveries send at once (4 by default): each
        // connection goes back to the pool after its send, where ureq's
        // default of 3 idle per host would close one and open (with TLS) a
        // new one every few replies.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .max_idle_connections(IDLE_CONNECTIONS)
            .max_idle_connections_per_host(IDLE_CONNECTIONS)
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
    ) -> Result<SentMessage, SendFailure> {
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
                let never_left = match &e {
                    ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
                    ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
                    _ => false,
                };
                let err = HostError::Unavailable("gateway unreachable".into());
                return Err(if never_left {
                    SendFailure::NotSent(err)
                } else {
                    SendFailure::InDoubt(err)
                });
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
            429 | 500..=599 => Err(SendFailure::NotSent(HostError::Unavailable(format!(
                "gateway answered {status}"
            )))),
            _ => Err(SendFailure::NotSent(HostError::Other(format!(
                "gateway refused the message ({status})"
            )))),
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
            let unavailable = |_| HostError::Unavailable("storage unavailable".into());
            if !self.resend {
                match self.store.send_state(&idem_key).map_err(unavailable)? {
                    None => {}
                    Some(SendState::Sent(id)) => {
                        tracing::info!(tenant = %self.tenant, plugin = %self.plugin, idem_key, "send already made; not sending again");
                        return Ok(id);
                    }
                    Some(SendState::InDoubt {
                        recipient,
                        text,
                        watermark,
                        started_at,
                    }) => {
                        if let Some(id) = self
                            .store
                            .reconcile_send(&idem_key, &self.tenant, &recipient, &text, watermark)
                            .map_err(unavailable)?
                        {
                            tracing::info!(tenant = %self.tenant, plugin = %self.plugin, idem_key, message_id = %id, "unconfirmed send found in the gateway's echo; not sending again");
                            return Ok(Some(id));
                        }
                        let waited =
                            crate::store::now_ms().saturating_sub(started_at).max(0) as u64;
                        if waited < messenger.whapi.echo_wait.as_millis() as u64
                            && !self.last_attempt
                        {
                            return Err(HostError::Unavailable(
                                "an earlier attempt's send is unconfirmed; waiting for the gateway's message_sent echo".into(),
                            ));
                        }
                        tracing::warn!(tenant = %self.tenant, plugin = %self.plugin, idem_key, "no echo of an unconfirmed send; sending again");
                    }
                }
            }
            let timeout = self.remaining().min(Duration::from_secs(10));
            if timeout.is_zero() {
                return Err(HostError::Unavailable("delivery deadline reached".into()));
            }
            self.store
                .begin_send(NewSend {
                    idem_key: &idem_key,
                    tenant: &self.tenant,
                    plugin: &self.plugin,
                    event_seq: self.event_seq,
                    recipient: &message.to,
                    text: &message.text,
                })
                .map_err(unavailable)?;
            let sent = match messenger.send_text(&message, &idem_key, timeout) {
                Ok(sent) => sent,
                Err(SendFailure::NotSent(e)) => {
                    if let Err(err) = self.store.abandon_send(&idem_key) {
                        tracing::warn!(error = %err, "refused send left recorded as unconfirmed");
                    }
                    return Err(e);
                }
                Err(SendFailure::InDoubt(e)) => return Err(e),
            };
            if let Err(e) = self.store.confirm_send(&idem_key, sent.message_id.clone()) {
                tracing::error!(error = %e, "message sent but not confirmed; a retry will look for the gateway's echo");
            }
            tracing::info!(tenant = %self.tenant, plugin = %self.plugin, to = %message.to, "message sent");
            Ok(sent.message_id)
        })())
    }
}
