//! # hookrelay
//!
//! A webhook relay and replay gateway. It verifies webhooks signed by
//! Parallel (Standard Webhooks scheme), journals every delivery durably in an
//! embedded sled database before acknowledging it, and fans deliveries out to
//! internal targets.
//!
//! ## Layout
//! - [`config`]: the TOML file → validated [`config::Config`]; secrets and
//!   their `env:`/`file:`/`credential:` references.
//! - [`signature`]: pure Standard Webhooks verify and sign.
//! - [`envelope`]: pure extraction of routing keys from a verified body.
//! - [`journal`]: the only module that knows sled; records, dedup index,
//!   group commit.
//! - [`ingress`]: the inbound `POST /hooks/{source}` service; decides every answer.
//! - [`routing`]: pure target selection (`events` globs, `match` pointers).
//! - [`delivery`]: per-target lanes that re-sign and POST queued jobs, with
//!   rate limits, retries ([`delivery::policy`]) and a circuit breaker.
//! - [`replay`]: which (delivery, target) pairs a replay selects; requeues them.
//! - `server`: accept loop, TLS, HTTP/1.1 and h2, graceful shutdown.
//! - [`tls`]: PEM files → rustls configuration (ring provider).
//! - [`admin`] and [`metrics`]: the admin listener (`/healthz`, `/readyz`,
//!   `/metrics`, the `/v1` operator API) and the counters it exposes.
//! - [`cli`]: the `hookrelay` command line; `main.rs` only calls it.
//! - [`tap`] and [`samples`]: the developer tools `hookrelay tap` (a verifying
//!   receiver) and `hookrelay send-test` (a signed sample event).
//!
//! [`Gateway`] wires them: `Gateway::bind(config)` opens the journal and binds
//! the listener (port 0 works, for tests), `run(shutdown)` serves and delivers
//! until the shutdown future resolves, drains both, and flushes the journal.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod envelope;
pub mod ingress;
pub mod journal;
mod live;
mod logging;
pub mod replay;
pub mod routing;
pub mod samples;
mod server;
pub mod signature;
pub mod tap;
pub mod time;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use config::Config;
use ingress::Ingress;
use journal::{Journal, JournalError};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot open the journal at {path}: {source}")]
    Journal { path: String, source: JournalError },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("journal flush at shutdown failed: {0}")]
    Flush(JournalError),
}

/// How often expired dedup entries and delivered deliveries past
/// `journal.retention` are swept.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// A gateway whose journal is open and whose listeners are bound.
pub struct Gateway {
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    journal: Arc<Journal>,
}

impl Gateway {
    /// Opens the journal and binds `[server] listen` and `[admin] listen`.
    pub async fn bind(config: Config) -> Result<Gateway, GatewayError> {
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?;
        Gateway::with_listener(config, listener).await
    }

    /// Uses an already-bound inbound listener (socket activation, tests).
    pub async fn with_listener(config: Config, listener: TcpListener) -> Result<Gateway, GatewayError> {
        let admin_addr = config.admin.listen;
        let admin_listener = TcpListener::bind(admin_addr)
            .await
            .map_err(|source| GatewayError::Bind { addr: admin_addr, source })?;
        let journal = Journal::open(&config.journal).map_err(|source| GatewayError::Journal {
            path: config.journal.path.display().to_string(),
            source,
        })?;
        Ok(Gateway { config, listener, admin_listener, journal: Arc::new(journal) })
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("a bound listener has an address")
    }

    pub fn journal(&self) -> Arc<Journal> {
        self.journal.clone()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight
    /// requests finish within `[server] shutdown_grace`, and flushes the journal.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let Gateway { config, listener, admin_listener, journal } = self;
        let metrics = Arc::new(metrics::Metrics::new(&config));
        // One stop signal for both halves: ingress stops accepting and the
        // lanes stop taking jobs at the same moment, then each drains.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let dispatcher =
            delivery::Dispatcher::new(&config, journal.clone(), metrics.clone(), stop_rx.clone()).map_err(
                |source| GatewayError::Journal { path: config.journal.path.display().to_string(), source },
            )?;
        let ingress = Arc::new(Ingress::new(&config, journal.clone(), dispatcher.inboxes(), metrics.clone()));
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let admin = Arc::new(admin::Admin {
            metrics,
            lanes: dispatcher.status(),
            journal: journal.clone(),
            replayer: replay::Replayer::new(&config, journal.clone(), dispatcher.status()),
            ready: ready.clone(),
            token: config.admin.token.clone(),
        });
        let tls = config.server.tls.as_ref().map(|tls| tokio_rustls::TlsAcceptor::from(tls.config.clone()));
        let limits = server::ConnectionLimits {
            header_timeout: config.server.header_timeout,
            shutdown_grace: config.server.shutdown_grace,
        };
        let pruner = tokio::spawn(prune_periodically(journal.clone(), config.journal.retention));
        let addr = listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr: config.server.listen, source })?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr: config.admin.listen, source })?;
        tracing::info!(
            %addr,
            %admin_addr,
            tls = tls.is_some(),
            sources = config.sources.len(),
            targets = config.targets.len(),
            journal = %config.journal.path.display(),
            "listening"
        );
        let trigger = async move {
            shutdown.await;
            ready.store(false, std::sync::atomic::Ordering::Release);
            let _ = stop_tx.send(true);
        };
        let mut server_stop = stop_rx.clone();
        let serving = server::serve(listener, tls, ingress, limits, async move {
            let _ = server_stop.wait_for(|stopping| *stopping).await;
        });
        let delivering = dispatcher.run();
        // The admin listener stays up while the rest drains, answering
        // /readyz with 503; it stops when they are done.
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let administering = admin::serve(admin_listener, admin, async move {
            let _ = drained_rx.await;
        });
        let work = async move {
            tokio::join!(trigger, serving, delivering);
            let _ = drained_tx.send(());
        };
        tokio::join!(work, administering);
        pruner.abort();
        let flushed =
            tokio::task::spawn_blocking(move || journal.flush()).await.expect("journal flush does not panic");
        flushed.map_err(GatewayError::Flush)?;
        tracing::info!("journal flushed; stopped");
        Ok(())
    }
}

/// Keeps the journal bounded: expired dedup entries, and delivered
/// deliveries older than `retention` (dead and pending ones stay).
async fn prune_periodically(journal: Arc<Journal>, retention: Duration) {
    let mut interval = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        interval.tick().await;
        let journal = journal.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let now = time::now_ms();
            let dedup = journal.prune_dedup(now)?;
            let cutoff = now.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
            Ok::<_, JournalError>((dedup, journal.prune_delivered(cutoff)?))
        })
        .await;
        match pruned {
            Ok(Ok((dedup, swept))) if dedup > 0 || swept.deliveries > 0 => tracing::info!(
                dedup_entries = dedup,
                deliveries = swept.deliveries,
                jobs = swept.jobs,
                "pruned the journal"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "journal pruning failed"),
            Err(_) => return,
        }
    }
}

pub mod metrics;
