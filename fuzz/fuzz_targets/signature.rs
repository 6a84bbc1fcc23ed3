//! Any header and body: verification never panics, accepts the right
//! signature in every accepted spelling, and refuses a flipped one.
#![no_main]

use hookhost_fuzz::config::Secret;
use hookhost_fuzz::signature::{sign, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], &[u8], &[u8])| {
    let (secret, header, body) = input;
    let secrets = [Secret::new(secret.to_vec())];
    let _ = verify(&secrets, Some(header), body);
    let good = sign(secret, body);
    assert!(verify(&secrets, Some(good.as_bytes()), body).is_ok());
    assert!(verify(&secrets, Some(good.to_uppercase().as_bytes()), body).is_ok());
    assert!(verify(&secrets, Some(format!("sha256={good}").as_bytes()), body).is_ok());
    let mut bad = good.into_bytes();
    bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
    assert!(verify(&secrets, Some(&bad), body).is_err());
});
