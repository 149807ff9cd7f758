//! The signature headers and verifier on arbitrary input: never panics, and
//! never accepts unless one `v1` entry is the HMAC of the id, timestamp and
//! body under one of the secret's keys.
//!
//! Input: five newline-separated fields — webhook-id, webhook-timestamp,
//! webhook-signature, secret, then the body (the rest, newlines and all).
//! When the first byte of the id is `+`, a valid signature is added to the
//! header, so the accepting path is explored too.
#![no_main]

use std::time::Duration;

use hookrelay::signature::{SignedHeaders, Verifier, keys_for_secret, sign};
use libfuzzer_sys::fuzz_target;

/// The fuzzer's clock: the PROTOCOL.md vectors' timestamp.
const NOW: i64 = 1_614_265_330;

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(5, |&b| b == b'\n');
    let (Some(id), Some(timestamp), Some(signature), Some(secret)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return;
    };
    let body = fields.next().unwrap_or_default();
    let (Ok(id), Ok(timestamp), Ok(signature), Ok(secret)) = (
        std::str::from_utf8(id),
        std::str::from_utf8(timestamp),
        std::str::from_utf8(signature),
        std::str::from_utf8(secret),
    ) else {
        return;
    };
    let Ok(keys) = keys_for_secret(secret) else { return };
    let verifier = Verifier::new(keys.clone(), Duration::from_secs(300));
    let expected: Vec<String> = keys.iter().map(|key| sign(key, id, timestamp, body)).collect();
    let signature =
        if id.starts_with('+') { format!("{signature} {}", expected[0]) } else { signature.to_owned() };

    let Ok(headers) = SignedHeaders::parse(Some(id), Some(timestamp), Some(&signature)) else { return };
    if verifier.verify(&headers, body, NOW).is_ok() {
        assert!(
            signature.split(' ').any(|entry| expected.iter().any(|e| e == entry)),
            "accepted without a valid MAC"
        );
        assert!((headers.timestamp_secs - NOW).abs() <= 300, "accepted outside the tolerance");
    }
});
