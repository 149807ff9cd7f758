//! Realistic Parallel-shaped webhook bodies for the benches, shared by the
//! footprint and load benches so both measure the same deliveries.
//!
//! A real source sends random webhook and event-group ids and prose, never
//! a padded body with counting ids: random keys cost sled far more (see
//! BENCHMARKS.md, "Realistic deliveries"), and one repeated byte as padding
//! would flatter any compression.

// Each bench uses only part of this module.
#![allow(dead_code)]

/// Every body is exactly this long.
pub const BODY_BYTES: usize = 1024;

/// A small deterministic generator (xorshift64*), so every run writes the
/// same varied journal.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn hex(&mut self, len: usize) -> String {
        (0..len).map(|_| char::from(self.hex_digit())).collect()
    }

    /// Overwrites `digits` with random hex digits, in place.
    pub fn fill_hex(&mut self, digits: &mut [u8]) {
        digits.iter_mut().for_each(|digit| *digit = self.hex_digit());
    }

    fn hex_digit(&mut self) -> u8 {
        b"0123456789abcdef"[(self.next() % 16) as usize]
    }

    pub fn base64(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        (0..len).map(|_| char::from(ALPHABET[(self.next() % 64) as usize])).collect()
    }

    /// `len` bytes of real English prose: a window of this repository's
    /// README, whitespace squeezed, with JSON's special characters dropped.
    pub fn prose(&mut self, len: usize) -> String {
        static WORDS: std::sync::OnceLock<Vec<&str>> = std::sync::OnceLock::new();
        let words = WORDS.get_or_init(|| {
            include_str!("../../README.md")
                .split_whitespace()
                .filter(|w| w.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
                .collect()
        });
        let mut text = String::with_capacity(len + 16);
        let mut at = (self.next() % words.len() as u64) as usize;
        while text.len() < len {
            text.push_str(words[at % words.len()]);
            text.push(' ');
            at += 1;
        }
        text.truncate(len);
        text
    }
}

/// An enriched `monitor.event.detected` (PROTOCOL.md), [`BODY_BYTES`] long.
pub struct Detection {
    pub body: Vec<u8>,
    /// One of 20 monitors.
    pub monitor: String,
    /// `mevtgrp_` and 16 random hex digits.
    pub group: String,
    /// Where the group's hex digits sit in `body`: a sender of many
    /// detections can give each a new group by rewriting them.
    pub group_digits: std::ops::Range<usize>,
}

/// A detection sent at `seconds` (Unix time): random group and event ids,
/// one of 20 monitors and four teams, a cited finding in prose.
pub fn detection(rng: &mut Rng, seconds: u64) -> Detection {
    const TEAMS: [&str; 4] = ["research", "sales", "risk", "platform"];
    let monitor = format!("monitor_{:016x}", (rng.next() % 20).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let group = format!("mevtgrp_{}", rng.hex(16));
    let timestamp = hookrelay::time::rfc3339(seconds);
    let head = format!(
        r#"{{"type":"monitor.event.detected","timestamp":"{timestamp}","data":{{"monitor_id":"{monitor}","event":{{"event_group_id":"{group}"}},"metadata":{{"team":"{}","customer":"cust_{}"}},"events":[{{"event_type":"event_stream","event_id":"mevt_{}","event_date":"2027-01-1{}","output":{{"type":"text","content":""#,
        TEAMS[(rng.next() % 4) as usize],
        rng.hex(8),
        rng.hex(16),
        rng.next() % 10,
    );
    let url = format!("https://news.example{}.com/{}/{}", rng.next() % 50, rng.hex(6), rng.hex(10));
    let excerpt = rng.prose(120);
    let tail = format!(
        r#""}},"basis":[{{"field":"content","citations":[{{"url":"{url}","excerpts":["{excerpt}"]}}],"confidence":"high"}}]}}]}}}}"#
    );
    let content = rng.prose(BODY_BYTES - head.len() - tail.len());
    let body = [head.as_str(), &content, &tail].concat().into_bytes();
    debug_assert_eq!(body.len(), BODY_BYTES);
    let at = head.find(&group).expect("the group is in the head") + "mevtgrp_".len();
    Detection { body, monitor, group, group_digits: at..at + 16 }
}
