//! The config parser on arbitrary text, with its duration, size and secret
//! reference forms: an error or a config, never a panic. Secrets resolve
//! against a fake environment. Inputs with `file:` secrets or naming device
//! and kernel files are skipped: reading /dev/zero as a certificate would
//! only measure RAM.
#![no_main]

use std::path::Path;

use hookrelay::config::{Config, Environment, parse_duration, parse_size};
use libfuzzer_sys::fuzz_target;

struct FuzzEnv;

impl Environment for FuzzEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "PARALLEL_WEBHOOK_SECRET" => Some("whsec_ZnV6ei1zZWNyZXQ=".into()),
            "STATE_DIRECTORY" => Some("/var/lib/hookrelay".into()),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if ["/dev", "/proc", "/sys", "file:"].iter().any(|risky| text.contains(risky)) {
        return;
    }
    if let Ok(config) = Config::parse(Path::new("/fuzz/hookrelay.toml"), text, &FuzzEnv) {
        // Debug output never carries the secrets it resolved.
        assert!(!format!("{config:?}").contains("whsec_ZnV6ei1zZWNyZXQ="));
    }
    for line in text.lines().take(8) {
        let _ = parse_duration(line);
        let _ = parse_size(line);
    }
});
