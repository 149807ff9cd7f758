use std::collections::HashMap;

use super::*;

struct FakeEnv(HashMap<&'static str, &'static str>);

impl Environment for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|v| (*v).to_owned())
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        Path::new("/etc/hookrelay/hookrelay.toml"),
        text,
        &FakeEnv(HashMap::from([("SECRET", "whsec_dGVzdA==")])),
    )
}

const MINIMAL: &str = r#"
[sources.parallel]
secrets = ["env:SECRET"]
"#;

#[test]
fn minimal_config_takes_the_documented_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.server.max_body, 1 << 20);
    assert_eq!(config.server.header_timeout, Duration::from_secs(10));
    assert_eq!(config.admin.listen, "127.0.0.1:9180".parse().unwrap());
    assert_eq!(config.journal.path, Path::new("/etc/hookrelay/data"));
    assert_eq!(config.journal.dedup_window, Duration::from_secs(72 * 3600));
    let source = &config.sources["parallel"];
    assert_eq!(source.tolerance, Duration::from_secs(300));
    assert_eq!(source.secret_count, 1);
    assert_eq!(source.keys.len(), 2, "raw and decoded key");
    assert!(config.targets.is_empty());
}

#[test]
fn full_target_parses() {
    let config = parse(&format!(
        "{MINIMAL}\n{}",
        r#"
[targets.analytics]
source = "parallel"
url = "https://analytics.internal:9001/events"
secret = ["whsec_dGVzdA==", "env:SECRET"]
events = ["monitor.*"]
match = { "/data/metadata/team" = "research", "/data/n" = 3 }
rate_limit = { per_second = 50 }
concurrency = 2
timeout = "5s"
retry = { initial = "1s", max_delay = "1m", max_attempts = 3, max_age = "1h" }
"#
    ))
    .unwrap();
    let target = &config.targets["analytics"];
    assert_eq!(target.signing, Signing::Resign);
    assert_eq!(target.secrets.len(), 2);
    assert_eq!(target.rate_limit.unwrap().burst.get(), 50, "burst defaults to per_second");
    assert_eq!(target.retry.max_attempts.get(), 3);
    assert_eq!(target.match_["/data/n"], serde_json::json!(3));
}

#[test]
fn debug_output_has_no_secrets() {
    let config = parse(&format!(
        "{MINIMAL}\n[admin]\ntoken = \"admin-token-value\"\n[targets.t]\nsource = \"parallel\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"target-secret-value\"\n"
    ))
    .unwrap();
    let text = format!("{config:?}");
    for secret in ["admin-token-value", "target-secret-value", "dGVzdA", "whsec_"] {
        assert!(!text.contains(secret), "{secret} leaked into {text}");
    }
}

/// A value of the wrong type under a secret's key, or a URL that does not
/// parse because of its password, is named by its key, never echoed.
#[test]
fn errors_do_not_echo_secrets() {
    let cases = [
        (
            "[sources.parallel]\nsecrets = \"whsec_c2VjcmV0LXZhbHVl\"\n",
            "sources.parallel.secrets",
            "c2VjcmV0LXZhbHVl",
        ),
        ("[sources.parallel]\nsecrets = [4242424242]\n", "sources.parallel.secrets[0]", "4242424242"),
        (&format!("{MINIMAL}\n[admin]\ntoken = 987654321\n"), "admin.token", "987654321"),
        (
            &format!(
                "{MINIMAL}\n[targets.t]\nsource = \"parallel\"\nurl = \"http://127.0.0.1:1/\"\nsecret = {{ value = \"tok-3141\" }}\n"
            ),
            "targets.t.secret",
            "tok-3141",
        ),
        (
            &format!(
                "{MINIMAL}\n[targets.t]\nsource = \"parallel\"\nurl = \"https://user:pa ss#word@example.com/\"\nsigning = \"none\"\n"
            ),
            "targets.t.url",
            "pa ss",
        ),
    ];
    for (text, key, secret) in cases {
        let err = parse(text).unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(!err.to_string().contains(secret), "{secret} leaked into {err}");
    }
    let err = parse("[sources.parallel]\nsecrets = \"whsec_c2VjcmV0LXZhbHVl\"\n").unwrap_err();
    assert!(err.message.contains("expected a sequence"), "what was expected stays: {err}");
}

#[test]
fn the_dedup_window_covers_every_source_tolerance_both_ways() {
    let config = |window: &str, tolerance: &str| {
        parse(&format!(
            "[journal]\ndedup_window = \"{window}\"\nretention = \"7d\"\n[sources.parallel]\nsecrets = [\"env:SECRET\"]\ntolerance = \"{tolerance}\"\n"
        ))
    };
    let err = config("1m", "5m").unwrap_err();
    assert_eq!(err.key, "sources.parallel.tolerance", "{err}");
    assert!(err.message.contains("half of journal.dedup_window"), "{err}");
    assert_eq!(config("9m", "5m").unwrap_err().key, "sources.parallel.tolerance");
    assert!(config("10m", "5m").is_ok());
}

/// With `DynamicUser=`, the service cannot read a key file only root may;
/// `LoadCredential=` copies it in, and `credential:NAME` finds the copy.
#[test]
fn tls_files_may_come_from_systemd_credentials() {
    let credentials = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(credentials.path().join("tls-cert"), certified.cert.pem()).unwrap();
    std::fs::write(credentials.path().join("tls-key"), certified.signing_key.serialize_pem()).unwrap();
    let text = format!(
        "[server]\ntls = {{ cert = \"credential:tls-cert\", key = \"credential:tls-key\" }}\n{MINIMAL}"
    );
    let dir: &'static str = Box::leak(credentials.path().display().to_string().into_boxed_str());
    let env = FakeEnv(HashMap::from([("SECRET", "whsec_dGVzdA=="), ("CREDENTIALS_DIRECTORY", dir)]));
    let config = Config::parse(Path::new("/etc/hookrelay/hookrelay.toml"), &text, &env).unwrap();
    assert!(config.server.tls.is_some());

    let err = parse(&text).unwrap_err();
    assert_eq!(err.key, "server.tls.cert");
    assert!(err.message.contains("$CREDENTIALS_DIRECTORY"), "{err}");
    let err =
        Config::parse(Path::new("/etc/hookrelay/hookrelay.toml"), &text.replace("tls-key", "../key"), &env)
            .unwrap_err();
    assert_eq!(err.key, "server.tls.key");
    assert!(err.message.contains("without slashes"), "{err}");
}

#[test]
fn errors_carry_file_line_and_key() {
    let err = parse(&format!("{MINIMAL}\n[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n")).unwrap_err();
    assert_eq!(err.file, Path::new("/etc/hookrelay/hookrelay.toml"));
    assert_eq!(err.key, "server.lisen");
    assert_eq!(err.line, Some(7));
    assert!(err.message.contains("unknown field `lisen`"), "{err}");
    assert!(
        err.to_string().starts_with("/etc/hookrelay/hookrelay.toml:7: server.lisen: unknown field `lisen`"),
        "{err}"
    );
}

#[test]
fn journal_path_may_start_at_the_systemd_state_directory() {
    let env = FakeEnv(HashMap::from([
        ("SECRET", "whsec_dGVzdA=="),
        ("STATE_DIRECTORY", "/var/lib/hookrelay:/var/lib/other"),
    ]));
    let text = format!("[journal]\npath = \"$STATE_DIRECTORY/journal\"\n{MINIMAL}");
    let config = Config::parse(Path::new("/etc/hookrelay/hookrelay.toml"), &text, &env).unwrap();
    assert_eq!(config.journal.path, Path::new("/var/lib/hookrelay/journal"));
    let text = format!("[journal]\npath = \"$STATE_DIRECTORY\"\n{MINIMAL}");
    let config = Config::parse(Path::new("/etc/hookrelay/hookrelay.toml"), &text, &env).unwrap();
    assert_eq!(config.journal.path, Path::new("/var/lib/hookrelay"));

    let err = parse(&format!("[journal]\npath = \"$STATE_DIRECTORY/journal\"\n{MINIMAL}")).unwrap_err();
    assert_eq!(err.key, "journal.path");
    assert!(err.message.contains("StateDirectory="), "{err}");
}

#[test]
fn a_source_may_carry_a_parallel_api_key_with_defaults() {
    let config = parse(&format!("{MINIMAL}[sources.parallel.parallel]\napi_key = \"env:SECRET\"\n")).unwrap();
    let parallel = config.sources["parallel"].parallel.as_ref().unwrap();
    assert_eq!(parallel.base_url, "https://api.parallel.ai");
    assert_eq!(parallel.timeout, Duration::from_secs(30));
    assert_eq!(parallel.rate_limit.per_second.get(), 5);
    assert!(!format!("{config:?}").contains("whsec_dGVzdA=="), "the key stays out of Debug output");
    assert_eq!(parallel.reconcile, None);
    let scheduled = parse(&format!(
        "{MINIMAL}[sources.parallel.parallel]\napi_key = \"env:SECRET\"\nreconcile = {{ monitors = [\"monitor_a\"] }}\n"
    ))
    .unwrap();
    let reconcile = scheduled.sources["parallel"].parallel.as_ref().unwrap().reconcile.clone().unwrap();
    assert_eq!(
        (reconcile.monitors, reconcile.every, reconcile.lookback),
        (vec!["monitor_a".to_owned()], Duration::from_secs(3600), Duration::from_secs(72 * 3600))
    );
    assert!(parse(MINIMAL).unwrap().sources["parallel"].parallel.is_none());
    for (extra, key) in [
        ("api_key = \"\"", "sources.parallel.parallel.api_key"),
        ("api_key = \"env:NOPE\"", "sources.parallel.parallel.api_key"),
        ("api_key = \"env:SECRET\"\nbase_url = \"ftp://x\"", "sources.parallel.parallel.base_url"),
        ("api_key = \"env:SECRET\"\nbase_url = \"http://api.example.com\"", "must be https://"),
        ("api_key = \"env:SECRET\"\ntimeout = \"0s\"", "sources.parallel.parallel.timeout"),
        (
            "api_key = \"env:SECRET\"\nrate_limit = { per_second = 0 }",
            "sources.parallel.parallel.rate_limit.per_second",
        ),
        ("api_key = \"env:SECRET\"\nenrich = true", "enrich"),
        (
            "api_key = \"env:SECRET\"\nreconcile = { monitors = [] }",
            "sources.parallel.parallel.reconcile.monitors",
        ),
        (
            "api_key = \"env:SECRET\"\nreconcile = { monitors = [\"m\"], every = \"500ms\" }",
            "reconcile.every",
        ),
    ] {
        let err = parse(&format!("{MINIMAL}[sources.parallel.parallel]\n{extra}\n")).unwrap_err().to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
    // A backfill looks back to the start of a day and never past retention:
    // a retention of a day leaves a reconcile nothing to look at.
    let short = "[journal]\ndedup_window = \"24h\"\nretention = \"24h\"\n";
    let reconcile =
        "[sources.parallel.parallel]\napi_key = \"env:SECRET\"\nreconcile = { monitors = [\"m\"] }\n";
    let err = parse(&format!("{short}{MINIMAL}{reconcile}")).unwrap_err();
    assert_eq!(err.key, "sources.parallel.parallel.reconcile", "{err}");
    assert!(err.message.contains("longer than a day"), "{err}");
    assert!(
        parse(&format!(
            "{}{MINIMAL}{reconcile}",
            short.replace("retention = \"24h\"", "retention = \"26h\"")
        ))
        .is_ok()
    );
}
