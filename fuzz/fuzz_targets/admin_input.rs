//! What the admin API parses from an operator's request: replay selections
//! (JSON bodies) and delivery and replay ids. Never panics.
#![no_main]

use hookrelay::journal::{DeliveryId, ReplayId};
use hookrelay::replay::Selection;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Selection::from_json(data, 1_800_000_000_000);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(id) = text.parse::<DeliveryId>() {
            assert_eq!(id.to_string(), text.to_ascii_lowercase());
        }
        if let Ok(id) = text.parse::<ReplayId>() {
            assert_eq!(id.to_string(), text.to_ascii_lowercase());
        }
    }
});
