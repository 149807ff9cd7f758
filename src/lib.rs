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
//! - [`parallel`]: Parallel's API (rate-limited, retried); [`backfill`]: injects
//!   a monitor's detections that never arrived, once each; [`enrich`]: attaches
//!   the content thin events leave out, fetched once per delivery.
//! - `server`: accept loop, TLS, HTTP/1.1 and h2, graceful shutdown.
//! - [`tls`]: PEM files → rustls configuration (ring provider).
//! - [`systemd`]: sd_notify, the watchdog interval, socket-activated listeners.
//! - [`reload`]: SIGHUP — re-read the config and swap what can change while
//!   serving (each part through a `live::Live` snapshot).
//! - [`admin`] and [`metrics`]: the admin listener (`/healthz`, `/readyz`,
//!   `/metrics`, the `/v1` operator API) and the counters it exposes.
//! - [`cli`]: the `hookrelay` command line; `main.rs` only calls it.
//! - [`tap`] and [`samples`]: the developer tools `hookrelay tap` (a verifying
//!   receiver) and `hookrelay send-test` (a signed sample event).
//!
//! [`Gateway`] wires them: `Gateway::bind(config)` opens the journal and binds
//! the listeners (port 0 works, for tests; `with_listeners` takes sockets from
//! systemd), `run(shutdown)` serves and delivers until the shutdown future
//! resolves, reloading when asked through `reload_handle()`, then drains
//! both and flushes the journal.

#![forbid(unsafe_code)]

pub mod admin;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod enrich;
pub mod envelope;
pub mod ingress;
pub mod journal;
mod live;
mod logging;
pub mod parallel;
pub mod reload;
pub mod replay;
pub mod routing;
pub mod samples;
mod server;
pub mod signature;
pub mod systemd;
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
    #[error("admin.token: required because the admin listener is on {0}, not a loopback address")]
    AdminWithoutToken(SocketAddr),
}

/// How often expired dedup entries and delivered deliveries past
/// `journal.retention` are swept.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);
/// How long a fresh job waits before it is indexed like a retry (see
/// [`queue_waiting_jobs_periodically`]), and how often that is checked.
const WAITING_JOB_AGE: Duration = Duration::from_secs(60);
const WAITING_JOB_INTERVAL: Duration = Duration::from_secs(30);

/// How often `STATUS=` is refreshed for systemd (and at most how long
/// between watchdog pings, which come at half `WATCHDOG_USEC`).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// How long a stop waits for appends still under way (see `Ingress`).
const APPENDS_AT_STOP: Duration = Duration::from_secs(5);

/// How often the journal's health is looked at, and how a reopen backs off
/// while the storage keeps failing.
const JOURNAL_CHECK_INTERVAL: Duration = Duration::from_secs(1);
const REOPEN_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the journal may stay between stores with no reopen finishing
/// before the watchdog counts the process stuck: the longest backoff, and
/// a reopen's own waits for the old store and sled's lock, with room.
const REOPEN_STUCK_AFTER: Duration = Duration::from_secs(120);

/// A gateway whose journal is open and whose listeners are bound.
pub struct Gateway {
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    journal: Arc<Journal>,
    reload_requests: tokio::sync::mpsc::UnboundedReceiver<reload::ReloadRequest>,
    reload_handle: reload::ReloadHandle,
}

impl Gateway {
    /// Opens the journal and binds `[server] listen` and `[admin] listen`.
    pub async fn bind(config: Config) -> Result<Gateway, GatewayError> {
        Gateway::with_listeners(config, None, None).await
    }

    /// Uses already-bound listeners where given (systemd socket activation,
    /// tests) and binds the configured addresses for the others.
    pub async fn with_listeners(
        config: Config,
        inbound: Option<TcpListener>,
        admin: Option<TcpListener>,
    ) -> Result<Gateway, GatewayError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })
        };
        let listener = match inbound {
            Some(listener) => listener,
            None => bind(config.server.listen).await?,
        };
        let admin_listener = match admin {
            Some(listener) => listener,
            None => bind(config.admin.listen).await?,
        };
        // Config validation checked admin.listen; a socket passed by systemd
        // may be elsewhere, and the rule is about where the API really is.
        if let Ok(admin_addr) = admin_listener.local_addr()
            && config.admin.token.is_none()
            && !admin_addr.ip().is_loopback()
        {
            return Err(GatewayError::AdminWithoutToken(admin_addr));
        }
        let journal = Journal::open(&config.journal).map_err(|source| GatewayError::Journal {
            path: config.journal.path.display().to_string(),
            source,
        })?;
        let (requests, reload_requests) = tokio::sync::mpsc::unbounded_channel();
        Ok(Gateway {
            config,
            listener,
            admin_listener,
            journal: Arc::new(journal),
            reload_requests,
            reload_handle: reload::ReloadHandle(requests),
        })
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

    /// Asks the running gateway to re-read its config file (SIGHUP).
    pub fn reload_handle(&self) -> reload::ReloadHandle {
        self.reload_handle.clone()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight
    /// requests finish within `[server] shutdown_grace`, and flushes the
    /// journal. Reloads when asked through [`Gateway::reload_handle`]. Tells
    /// systemd how it is doing when `$NOTIFY_SOCKET` is set.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let Gateway { config, listener, admin_listener, journal, mut reload_requests, reload_handle: _ } =
            self;
        let notifier = Arc::new(systemd::Notifier::from_env());
        let metrics = Arc::new(metrics::Metrics::new(&config));
        // One stop signal for both halves: ingress stops accepting and the
        // lanes stop taking jobs at the same moment, then each drains.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // One client per source for Parallel's API: backfill and enrichment share its rate limit.
        let parallel = Arc::new(parallel::ParallelApis::new(&config));
        let dispatcher = Arc::new(
            delivery::Dispatcher::new(
                &config,
                journal.clone(),
                metrics.clone(),
                parallel.clone(),
                stop_rx.clone(),
            )
            .map_err(|source| GatewayError::Journal {
                path: config.journal.path.display().to_string(),
                source,
            })?,
        );
        let ingress = Arc::new(Ingress::new(&config, journal.clone(), dispatcher.inboxes(), metrics.clone()));
        let backfiller =
            Arc::new(backfill::Backfiller::new(&config, parallel.clone(), ingress.clone(), journal.clone()));
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let admin = Arc::new(admin::Admin {
            metrics: metrics.clone(),
            lanes: dispatcher.status(),
            journal: journal.clone(),
            replayer: replay::Replayer::new(&config, journal.clone(), dispatcher.status()),
            backfiller: backfiller.clone(),
            ready: ready.clone(),
            token: live::Live::new(config.admin.token.clone()),
        });
        let tls = config
            .server
            .tls
            .as_ref()
            .map(|tls| Arc::new(live::Live::new(tokio_rustls::TlsAcceptor::from(tls.config.clone()))));
        let limits = server::ConnectionLimits {
            header_timeout: config.server.header_timeout,
            shutdown_grace: config.server.shutdown_grace,
            max_connections: config.server.max_connections,
        };
        let pruner =
            tokio::spawn(prune_periodically(journal.clone(), config.journal.retention, stop_rx.clone()));
        let indexer = tokio::spawn(queue_waiting_jobs_periodically(
            journal.clone(),
            WAITING_JOB_AGE,
            WAITING_JOB_INTERVAL,
            stop_rx.clone(),
        ));
        let doctor = tokio::spawn(recover_journal(journal.clone(), dispatcher.status(), stop_rx.clone()));
        let reconciler = tokio::spawn(backfiller.clone().reconcile_periodically());
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
        let reloadable = reload::Reloadable {
            path: config.file.clone(),
            startup: reload::StartupKeys::of(&config),
            metrics: metrics.clone(),
            dispatcher: dispatcher.clone(),
            ingress: ingress.clone(),
            admin: admin.clone(),
            parallel: parallel.clone(),
            admin_addr,
            tls: tls.clone(),
        };
        let status = {
            let (metrics, lanes) = (metrics.clone(), dispatcher.status());
            move || {
                let gauges = lanes.gauges(time::now_ms());
                let pending = gauges.values().map(|g| g.pending as u64).sum();
                let dead = gauges.values().map(|g| g.dead).sum();
                systemd::status_line(metrics.accepted_total(), pending, dead)
            }
        };
        // Listeners, TLS and journal are up: from here on requests are served.
        notifier.ready(&status());
        let trigger = {
            let notifier = notifier.clone();
            async move {
                shutdown.await;
                notifier.stopping();
                ready.store(false, std::sync::atomic::Ordering::Release);
                let _ = stop_tx.send(true);
            }
        };
        let reloading = {
            let (notifier, status, mut stop) = (notifier.clone(), status.clone(), stop_rx.clone());
            async move {
                loop {
                    let reply = tokio::select! {
                        request = reload_requests.recv() => match request {
                            Some(reply) => reply,
                            None => return,
                        },
                        _ = stop.wait_for(|stopping| *stopping) => return,
                    };
                    notifier.reloading();
                    let result = reloadable.reload().await;
                    match &result {
                        Ok(done) if done.needs_restart.is_empty() => tracing::info!(
                            sources = done.sources,
                            targets = done.targets,
                            "configuration reloaded"
                        ),
                        Ok(done) => tracing::warn!(
                            sources = done.sources, targets = done.targets,
                            needs_restart = %done.needs_restart.join(", "),
                            "configuration reloaded; some changes take effect only after a restart"
                        ),
                        Err(err) => {
                            tracing::error!(error = %err, "configuration reload failed; still running on the previous configuration")
                        }
                    }
                    // Shutdown may have begun meanwhile: never READY after STOPPING.
                    if !*stop.borrow() {
                        notifier.ready(&status());
                    }
                    let _ = reply.send(result);
                }
            }
        };
        let heartbeat = heartbeat(notifier.clone(), journal.clone(), status, stop_rx.clone());
        let mut server_stop = stop_rx.clone();
        let serving = server::serve(listener, tls, ingress.clone(), limits, async move {
            let _ = server_stop.wait_for(|stopping| *stopping).await;
        });
        let delivering = dispatcher.run();
        // The admin listener stays up while the rest drains, answering
        // /readyz with 503; it stops when they are done.
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let administering = admin::serve(admin_listener, admin, limits.header_timeout, async move {
            let _ = drained_rx.await;
        });
        let work = async move {
            tokio::join!(trigger, serving, delivering, reloading, heartbeat);
            let _ = drained_tx.send(());
        };
        tokio::join!(work, administering);
        // Awaited, so their handles on the journal are gone when `run`
        // returns (sled keeps its directory locked while any handle lives).
        reconciler.abort();
        let _ = reconciler.await;
        // Not aborted: each may be working on the blocking pool, which an
        // abort would leave running. A sweep stops at its next chunk. (An
        // admin request's blocking work past the admin's grace period is
        // not awaited: a purge stops at its next chunk too.)
        journal.stop_maintenance();
        for task in [pruner, doctor, indexer] {
            let _ = task.await;
        }
        // An append whose request the grace period cut off still finishes
        // (see `Ingress`): before the last indexing, and before `run` returns
        // with nothing left holding the journal. One group commit, normally.
        ingress.appends_finished(APPENDS_AT_STOP).await;
        // Nothing is attempted any more: index what is still pending, so the
        // journal left behind is one an earlier version reads whole.
        match journal.queue_fresh_jobs().await {
            Ok(0) => {}
            Ok(jobs) => tracing::info!(jobs, "pending fresh jobs queued for the next start"),
            Err(err) => {
                tracing::error!(
                    error = %err,
                    "could not queue the pending fresh jobs: the next start will, but an earlier version would not see them (do not roll back before that)"
                )
            }
        }
        // (Cancelled only when the runtime itself is going away.)
        let flushed = tokio::task::spawn_blocking(move || journal.flush())
            .await
            .unwrap_or_else(|err| Err(JournalError::Storage(format!("the final flush did not run: {err}"))));
        flushed.map_err(GatewayError::Flush)?;
        tracing::info!("journal flushed; stopped");
        Ok(())
    }
}

/// What one watchdog tick saw of the journal writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterCheck {
    /// It answered the ping within the period.
    Answered,
    /// No answer within the period, but it finished groups since the last
    /// tick: busy behind a long queue, not wedged.
    BusyWriting,
    /// No answer, and no group finished since the last tick.
    Silent,
    /// A storage failure closed the store and the reopen keeps failing (a
    /// full disk), each try finishing: the process serves 503s and retries.
    BetweenStores,
    /// Its thread is gone.
    Gone,
}

/// Whether systemd gets `WATCHDOG=1`: the watchdog restarts a process that
/// is stuck, which a restart can fix, not one whose disk is full (a restart
/// would only fail to open the journal, over and over) or whose writer has
/// a long queue to work through.
fn watchdog_ping_due(check: WriterCheck) -> bool {
    match check {
        WriterCheck::Answered | WriterCheck::BusyWriting | WriterCheck::BetweenStores => true,
        WriterCheck::Silent | WriterCheck::Gone => false,
    }
}

/// While systemd listens: `STATUS=` every [`STATUS_INTERVAL`], and with the
/// watchdog on, `WATCHDOG=1` at half `WATCHDOG_USEC` — but only while the
/// journal writer answers a ping or keeps finishing groups (see
/// [`watchdog_ping_due`]), so a wedged writer (or a runtime too stuck to run
/// this task) gets the service restarted.
async fn heartbeat(
    notifier: Arc<systemd::Notifier>,
    journal: Arc<Journal>,
    status: impl Fn() -> String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if !notifier.is_enabled() {
        return;
    }
    let watchdog = systemd::watchdog_interval();
    let period = watchdog.map_or(STATUS_INTERVAL, |interval| interval.min(STATUS_INTERVAL));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the writer (of which store) and the recovery had done at the last tick.
    let progress = |journal: &Journal| (journal.generation(), journal.flush_count());
    let mut last = progress(&journal);
    let (mut reopens, mut reopen_seen) = (journal.reopens_tried(), tokio::time::Instant::now());
    while next_tick(&mut ticks, &mut stop).await {
        if watchdog.is_some() {
            if journal.reopens_tried() != reopens {
                (reopens, reopen_seen) = (journal.reopens_tried(), tokio::time::Instant::now());
            }
            let check = match tokio::time::timeout(period, journal.ping()).await {
                Ok(Ok(())) => WriterCheck::Answered,
                // Only while reopens keep finishing: one stuck inside a
                // reopen (a writer wedged in fsync) is for the watchdog.
                Ok(Err(_)) | Err(_)
                    if journal.is_between_stores() && reopen_seen.elapsed() < REOPEN_STUCK_AFTER =>
                {
                    WriterCheck::BetweenStores
                }
                Ok(Err(_)) | Err(_) if journal.is_between_stores() => WriterCheck::Silent,
                Ok(Err(_)) => WriterCheck::Gone,
                Err(_) if progress(&journal) != last => WriterCheck::BusyWriting,
                Err(_) => WriterCheck::Silent,
            };
            last = progress(&journal);
            match check {
                WriterCheck::Answered => {}
                WriterCheck::BusyWriting => {
                    tracing::warn!("journal writer is behind a long queue, still writing")
                }
                WriterCheck::BetweenStores => {
                    tracing::warn!("journal is closed until a reopen succeeds; the process is alive")
                }
                WriterCheck::Silent => {
                    tracing::error!("journal writer did not answer; withholding the watchdog ping")
                }
                WriterCheck::Gone => tracing::error!("journal writer is gone; withholding the watchdog ping"),
            }
            if watchdog_ping_due(check) {
                notifier.watchdog();
            }
        }
        notifier.status(&status());
    }
}

/// After a storage failure (disk full, file-size limit, I/O error) sled
/// refuses writes until the journal is reopened: try that, backing off while
/// it keeps failing, then let the lanes reload their queues from it.
/// Ends at `stop`, or after the reopen then running: not aborted, since the
/// reopen runs on the blocking pool and would hold the journal after `run`.
async fn recover_journal(
    journal: Arc<Journal>,
    lanes: delivery::LaneStatus,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = REOPEN_BACKOFF_FIRST;
    loop {
        let wait = if journal.is_writable() { JOURNAL_CHECK_INTERVAL } else { backoff };
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return,
            () = tokio::time::sleep(wait) => {}
        }
        if journal.is_writable() {
            backoff = REOPEN_BACKOFF_FIRST;
            continue;
        }
        let (journal, lanes) = (journal.clone(), lanes.clone());
        let recovered = tokio::task::spawn_blocking(move || {
            let recovery = journal.reopen()?;
            // Lanes send again only once they have reloaded their queues: a
            // job whose outcome could not be written is pending again.
            let requeued = lanes.resync()?;
            journal.mark_writable(recovery)?;
            Ok::<_, JournalError>(requeued)
        })
        .await;
        match recovered {
            Ok(Ok(requeued)) => {
                tracing::info!(requeued, "journal reopened after a storage failure; taking writes again");
                backoff = REOPEN_BACKOFF_FIRST;
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, retry_in = ?backoff, "journal still refuses writes");
                backoff = (backoff * 2).min(REOPEN_BACKOFF_MAX);
            }
            // A panic in there is a bug; keep trying rather than give up on recovery.
            Err(err) => {
                tracing::error!(error = %err, "journal recovery panicked");
                backoff = (backoff * 2).min(REOPEN_BACKOFF_MAX);
            }
        }
    }
}

/// Indexes the fresh jobs that have waited longer than `age` (their target
/// down, paused or removed), checking every `every`, so that the journal's
/// fresh-job mark stays recent and a start scans minutes of jobs, not months.
/// Ends at `stop`, between chunks: its scans hold the journal open.
async fn queue_waiting_jobs_periodically(
    journal: Arc<Journal>,
    age: Duration,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Small chunks with a pause between them: a backlog of millions is
    // indexed over minutes without holding up the appends sharing the writer.
    const CHUNK: usize = 1_000;
    const PAUSE: Duration = Duration::from_millis(20);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while next_tick(&mut interval, &mut stop).await {
        let before = time::now_ms().saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        let mut indexed = 0;
        while !*stop.borrow() {
            match journal.queue_waiting_fresh_jobs(before, CHUNK).await {
                Ok(0) => break,
                Ok(jobs) => indexed += jobs,
                Err(err) => {
                    tracing::debug!(error = %err, "could not index the fresh jobs that have waited");
                    break;
                }
            }
            tokio::time::sleep(PAUSE).await;
        }
        if indexed > 0 {
            tracing::debug!(jobs = indexed, "indexed fresh jobs that have waited");
        }
    }
}

/// Waits for `interval`'s next tick: false, at once, when `stop` is set.
async fn next_tick(
    interval: &mut tokio::time::Interval,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        biased; // a tick that is also due never wins over the stop
        _ = stop.wait_for(|stopping| *stopping) => false,
        _ = interval.tick() => true,
    }
}

/// Keeps the journal bounded: expired dedup entries, and delivered
/// deliveries older than `retention` (dead and pending ones stay). Ends at
/// `stop`, or after the sweep then running, which ends at its next chunk
/// once the caller has called [`Journal::stop_maintenance`].
async fn prune_periodically(
    journal: Arc<Journal>,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(PRUNE_INTERVAL);
    while next_tick(&mut interval, &mut stop).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::NewDelivery;

    #[test]
    fn the_watchdog_restarts_a_stuck_writer_not_a_busy_one_or_a_full_disk() {
        use WriterCheck::*;
        let pinged: Vec<bool> =
            [Answered, BusyWriting, BetweenStores, Silent, Gone].into_iter().map(watchdog_ping_due).collect();
        assert_eq!(pinged, [true, true, true, false, false]);
    }

    #[tokio::test]
    async fn a_journal_between_stores_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open_journal(dir.path());
        assert!(!journal.is_between_stores());
        journal.reopen().unwrap();
        assert!(!journal.is_between_stores(), "a reopen that worked leaves a store");
    }

    fn delivery(n: u64, received_at_ms: u64) -> NewDelivery {
        NewDelivery {
            received_at_ms,
            source: "parallel".into(),
            webhook_id: format!("evt_{n}"),
            webhook_timestamp: "1700000000".into(),
            webhook_signature: "v1,sig".into(),
            content_type: None,
            event_type: None,
            monitor_id: None,
            event_group: None,
            body: b"{}".to_vec(),
        }
    }

    fn open_journal(dir: &std::path::Path) -> Arc<Journal> {
        Arc::new(
            Journal::open(&config::JournalConfig {
                path: dir.join("journal"),
                dedup_window: Duration::from_secs(3600),
                retention: Duration::from_secs(86_400),
                cache: 8 << 20,
                max_disk: None,
            })
            .unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pruner_sweeps_on_its_first_tick_and_lets_go_of_the_journal_at_the_stop() {
        let dir = tempfile::tempdir().unwrap();
        let journal = open_journal(dir.path());
        // Unrouted and far older than the retention: the first sweep takes it.
        let old = journal.append(delivery(1, 1_000), &[]).await.unwrap().id;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(prune_periodically(journal.clone(), Duration::from_secs(86_400), stop_rx));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while journal.get(old).unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "not pruned");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends at the stop").unwrap();
        assert!(Arc::try_unwrap(journal).is_ok(), "no handle on the journal is left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fresh_jobs_that_waited_are_indexed_in_the_background_until_the_stop() {
        const OLD: u64 = 1_500; // more than one chunk
        let dir = tempfile::tempdir().unwrap();
        let journal = open_journal(dir.path());
        let targets = vec!["a".to_owned()];
        let appends: Vec<_> = (0..OLD)
            .map(|n| {
                let (journal, targets) = (journal.clone(), targets.clone());
                tokio::spawn(async move { journal.append(delivery(n, 1_000 + n), &targets).await.unwrap() })
            })
            .collect();
        for append in appends {
            append.await.unwrap();
        }
        journal.append(delivery(OLD, time::now_ms()), &targets).await.unwrap();
        assert_eq!(journal.indexed_jobs("a"), 0);

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(queue_waiting_jobs_periodically(
            journal.clone(),
            Duration::from_secs(60),
            Duration::from_millis(10),
            stop_rx,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while journal.indexed_jobs("a") < usize::try_from(OLD).unwrap() {
            assert!(std::time::Instant::now() < deadline, "indexed {} of {OLD}", journal.indexed_jobs("a"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(journal.indexed_jobs("a"), usize::try_from(OLD).unwrap(), "the recent job is left alone");
        assert_eq!(journal.queued("a").unwrap().len(), usize::try_from(OLD + 1).unwrap(), "each job once");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("ends at the stop").unwrap();
    }
}
