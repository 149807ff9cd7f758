//! The config file: serde structs that mirror the TOML (unknown keys are
//! errors), then one validation pass into the typed [`Config`] the gateway
//! runs on. Every error names the file, the key and what is wrong; secrets are
//! resolved here and never printed.

mod secret;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Deserialize;

pub use secret::{Environment, ProcessEnv, Secret, SecretRef};
pub use units::{HumanDuration, HumanSize, parse_duration, parse_size};

use crate::signature::{self, SigningKey};
use crate::tls::{ServerTls, TlsFile};

/// A config problem: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Line in the file, when the problem is tied to one.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `targets.analytics.url`; empty for the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    journal: RawJournal,
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "defaults::server_listen")]
    listen: String,
    tls: Option<RawTls>,
    #[serde(default = "defaults::max_body")]
    max_body: HumanSize,
    #[serde(default = "defaults::header_timeout")]
    header_timeout: HumanDuration,
    #[serde(default = "defaults::body_timeout")]
    body_timeout: HumanDuration,
    #[serde(default = "defaults::shutdown_grace")]
    shutdown_grace: HumanDuration,
    #[serde(default = "defaults::max_connections")]
    max_connections: u32,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: defaults::server_listen(),
            tls: None,
            max_body: defaults::max_body(),
            header_timeout: defaults::header_timeout(),
            body_timeout: defaults::body_timeout(),
            shutdown_grace: defaults::shutdown_grace(),
            max_connections: defaults::max_connections(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "defaults::admin_listen")]
    listen: String,
    token: Option<SecretRef>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { listen: defaults::admin_listen(), token: None }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    #[serde(default = "defaults::journal_path")]
    path: PathBuf,
    #[serde(default = "defaults::dedup_window")]
    dedup_window: HumanDuration,
    #[serde(default = "defaults::retention")]
    retention: HumanDuration,
    #[serde(default = "defaults::cache")]
    cache: HumanSize,
    max_disk: Option<HumanSize>,
}

impl Default for RawJournal {
    fn default() -> Self {
        RawJournal {
            path: defaults::journal_path(),
            dedup_window: defaults::dedup_window(),
            retention: defaults::retention(),
            cache: defaults::cache(),
            max_disk: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    secrets: Vec<SecretRef>,
    #[serde(default = "defaults::tolerance")]
    tolerance: HumanDuration,
    rate_limit: Option<RawRateLimit>,
    parallel: Option<RawParallel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParallel {
    api_key: SecretRef,
    #[serde(default = "defaults::parallel_base_url")]
    base_url: String,
    #[serde(default = "defaults::parallel_timeout")]
    timeout: HumanDuration,
    rate_limit: Option<RawRateLimit>,
    reconcile: Option<RawReconcile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    monitors: Vec<String>,
    #[serde(default = "defaults::reconcile_every")]
    every: HumanDuration,
    #[serde(default = "defaults::reconcile_lookback")]
    lookback: HumanDuration,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: u32,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    source: String,
    url: String,
    #[serde(default)]
    secret: OneOrMany<SecretRef>,
    signing: Option<Signing>,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default, rename = "match")]
    match_: BTreeMap<String, serde_json::Value>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default = "defaults::concurrency")]
    concurrency: u32,
    #[serde(default = "defaults::target_timeout")]
    timeout: HumanDuration,
    #[serde(default)]
    retry: RawRetry,
    /// Extra CA certificates (PEM) trusted for this target's https URL.
    ca_file: Option<PathBuf>,
    #[serde(default)]
    breaker: RawBreaker,
    /// Attach Parallel's content (events of a detection, a task's result).
    #[serde(default)]
    enrich: bool,
    /// What a target with `enrich` gets when the content cannot be fetched.
    #[serde(default)]
    enrich_failure: EnrichFailure,
}

/// When enrichment ultimately fails: send the original payload (marked), or
/// count it as a failed attempt and retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrichFailure {
    #[default]
    SendOriginal,
    Wait,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default = "defaults::breaker_failures")]
    failures: u32,
    #[serde(default = "defaults::breaker_probe_interval")]
    probe_interval: HumanDuration,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            failures: defaults::breaker_failures(),
            probe_interval: defaults::breaker_probe_interval(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default = "defaults::retry_initial")]
    initial: HumanDuration,
    #[serde(default = "defaults::retry_max_delay")]
    max_delay: HumanDuration,
    #[serde(default = "defaults::retry_max_attempts")]
    max_attempts: u32,
    #[serde(default = "defaults::retry_max_age")]
    max_age: HumanDuration,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            initial: defaults::retry_initial(),
            max_delay: defaults::retry_max_delay(),
            max_attempts: defaults::retry_max_attempts(),
            max_age: defaults::retry_max_age(),
        }
    }
}

/// A key that takes one value or a list (`secret = "..."` or `secret = [..]`).
#[derive(Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

mod defaults {
    use super::{HumanDuration, HumanSize};
    use std::path::PathBuf;
    use std::time::Duration;

    const fn secs(n: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(n))
    }
    pub fn server_listen() -> String {
        "127.0.0.1:8080".into()
    }
    pub fn admin_listen() -> String {
        "127.0.0.1:9180".into()
    }
    pub fn max_body() -> HumanSize {
        HumanSize(1 << 20)
    }
    pub fn max_connections() -> u32 {
        1024
    }

    pub fn header_timeout() -> HumanDuration {
        secs(10)
    }
    pub fn body_timeout() -> HumanDuration {
        secs(30)
    }
    pub fn shutdown_grace() -> HumanDuration {
        secs(30)
    }
    pub fn journal_path() -> PathBuf {
        "data".into()
    }
    pub fn dedup_window() -> HumanDuration {
        secs(72 * 3600)
    }
    pub fn retention() -> HumanDuration {
        secs(30 * 86400)
    }
    pub fn cache() -> HumanSize {
        HumanSize(64 << 20)
    }
    pub fn parallel_base_url() -> String {
        "https://api.parallel.ai".to_owned()
    }
    pub fn parallel_timeout() -> HumanDuration {
        secs(30)
    }
    pub const PARALLEL_PER_SECOND: u32 = 5;
    pub fn reconcile_every() -> HumanDuration {
        secs(3600)
    }
    pub fn reconcile_lookback() -> HumanDuration {
        secs(72 * 3600)
    }
    pub fn tolerance() -> HumanDuration {
        secs(300)
    }
    pub fn concurrency() -> u32 {
        4
    }
    pub fn target_timeout() -> HumanDuration {
        secs(15)
    }
    pub fn retry_initial() -> HumanDuration {
        secs(5)
    }
    pub fn retry_max_delay() -> HumanDuration {
        secs(3600)
    }
    pub fn retry_max_attempts() -> u32 {
        20
    }
    pub fn retry_max_age() -> HumanDuration {
        secs(48 * 3600)
    }
    pub fn breaker_failures() -> u32 {
        10
    }
    pub fn breaker_probe_interval() -> HumanDuration {
        secs(30)
    }
}

// ---------------------------------------------------------------------------
// The validated config.

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub file: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub journal: JournalConfig,
    pub sources: BTreeMap<String, SourceConfig>,
    pub targets: BTreeMap<String, TargetConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<ServerTls>,
    pub max_body: u64,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Open inbound connections at most; further ones wait in the backlog.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
}

impl Config {
    /// This config with the journal settings of a running gateway, which
    /// are fixed at its start, checked again: a reload applies everything
    /// else, so a source's `tolerance` or `reconcile` must fit the journal
    /// really in force, and backfill must look back no further than the
    /// retention really pruning, not one that takes a restart.
    pub fn with_running_journal(mut self, running: &JournalConfig) -> Result<Config, ConfigError> {
        self.journal = running.clone();
        for (name, source) in &self.sources {
            source_fits_journal(name, source, &self.journal).map_err(|(key, message)| ConfigError {
                file: self.file.clone(),
                line: None,
                key,
                message: format!("{message} (the running journal's: journal.* changes take a restart)"),
            })?;
        }
        Ok(self)
    }
}

/// The checks between a source and the journal: the key at fault and why.
fn source_fits_journal(
    name: &str,
    source: &SourceConfig,
    journal: &JournalConfig,
) -> Result<(), (String, String)> {
    // A webhook verifies for `tolerance` either side of its timestamp; a
    // captured one resent after its dedup entry expired would be journaled
    // and fanned out again.
    if journal.dedup_window < 2 * source.tolerance {
        return Err((
            format!("sources.{name}.tolerance"),
            format!(
                "must be at most half of journal.dedup_window ({:?}), not {:?}: a webhook verifies for the tolerance either side of its timestamp, and a resent one must still be recognised as a duplicate",
                journal.dedup_window, source.tolerance
            ),
        ));
    }
    if let Some(reconcile) = source.parallel.as_ref().and_then(|parallel| parallel.reconcile.as_ref())
        && crate::backfill::reconcile_lookback(reconcile.lookback, journal.retention).is_zero()
    {
        return Err((
            format!("sources.{name}.parallel.reconcile"),
            format!(
                "needs journal.retention longer than a day and a minute, not {:?}: a backfill looks back to the start of a day, and never past retention",
                journal.retention
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Absolute, or relative to the working directory (already joined with
    /// the config file's directory).
    pub path: PathBuf,
    pub dedup_window: Duration,
    pub retention: Duration,
    /// sled's page cache, in bytes; bounds the journal's memory.
    pub cache: u64,
    /// Size on disk past which ingress answers 503 instead of writing.
    pub max_disk: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    /// Every HMAC key of every listed secret (see `signature::keys_for_secret`).
    pub keys: Vec<SigningKey>,
    pub secret_count: usize,
    pub tolerance: Duration,
    pub rate_limit: Option<RateLimit>,
    /// `[sources.NAME.parallel]`: the Parallel API, for backfill.
    pub parallel: Option<ParallelConfig>,
}

/// How hookrelay calls Parallel's API on behalf of a source.
#[derive(Debug, Clone)]
pub struct ParallelConfig {
    /// Sent as `x-api-key`; never logged, never shown.
    pub api_key: Secret,
    pub base_url: hyper::Uri,
    /// Per request, each try.
    pub timeout: Duration,
    /// The gateway's own limit on its calls to the API.
    pub rate_limit: RateLimit,
    /// Backfill these monitors periodically, without an operator.
    pub reconcile: Option<Reconcile>,
}

/// `[sources.NAME.parallel.reconcile]`: a backfill of each monitor every
/// `every`, looking `lookback` back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconcile {
    pub monitors: Vec<String>,
    pub every: Duration,
    pub lookback: Duration,
}

/// How a target's requests are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signing {
    /// Re-sign with the target's own secret(s).
    Resign,
    /// Forward Parallel's original signature headers unchanged.
    Passthrough,
    /// Send no signature at all (must be chosen explicitly).
    None,
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: String,
    pub source: String,
    pub url: hyper::Uri,
    pub signing: Signing,
    pub secrets: Vec<Secret>,
    pub events: Vec<String>,
    /// JSON-pointer → value equalities the body must satisfy.
    pub match_: BTreeMap<String, serde_json::Value>,
    pub rate_limit: Option<RateLimit>,
    pub concurrency: NonZeroU32,
    pub timeout: Duration,
    pub retry: RetryConfig,
    /// CA certificates from `ca_file`, trusted besides the system's roots.
    pub ca_certs: Vec<CertificateDer<'static>>,
    pub breaker: BreakerConfig,
    /// `enrich = true`: what to do when the content cannot be fetched.
    pub enrich: Option<EnrichFailure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that pause the target.
    pub failures: NonZeroU32,
    /// How often a paused target is probed with one job.
    pub probe_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    pub initial: Duration,
    pub max_delay: Duration,
    pub max_attempts: NonZeroU32,
    pub max_age: Duration,
}

impl Config {
    /// Reads, parses and validates a config file against the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_owned(),
            line: None,
            key: String::new(),
            message: format!("cannot read config file: {err}"),
        })?;
        Config::parse(path, &text, &ProcessEnv)
    }

    /// Parses and validates config text; `path` names the file in errors and
    /// anchors relative paths.
    pub fn parse(path: &Path, text: &str, env: &dyn Environment) -> Result<Config, ConfigError> {
        let raw = parse_raw(path, text)?;
        Validator { file: path, base_dir: base_dir(path), env }.config(raw)
    }
}

fn base_dir(config_file: &Path) -> PathBuf {
    match config_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn parse_raw(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let error = |key: String, err: &toml::de::Error| ConfigError {
        file: path.to_owned(),
        line: err.span().map(|span| line_of(text, span.start)),
        key,
        message: err.message().trim_end().to_owned(),
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|err| error(String::new(), &err))?;
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let mut error = error(key, err.inner());
        if holds_secret(&error.key) && error.message.starts_with("invalid ") {
            error.message = without_the_value(&error.message);
        }
        error
    })
}

/// Keys whose values are secrets or references to them. serde's type errors
/// quote the value (`invalid type: string "whsec_…", expected a sequence`:
/// `secrets = "whsec_…"` is an easy slip), and config errors reach stderr,
/// the journal and the reload log.
fn holds_secret(key: &str) -> bool {
    let field = key.rsplit('.').next().unwrap_or(key);
    let field = field.split('[').next().unwrap_or(field);
    matches!(field, "secrets" | "secret" | "token" | "api_key")
}

/// serde's message without the value it quotes: what was expected stays.
fn without_the_value(message: &str) -> String {
    let kind = if message.starts_with("invalid type") { "invalid type" } else { "invalid value" };
    let expected = message.find(", expected").map_or("", |at| &message[at..]);
    format!("{kind} (the value is not shown: it may be a secret){expected}")
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

struct Validator<'a> {
    file: &'a Path,
    base_dir: PathBuf,
    env: &'a dyn Environment,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        // (see `source_fits_journal` below for the checks across sections)
        ConfigError { file: self.file.to_owned(), line: None, key: key.into(), message: message.into() }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let admin = self.admin(raw.admin)?;
        let journal = self.journal(raw.journal)?;
        if raw.sources.is_empty() {
            return Err(self.err("sources", "at least one [sources.NAME] table is required"));
        }
        let mut sources = BTreeMap::new();
        for (name, source) in raw.sources {
            let validated = self.source(&name, source)?;
            source_fits_journal(&name, &validated, &journal)
                .map_err(|(key, message)| self.err(key, message))?;
            sources.insert(name, validated);
        }
        let mut targets = BTreeMap::new();
        for (name, target) in raw.targets {
            let validated = self.target(&name, target, &sources)?;
            targets.insert(name, validated);
        }
        Ok(Config { file: self.file.to_owned(), server, admin, journal, sources, targets })
    }

    fn listen(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.err(key, format!("{text:?} is not an address like \"127.0.0.1:8080\" or \"[::1]:8080\""))
        })
    }

    fn positive(&self, key: &str, value: Duration) -> Result<Duration, ConfigError> {
        if value.is_zero() {
            return Err(self.err(key, "must be longer than zero"));
        }
        Ok(value)
    }

    /// A file the config names: relative to the config's directory, or
    /// `credential:NAME` for `$CREDENTIALS_DIRECTORY/NAME` — how a unit with
    /// `DynamicUser=` reads a file only root may (`LoadCredential=`).
    fn file_path(&self, key: &str, path: &Path) -> Result<PathBuf, ConfigError> {
        match path.to_str().and_then(|text| text.strip_prefix("credential:")) {
            Some(name) => secret::credential_path(name, self.env).map_err(|message| self.err(key, message)),
            None => Ok(self.base_dir.join(path)),
        }
    }

    fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
        let tls = raw
            .tls
            .map(|tls| {
                let cert = self.file_path("server.tls.cert", &tls.cert)?;
                let key = self.file_path("server.tls.key", &tls.key)?;
                ServerTls::load(&cert, &key).map_err(|err| {
                    let key = match err.file {
                        TlsFile::Cert => "server.tls.cert",
                        TlsFile::Key => "server.tls.key",
                    };
                    self.err(key, err.message)
                })
            })
            .transpose()?;
        if raw.max_body.0 == 0 {
            return Err(self.err("server.max_body", "must be larger than zero"));
        }
        if raw.max_connections == 0 {
            return Err(self.err("server.max_connections", "must be at least 1"));
        }
        Ok(ServerConfig {
            listen: self.listen("server.listen", &raw.listen)?,
            tls,
            max_body: raw.max_body.0,
            header_timeout: self.positive("server.header_timeout", raw.header_timeout.0)?,
            body_timeout: self.positive("server.body_timeout", raw.body_timeout.0)?,
            shutdown_grace: raw.shutdown_grace.0,
            max_connections: raw.max_connections as usize,
        })
    }

    fn admin(&self, raw: RawAdmin) -> Result<AdminConfig, ConfigError> {
        let listen = self.listen("admin.listen", &raw.listen)?;
        let token = raw
            .token
            .map(|token| token.resolve(&self.base_dir, self.env).map_err(|msg| self.err("admin.token", msg)))
            .transpose()?;
        if token.is_none() && !listen.ip().is_loopback() {
            return Err(self.err(
                "admin.token",
                format!("required because admin.listen ({listen}) is not a loopback address"),
            ));
        }
        Ok(AdminConfig { listen, token })
    }

    fn journal(&self, raw: RawJournal) -> Result<JournalConfig, ConfigError> {
        if raw.path.as_os_str().is_empty() {
            return Err(self.err("journal.path", "must not be empty"));
        }
        let path = self.state_directory(&raw.path)?;
        let dedup_window = self.positive("journal.dedup_window", raw.dedup_window.0)?;
        let retention = self.positive("journal.retention", raw.retention.0)?;
        if retention < dedup_window {
            // Else a repeated webhook would be answered with the id of a
            // delivery already pruned.
            return Err(self.err(
                "journal.retention",
                format!("must be at least journal.dedup_window ({dedup_window:?}), not {retention:?}"),
            ));
        }
        Ok(JournalConfig {
            path: self.base_dir.join(path),
            dedup_window,
            retention,
            cache: raw.cache.0,
            max_disk: raw.max_disk.map(|size| size.0),
        })
    }

    /// `$STATE_DIRECTORY` at the start of `journal.path` is the directory
    /// systemd made for `StateDirectory=` (the first, if it lists several).
    fn state_directory(&self, path: &Path) -> Result<PathBuf, ConfigError> {
        const VAR: &str = "$STATE_DIRECTORY";
        let mut components = path.components();
        if components.next().map(|first| first.as_os_str()) != Some(std::ffi::OsStr::new(VAR)) {
            return Ok(path.to_owned());
        }
        let dirs = self.env.var("STATE_DIRECTORY").filter(|dirs| !dirs.is_empty()).ok_or_else(|| {
            self.err(
                "journal.path",
                "$STATE_DIRECTORY is not set (systemd sets it for units with StateDirectory=)",
            )
        })?;
        let first = dirs.split(':').next().unwrap_or(&dirs);
        Ok(Path::new(first).join(components.as_path()))
    }

    fn name(&self, kind: &str, name: &str) -> Result<(), ConfigError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(self.err(
                format!("{kind}.{name}"),
                "names may use only letters, digits, '-' and '_' (at most 64)",
            ));
        }
        Ok(())
    }

    fn rate_limit(&self, key: &str, raw: Option<RawRateLimit>) -> Result<Option<RateLimit>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let per_second = NonZeroU32::new(raw.per_second)
            .ok_or_else(|| self.err(format!("{key}.per_second"), "must be at least 1"))?;
        let burst = match raw.burst {
            None => per_second,
            Some(burst) => NonZeroU32::new(burst)
                .ok_or_else(|| self.err(format!("{key}.burst"), "must be at least 1"))?,
        };
        Ok(Some(RateLimit { per_second, burst }))
    }

    fn source(&self, name: &str, raw: RawSource) -> Result<SourceConfig, ConfigError> {
        self.name("sources", name)?;
        let key = format!("sources.{name}");
        if raw.secrets.is_empty() {
            return Err(self.err(format!("{key}.secrets"), "list at least one secret"));
        }
        let mut keys = Vec::new();
        for (i, reference) in raw.secrets.iter().enumerate() {
            let secret_key = format!("{key}.secrets[{i}]");
            let secret =
                reference.resolve(&self.base_dir, self.env).map_err(|msg| self.err(&secret_key, msg))?;
            keys.extend(
                signature::keys_for_secret(secret.expose())
                    .map_err(|err| self.err(&secret_key, err.to_string()))?,
            );
        }
        Ok(SourceConfig {
            name: name.to_owned(),
            keys,
            secret_count: raw.secrets.len(),
            tolerance: self.positive(&format!("{key}.tolerance"), raw.tolerance.0)?,
            rate_limit: self.rate_limit(&format!("{key}.rate_limit"), raw.rate_limit)?,
            parallel: raw.parallel.map(|raw| self.parallel(&format!("{key}.parallel"), raw)).transpose()?,
        })
    }

    fn parallel(&self, key: &str, raw: RawParallel) -> Result<ParallelConfig, ConfigError> {
        let api_key_key = format!("{key}.api_key");
        let api_key =
            raw.api_key.resolve(&self.base_dir, self.env).map_err(|msg| self.err(&api_key_key, msg))?;
        if api_key.expose().is_empty() {
            return Err(self.err(api_key_key, "must not be empty"));
        }
        let base_url_key = format!("{key}.base_url");
        let base_url = self.url(&base_url_key, raw.base_url.trim_end_matches('/'))?;
        let loopback = matches!(base_url.host(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if base_url.scheme_str() != Some("https") && !loopback {
            return Err(self.err(
                base_url_key,
                "must be https:// (the API key travels with every call), except on loopback",
            ));
        }
        let rate_limit =
            self.rate_limit(&format!("{key}.rate_limit"), raw.rate_limit)?.unwrap_or(RateLimit {
                per_second: NonZeroU32::new(defaults::PARALLEL_PER_SECOND).expect("non-zero"),
                burst: NonZeroU32::new(defaults::PARALLEL_PER_SECOND).expect("non-zero"),
            });
        let reconcile = match raw.reconcile {
            None => None,
            Some(raw) => {
                let reconcile_key = format!("{key}.reconcile");
                let mut monitors = raw.monitors;
                if monitors.is_empty() || monitors.iter().any(|m| m.is_empty() || m.len() > 256) {
                    return Err(self.err(format!("{reconcile_key}.monitors"), "list one or more monitor ids"));
                }
                monitors.sort();
                monitors.dedup();
                if raw.every.0 < Duration::from_secs(1) {
                    return Err(self.err(format!("{reconcile_key}.every"), "must be at least 1s"));
                }
                Some(Reconcile {
                    monitors,
                    every: raw.every.0,
                    lookback: self.positive(&format!("{reconcile_key}.lookback"), raw.lookback.0)?,
                })
            }
        };
        Ok(ParallelConfig {
            api_key,
            base_url,
            timeout: self.positive(&format!("{key}.timeout"), raw.timeout.0)?,
            rate_limit,
            reconcile,
        })
    }

    fn target(
        &self,
        name: &str,
        raw: RawTarget,
        sources: &BTreeMap<String, SourceConfig>,
    ) -> Result<TargetConfig, ConfigError> {
        self.name("targets", name)?;
        let key = format!("targets.{name}");
        if !sources.contains_key(&raw.source) {
            let known: Vec<&str> = sources.keys().map(String::as_str).collect();
            return Err(self.err(
                format!("{key}.source"),
                format!("unknown source {:?} (configured: {})", raw.source, known.join(", ")),
            ));
        }
        if raw.enrich && sources[&raw.source].parallel.is_none() {
            return Err(self.err(
                format!("{key}.enrich"),
                format!("needs a Parallel API key: add [sources.{}.parallel] api_key", raw.source),
            ));
        }
        let url = self.url(&format!("{key}.url"), &raw.url)?;
        let mut secrets = Vec::new();
        for (i, reference) in raw.secret.into_vec().into_iter().enumerate() {
            let secret_key = format!("{key}.secret[{i}]");
            let secret =
                reference.resolve(&self.base_dir, self.env).map_err(|msg| self.err(&secret_key, msg))?;
            signature::signing_key_for_secret(secret.expose())
                .map_err(|err| self.err(&secret_key, err.to_string()))?;
            secrets.push(secret);
        }
        let signing = match (raw.signing, secrets.is_empty()) {
            (Some(Signing::Resign) | None, true) => {
                return Err(self.err(
                    format!("{key}.secret"),
                    "a target needs a secret to re-sign with; or set signing = \"passthrough\" \
                     to forward Parallel's signature, or signing = \"none\" to send none",
                ));
            }
            (Some(Signing::Passthrough | Signing::None), false) => {
                return Err(self.err(
                    format!("{key}.secret"),
                    "is unused with signing = \"passthrough\" or \"none\"; remove one of them",
                ));
            }
            (Some(signing), _) => signing,
            (None, false) => Signing::Resign,
        };
        if raw.enrich && signing == Signing::Passthrough {
            return Err(self.err(
                format!("{key}.enrich"),
                "changes the body, so Parallel's passed-through signature would not verify; re-sign with a secret",
            ));
        }
        for (i, pattern) in raw.events.iter().enumerate() {
            if pattern.is_empty() {
                return Err(self.err(format!("{key}.events[{i}]"), "an event pattern cannot be empty"));
            }
        }
        for (pointer, value) in &raw.match_ {
            if !pointer.starts_with('/') {
                return Err(self.err(
                    format!("{key}.match"),
                    format!("{pointer:?} is not a JSON pointer (it must start with '/', e.g. \"/data/monitor_id\")"),
                ));
            }
            if value.is_object() || value.is_array() {
                return Err(self.err(
                    format!("{key}.match"),
                    format!("{pointer:?}: compare against a string, number or boolean"),
                ));
            }
        }
        let concurrency = NonZeroU32::new(raw.concurrency)
            .ok_or_else(|| self.err(format!("{key}.concurrency"), "must be at least 1"))?;
        let retry = self.retry(&format!("{key}.retry"), raw.retry)?;
        let ca_certs = match raw.ca_file {
            None => Vec::new(),
            Some(path) => crate::tls::load_ca_certs(&self.base_dir.join(path))
                .map_err(|msg| self.err(format!("{key}.ca_file"), msg))?,
        };
        let breaker = BreakerConfig {
            failures: NonZeroU32::new(raw.breaker.failures)
                .ok_or_else(|| self.err(format!("{key}.breaker.failures"), "must be at least 1"))?,
            probe_interval: self
                .positive(&format!("{key}.breaker.probe_interval"), raw.breaker.probe_interval.0)?,
        };
        Ok(TargetConfig {
            name: name.to_owned(),
            source: raw.source,
            url,
            signing,
            secrets,
            events: raw.events,
            match_: raw.match_,
            rate_limit: self.rate_limit(&format!("{key}.rate_limit"), raw.rate_limit)?,
            concurrency,
            timeout: self.positive(&format!("{key}.timeout"), raw.timeout.0)?,
            retry,
            ca_certs,
            breaker,
            enrich: raw.enrich.then_some(raw.enrich_failure),
        })
    }

    fn url(&self, key: &str, text: &str) -> Result<hyper::Uri, ConfigError> {
        let uri: hyper::Uri = text.parse().map_err(|err| {
            // A password with a `#`, `/` or space in it breaks the parse: not shown.
            let shown = if text.contains('@') {
                "the URL (not shown: it has an '@')".to_owned()
            } else {
                format!("{text:?}")
            };
            self.err(key, format!("{shown} is not a URL: {err}"))
        })?;
        // Checked first: a password in the URL must not reach error messages, logs and the admin API.
        if uri.authority().is_some_and(|authority| authority.as_str().contains('@')) {
            return Err(self
                .err(key, "must not carry credentials (user:password@); targets authenticate by signature"));
        }
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(self.err(key, format!("{text:?} must start with http:// or https://"))),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(self.err(key, format!("{text:?} has no host")));
        }
        Ok(uri)
    }

    fn retry(&self, key: &str, raw: RawRetry) -> Result<RetryConfig, ConfigError> {
        let initial = self.positive(&format!("{key}.initial"), raw.initial.0)?;
        if raw.max_delay.0 < initial {
            return Err(self.err(format!("{key}.max_delay"), "must not be shorter than retry.initial"));
        }
        let max_attempts = NonZeroU32::new(raw.max_attempts)
            .ok_or_else(|| self.err(format!("{key}.max_attempts"), "must be at least 1"))?;
        Ok(RetryConfig {
            initial,
            max_delay: raw.max_delay.0,
            max_attempts,
            max_age: self.positive(&format!("{key}.max_age"), raw.max_age.0)?,
        })
    }
}

#[cfg(test)]
mod tests;
