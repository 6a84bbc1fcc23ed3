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

fn url_and_auth(t: &Target, path: &str) -> (String, String) {
    let url = format!(
        "{}{}",
        super::with_scheme(t.url.as_deref().unwrap_or_default()).trim_end_matches('/'),
        path
    );
    let auth = format!("Bearer {}", t.token.as_deref().unwrap_or_default());
    (url, auth)
}

/// The server's error answer, `{"error": "..."}`.
fn refused(status: u16, mut resp: ureq::http::Response<ureq::Body>) -> Refused {
    let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    Refused {
        status,
        message: v["error"].as_str().unwrap_or("request failed").into(),
    }
}

pub(super) fn remote(
    t: &Target,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let (url, auth) = url_and_auth(t, path);
    let agent = agent();
    let mut resp = match method {
        "POST" => agent
            .post(&url)
            .header("Authorization", &auth)
            .send_json(body.unwrap_or(Value::Object(Default::default()))),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    }
    .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(refused(status, resp).into());
    }
    // A page of 100 000 deliveries is some 30 MB: past ureq's default
    // 10 MB, and an answer that cannot be read is an error, not nothing.
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(ANSWER_MAX_BYTES)
        .read_to_vec()
        .with_context(|| format!("reading the answer to {method} {url}"))?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).with_context(|| format!("the answer to {method} {url}"))
}

/// The largest admin API answer the commands read.
const ANSWER_MAX_BYTES: u64 = 1 << 30;

/// A GET of a key-value value, whose answer is raw bytes; `None` for the
/// route's own 404 ("no key ..."; an admin API that is off, or an older
/// server without the route, says otherwise, and is an error).
pub(super) fn remote_bytes(t: &Target, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let (url, auth) = url_and_auth(t, path);
    let mut resp = agent()
        .get(&url)
        .header("Authorization", &auth)
        .call()
        .with_context(|| format!("GET {url}"))?;
    match resp.status().as_u16() {
        200 => Ok(Some(resp.body_mut().read_to_vec()?)),
        status => match refused(status, resp) {
            r if r.status == 404 && r.message.starts_with("no key ") => Ok(None),
            r => Err(r.into()),
        },
    }
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
