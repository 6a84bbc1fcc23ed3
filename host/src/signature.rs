//! `X-Whapi-Signature`: HMAC-SHA256 of the raw request body, hex encoded.
//!
//! Accepts lowercase or uppercase hex and an optional `sha256=` prefix; every
//! configured secret is tried (rotation) and compared in constant time.

use crate::config::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const HEADER: &str = "x-whapi-signature";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Whapi-Signature header")]
    Missing,
    #[error("malformed X-Whapi-Signature header: expected 64 hex digits")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes any key length")
}

fn mac(secret: &[u8], body: &[u8]) -> [u8; 32] {
    finish(keyed(secret), body)
}

fn finish(mut m: Hmac<Sha256>, body: &[u8]) -> [u8; 32] {
    m.update(body);
    m.finalize().into_bytes().into()
}

/// A tenant's secrets, each already mixed into the HMAC's inner and outer
/// keys (two of SHA-256's blocks that every signature would otherwise
/// hash again).
#[derive(Clone, Default)]
pub struct Keys(Vec<Hmac<Sha256>>);

impl Keys {
    pub fn new(secrets: &[Secret]) -> Keys {
        Keys(secrets.iter().map(|s| keyed(s.expose())).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} ***)", self.0.len())
    }
}

/// The header value for `body` signed with `secret` (lowercase hex).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    hex::encode(mac(secret, body))
}

/// Decodes a header value into the 32 MAC bytes.
fn parse(header: &[u8]) -> Result<[u8; 32], SignatureError> {
    let value = header.trim_ascii();
    let value = match value.get(..7) {
        Some(p) if p.eq_ignore_ascii_case(b"sha256=") => &value[7..],
        _ => value,
    };
    let mut out = [0u8; 32];
    if value.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    hex::decode_to_slice(value, &mut out).map_err(|_| SignatureError::Malformed)?;
    Ok(out)
}

/// Checks `header` against every secret. With no secret configured the
/// caller must not call this (unsigned tenants accept everything).
pub fn verify(
    secrets: &[Secret],
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<(), SignatureError> {
    verify_keys(&Keys::new(secrets), header, body)
}

/// [`verify`] with the secrets' keys prepared once ([`Keys`]).
pub fn verify_keys(keys: &Keys, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
    let given = parse(header.ok_or(SignatureError::Missing)?)?;
    // Try every secret without stopping early: the time taken does not tell
    // which secret matched.
    let mut ok = subtle::Choice::from(0);
    for k in &keys.0 {
        ok |= finish(k.clone(), body).ct_eq(&given);
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(list: &[&str]) -> Vec<Secret> {
        list.iter().map(|s| Secret::new(s.as_bytes())).collect()
    }

    // RFC 4231, test cases 1, 2 and 6 (HMAC-SHA-256).
    #[test]
    fn rfc4231_vectors() {
        assert_eq!(
            sign(&[0x0b; 20], b"Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            sign(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn good_signature() {
        let body = br#"{"event_type":"test_webhook"}"#;
        let sig = sign(b"s3cret", body);
        assert_eq!(
            verify(&secrets(&["s3cret"]), Some(sig.as_bytes()), body),
            Ok(())
        );
    }

    #[test]
    fn uppercase_prefix_and_whitespace() {
        let body = b"{}";
        let sig = sign(b"k", body);
        let s = secrets(&["k"]);
        assert_eq!(
            verify(&s, Some(sig.to_uppercase().as_bytes()), body),
            Ok(())
        );
        assert_eq!(
            verify(&s, Some(format!("sha256={sig}").as_bytes()), body),
            Ok(())
        );
        assert_eq!(
            verify(&s, Some(format!("SHA256={sig}").as_bytes()), body),
            Ok(())
        );
        assert_eq!(
            verify(&s, Some(format!(" {sig} ").as_bytes()), body),
            Ok(())
        );
    }

    #[test]
    fn bad_signature() {
        let body = b"{}";
        let mut sig = sign(b"k", body).into_bytes();
        sig[10] = if sig[10] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            verify(&secrets(&["k"]), Some(&sig), body),
            Err(SignatureError::Mismatch)
        );
        // Right signature, other body.
        let sig = sign(b"k", b"{ }");
        assert_eq!(
            verify(&secrets(&["k"]), Some(sig.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
        // Other secret.
        let sig = sign(b"other", body);
        assert_eq!(
            verify(&secrets(&["k"]), Some(sig.as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed() {
        let s = secrets(&["k"]);
        assert_eq!(verify(&s, None, b"{}"), Err(SignatureError::Missing));
        assert_eq!(verify(&s, Some(b""), b"{}"), Err(SignatureError::Malformed));
        let sig = sign(b"k", b"{}");
        assert_eq!(
            verify(&s, Some(&sig.as_bytes()[..63]), b"{}"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&s, Some(&sig.as_bytes()[..62]), b"{}"),
            Err(SignatureError::Malformed)
        );
        let long = format!("{sig}00");
        assert_eq!(
            verify(&s, Some(long.as_bytes()), b"{}"),
            Err(SignatureError::Malformed)
        );
        let nonhex = format!("zz{}", &sig[2..]);
        assert_eq!(
            verify(&s, Some(nonhex.as_bytes()), b"{}"),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&s, Some("é".repeat(32).as_bytes()), b"{}"),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn rotation_accepts_any_configured_secret() {
        let body = b"{\"a\":1}";
        let s = secrets(&["old", "new"]);
        assert_eq!(
            verify(&s, Some(sign(b"old", body).as_bytes()), body),
            Ok(())
        );
        assert_eq!(
            verify(&s, Some(sign(b"new", body).as_bytes()), body),
            Ok(())
        );
        assert_eq!(
            verify(&s, Some(sign(b"newer", body).as_bytes()), body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn empty_body() {
        // HMAC-SHA256 with key "key" over the empty message.
        assert_eq!(
            sign(b"key", b""),
            "5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0"
        );
        let s = secrets(&["key"]);
        assert_eq!(verify(&s, Some(sign(b"key", b"").as_bytes()), b""), Ok(()));
    }
}
