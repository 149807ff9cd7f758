//! SIGHUP: re-read the config file and swap what can be swapped while
//! serving — sources (secrets, tolerance, rate limits), targets (added,
//! removed, URL, secrets, filters, rate, concurrency, timeout, retry,
//! breaker), body limits, the admin token and the TLS certificate — each in
//! one step, so requests and attempts in flight finish on the settings they
//! started with. A config that does not load changes nothing. Keys fixed at
//! start (listeners, the journal) are reported as needing a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::Admin;
use crate::config::Config;
use crate::delivery::Dispatcher;
use crate::ingress::Ingress;
use crate::live::Live;
use crate::metrics::Metrics;

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub sources: usize,
    pub targets: usize,
    /// Changed keys that take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The settings read once at start; a reload that changes them says so.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StartupKeys {
    listen: std::net::SocketAddr,
    tls: bool,
    header_timeout: Duration,
    shutdown_grace: Duration,
    max_connections: usize,
    admin_listen: std::net::SocketAddr,
    journal_path: PathBuf,
    dedup_window: Duration,
    retention: Duration,
    cache: u64,
    max_disk: Option<u64>,
}

impl StartupKeys {
    pub(crate) fn of(config: &Config) -> Self {
        StartupKeys {
            listen: config.server.listen,
            tls: config.server.tls.is_some(),
            header_timeout: config.server.header_timeout,
            shutdown_grace: config.server.shutdown_grace,
            max_connections: config.server.max_connections,
            admin_listen: config.admin.listen,
            journal_path: config.journal.path.clone(),
            dedup_window: config.journal.dedup_window,
            retention: config.journal.retention,
            cache: config.journal.cache,
            max_disk: config.journal.max_disk,
        }
    }

    /// The journal settings in force until a restart.
    pub(crate) fn journal(&self) -> crate::config::JournalConfig {
        crate::config::JournalConfig {
            path: self.journal_path.clone(),
            dedup_window: self.dedup_window,
            retention: self.retention,
            cache: self.cache,
            max_disk: self.max_disk,
        }
    }

    /// The keys that differ in `new`, by config name.
    pub(crate) fn changed(&self, new: &StartupKeys) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name: &'static str, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        check("server.listen", self.listen != new.listen);
        check("server.tls (on or off)", self.tls != new.tls);
        check("server.header_timeout", self.header_timeout != new.header_timeout);
        check("server.shutdown_grace", self.shutdown_grace != new.shutdown_grace);
        check("server.max_connections", self.max_connections != new.max_connections);
        check("admin.listen", self.admin_listen != new.admin_listen);
        check("journal.path", self.journal_path != new.journal_path);
        check("journal.dedup_window", self.dedup_window != new.dedup_window);
        check("journal.retention", self.retention != new.retention);
        check("journal.cache", self.cache != new.cache);
        check("journal.max_disk", self.max_disk != new.max_disk);
        changed
    }
}

/// The running parts a reload swaps settings in.
pub(crate) struct Reloadable {
    pub path: PathBuf,
    pub startup: StartupKeys,
    pub metrics: Arc<Metrics>,
    pub dispatcher: Arc<Dispatcher>,
    pub ingress: Arc<Ingress>,
    pub admin: Arc<Admin>,
    pub parallel: Arc<crate::parallel::ParallelApis>,
    /// Where the admin listener really listens (a socket from systemd may
    /// differ from `admin.listen`): decides whether a token is required.
    pub admin_addr: std::net::SocketAddr,
    /// Present when the inbound listener serves TLS.
    pub tls: Option<Arc<Live<tokio_rustls::TlsAcceptor>>>,
}

impl Reloadable {
    /// Loads the config file again and applies it; on any error nothing
    /// changes and the error says why.
    pub(crate) async fn reload(&self) -> Result<Reloaded, String> {
        let path = self.path.clone();
        let config = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|err| format!("config loading panicked: {err}"))?
            .map_err(|err| err.to_string())?;
        if config.admin.token.is_none() && !self.admin_addr.ip().is_loopback() {
            return Err(format!(
                "{}: admin.token: required while the admin listener is on {}, not a loopback address",
                config.file.display(),
                self.admin_addr
            ));
        }
        let needs_restart = self.startup.changed(&StartupKeys::of(&config));
        let config = config.with_running_journal(&self.startup.journal()).map_err(|err| err.to_string())?;
        // The API clients before the lanes: a lane that starts (a target that
        // comes back with jobs pending, an `enrich = true` one) may enrich at
        // once, with a source's new API key. Put back if the lanes fail.
        let apis_before = self.parallel.reload(&config);
        // Lanes next: a new target has its lane before ingress routes to it.
        self.metrics.register(&config);
        let no_forget = self.dispatcher.holding_targets().await;
        if let Err(err) = self.dispatcher.reconfigure(&config).await {
            self.parallel.put_back(apis_before);
            return Err(format!("cannot start new targets: {err}"));
        }
        self.ingress.reload(&config);
        drop(no_forget);
        if let (Some(live), Some(tls)) = (&self.tls, &config.server.tls) {
            live.set(tokio_rustls::TlsAcceptor::from(tls.config.clone()));
        }
        self.admin.reload(&config);
        Ok(Reloaded { sources: config.sources.len(), targets: config.targets.len(), needs_restart })
    }
}

/// Asks a running gateway to reload its config file (what SIGHUP does).
#[derive(Clone, Debug)]
pub struct ReloadHandle(pub(crate) tokio::sync::mpsc::UnboundedSender<ReloadRequest>);

pub(crate) type ReloadRequest = tokio::sync::oneshot::Sender<Result<Reloaded, String>>;

impl ReloadHandle {
    /// Reloads and says how it went; an error when the config is invalid
    /// (the running one stays) or the gateway has stopped.
    pub async fn reload(&self) -> Result<Reloaded, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.0.send(reply).map_err(|_| "the gateway has stopped".to_owned())?;
        answer.await.map_err(|_| "the gateway stopped before reloading".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Environment};

    struct NoEnv;
    impl Environment for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn config(extra: &str) -> Config {
        let text = format!("{extra}\n[sources.parallel]\nsecrets = [\"whsec_dGVzdA==\"]\n");
        Config::parse(std::path::Path::new("/etc/hookrelay/hookrelay.toml"), &text, &NoEnv).unwrap()
    }

    #[test]
    fn a_reload_is_checked_and_applied_against_the_journal_in_force() {
        let running = StartupKeys::of(&config("")).journal();
        let parse = |text: &str| {
            Config::parse(std::path::Path::new("/etc/hookrelay/hookrelay.toml"), text, &NoEnv).unwrap()
        };
        let journal = "[journal]\ndedup_window = \"720h\"\nretention = \"60d\"\n";
        let secrets = "secrets = [\"whsec_dGVzdA==\"]\n";
        // Valid on its own, with journal settings only a restart applies.
        let reloaded =
            parse(&format!("{journal}[sources.parallel]\n{secrets}")).with_running_journal(&running);
        assert_eq!(
            reloaded.unwrap().journal.retention,
            running.retention,
            "backfill sees the retention in force"
        );
        let too_tolerant = parse(&format!("{journal}[sources.parallel]\n{secrets}tolerance = \"100h\"\n"));
        let err = too_tolerant.with_running_journal(&running).unwrap_err();
        assert_eq!(err.key, "sources.parallel.tolerance");
        assert!(err.message.contains("take a restart"), "{}", err.message);
    }

    #[test]
    fn only_startup_keys_need_a_restart() {
        let base = StartupKeys::of(&config(""));
        assert!(base.changed(&StartupKeys::of(&config("[server]\nmax_body = \"2MiB\""))).is_empty());
        assert_eq!(
            base.changed(&StartupKeys::of(&config(
                "[server]\nlisten = \"127.0.0.1:9999\"\nheader_timeout = \"3s\""
            ))),
            ["server.listen", "server.header_timeout"]
        );
        assert_eq!(
            base.changed(&StartupKeys::of(&config("[journal]\npath = \"elsewhere\""))),
            ["journal.path"]
        );
    }
}
