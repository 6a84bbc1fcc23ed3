//! Requests to a running server's admin API (`--url`, `--token`).

use super::Target;
use anyhow::Context;
use serde_json::Value;

/// A request to the admin API that the server answered with an error.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub(super) struct Refused {
    pub status: u16,
    pub message: String,
}

pub(super) fn remote(
    t: &Target,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!(
        "{}{}",
        t.url.as_deref().unwrap_or_default().trim_end_matches('/'),
        path
    );
    let agent = agent();
    let auth = format!("Bearer {}", t.token.as_deref().unwrap_or_default());
    let mut resp = match method {
        "POST" => agent
            .post(&url)
            .header("Authorization", &auth)
            .send_json(body.unwrap_or(Value::Object(Default::default()))),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    }
    .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        return Err(Refused {
            status,
            message: v["error"].as_str().unwrap_or("request failed").into(),
        }
        .into());
    }
    Ok(v)
}

/// An HTTP client for the CLI: error statuses are answers to read, not
/// errors; 30 s at most per request.
pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .new_agent()
}
