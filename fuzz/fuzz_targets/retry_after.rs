//! A target's `Retry-After` (seconds or an HTTP date) on arbitrary text and
//! clocks: never panics.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use hookrelay::delivery::policy::parse_retry_after;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((clock, value)) = data.split_first_chunk::<4>() else { return };
    let Ok(value) = std::str::from_utf8(value) else { return };
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(u32::from_le_bytes(*clock)) * 4);
    let _ = parse_retry_after(value, now);
});
