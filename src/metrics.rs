//! Counters and histograms for `GET /metrics`, rendered in the Prometheus
//! text format. Recording takes only a shared read lock and atomics on the
//! hot paths. Label sets are the configured sources and targets (a reload
//! adds new ones; removed ones keep their series until restart) and
//! rejection reasons, a small closed set.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::config::Config;

/// Latency bucket bounds in seconds (Prometheus `le`).
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|bound| secs <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

#[derive(Default)]
struct SourceCounters {
    received: AtomicU64,
    duplicates: AtomicU64,
}

#[derive(Default)]
struct TargetCounters {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    latency: Histogram,
}

/// What an attempt came to, for `hookrelay_attempts_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    Retry,
    Dead,
}

/// Point-in-time figures of one target, read when `/metrics` is scraped.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetGauges {
    pub pending: usize,
    pub oldest_pending_age: Option<Duration>,
    pub breaker_open: bool,
    /// Dead jobs kept in the journal (until replayed or purged).
    pub dead: u64,
}

#[derive(Default)]
pub struct Metrics {
    sources: RwLock<BTreeMap<String, Arc<SourceCounters>>>,
    targets: RwLock<BTreeMap<String, Arc<TargetCounters>>>,
    /// (source or "" when unknown, reason) → count.
    rejected: Mutex<BTreeMap<(String, &'static str), u64>>,
    ingest_latency: Histogram,
    /// `journal.max_disk`, shown beside the size so alerts can use the ratio.
    journal_limit: Option<u64>,
}

impl Metrics {
    pub fn new(config: &Config) -> Self {
        let metrics = Metrics { journal_limit: config.journal.max_disk, ..Metrics::default() };
        metrics.register(config);
        metrics
    }

    /// Adds series for sources and targets `config` has and these metrics
    /// do not (at start, and after a reload).
    pub fn register(&self, config: &Config) {
        let mut sources = self.sources.write().expect("not poisoned");
        for name in config.sources.keys() {
            sources.entry(name.clone()).or_default();
        }
        let mut targets = self.targets.write().expect("not poisoned");
        for name in config.targets.keys() {
            targets.entry(name.clone()).or_default();
        }
    }

    fn source(&self, name: &str) -> Option<Arc<SourceCounters>> {
        self.sources.read().expect("not poisoned").get(name).cloned()
    }

    fn target(&self, name: &str) -> Option<Arc<TargetCounters>> {
        self.targets.read().expect("not poisoned").get(name).cloned()
    }

    /// One inbound request, by how it ended.
    pub fn ingest(&self, source: &str, outcome: IngestOutcome, elapsed: Duration) {
        self.ingest_latency.observe(elapsed);
        match (self.source(source), outcome) {
            (Some(counters), IngestOutcome::Accepted) => {
                counters.received.fetch_add(1, Ordering::Relaxed);
            }
            (Some(counters), IngestOutcome::Duplicate) => {
                counters.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            (known, IngestOutcome::Rejected(reason)) => {
                // Unknown source names come from the request: never a label.
                let label = if known.is_some() { source.to_owned() } else { String::new() };
                *self.rejected.lock().expect("not poisoned").entry((label, reason)).or_default() += 1;
            }
            (None, _) => {}
        }
    }

    pub fn attempt(&self, target: &str, result: AttemptResult, elapsed: Duration) {
        let Some(counters) = self.target(target) else { return };
        counters.latency.observe(elapsed);
        let counter = match result {
            AttemptResult::Delivered => &counters.delivered,
            AttemptResult::Retry => &counters.retried,
            AttemptResult::Dead => &counters.dead,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Deliveries accepted (verified and journaled) since start, all sources.
    pub fn accepted_total(&self) -> u64 {
        self.sources.read().expect("not poisoned").values().map(|c| c.received.load(Ordering::Relaxed)).sum()
    }

    /// (delivered, retry, dead) attempts of `target` since start.
    pub fn attempt_counts(&self, target: &str) -> (u64, u64, u64) {
        self.target(target).map_or((0, 0, 0), |c| {
            (
                c.delivered.load(Ordering::Relaxed),
                c.retried.load(Ordering::Relaxed),
                c.dead.load(Ordering::Relaxed),
            )
        })
    }

    /// The Prometheus text exposition, with the gauges read by the caller.
    pub fn render(&self, targets: &BTreeMap<String, TargetGauges>, journal_bytes: Option<u64>) -> String {
        let mut out = String::new();
        let sources = self.sources.read().expect("not poisoned").clone();
        let counters = self.targets.read().expect("not poisoned").clone();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "hookrelay_deliveries_received_total",
            "counter",
            "Deliveries verified and journaled.",
        );
        for (source, c) in &sources {
            let _ = writeln!(
                out,
                "hookrelay_deliveries_received_total{{source=\"{source}\"}} {}",
                c.received.load(Ordering::Relaxed)
            );
        }
        family(
            &mut out,
            "hookrelay_deliveries_duplicate_total",
            "counter",
            "Repeated webhook-ids answered with the original id.",
        );
        for (source, c) in &sources {
            let _ = writeln!(
                out,
                "hookrelay_deliveries_duplicate_total{{source=\"{source}\"}} {}",
                c.duplicates.load(Ordering::Relaxed)
            );
        }
        family(
            &mut out,
            "hookrelay_deliveries_rejected_total",
            "counter",
            "Inbound requests refused, by reason.",
        );
        for ((source, reason), count) in self.rejected.lock().expect("not poisoned").iter() {
            let _ = writeln!(
                out,
                "hookrelay_deliveries_rejected_total{{source=\"{source}\",reason=\"{reason}\"}} {count}"
            );
        }
        family(
            &mut out,
            "hookrelay_ingest_duration_seconds",
            "histogram",
            "Time to answer an inbound request.",
        );
        self.ingest_latency.render(&mut out, "hookrelay_ingest_duration_seconds", "");
        family(&mut out, "hookrelay_attempts_total", "counter", "Delivery attempts by outcome.");
        for (target, c) in &counters {
            for (outcome, counter) in [("delivered", &c.delivered), ("retry", &c.retried), ("dead", &c.dead)]
            {
                let _ = writeln!(
                    out,
                    "hookrelay_attempts_total{{target=\"{target}\",outcome=\"{outcome}\"}} {}",
                    counter.load(Ordering::Relaxed)
                );
            }
        }
        family(
            &mut out,
            "hookrelay_jobs_dead_total",
            "counter",
            "Jobs that spent their retry budget since start.",
        );
        for (target, c) in &counters {
            let _ = writeln!(
                out,
                "hookrelay_jobs_dead_total{{target=\"{target}\"}} {}",
                c.dead.load(Ordering::Relaxed)
            );
        }
        family(&mut out, "hookrelay_attempt_duration_seconds", "histogram", "Time of one delivery attempt.");
        for (target, c) in &counters {
            c.latency.render(&mut out, "hookrelay_attempt_duration_seconds", &format!("target=\"{target}\""));
        }
        family(&mut out, "hookrelay_pending_jobs", "gauge", "Jobs waiting for an attempt or a retry.");
        for (target, g) in targets {
            let _ = writeln!(out, "hookrelay_pending_jobs{{target=\"{target}\"}} {}", g.pending);
        }
        family(
            &mut out,
            "hookrelay_dead_jobs",
            "gauge",
            "Dead jobs kept in the journal, waiting for a replay or a purge.",
        );
        for (target, g) in targets {
            let _ = writeln!(out, "hookrelay_dead_jobs{{target=\"{target}\"}} {}", g.dead);
        }
        family(
            &mut out,
            "hookrelay_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest pending live job (0 when none; replays excluded).",
        );
        for (target, g) in targets {
            let age = g.oldest_pending_age.map_or(0.0, |age| age.as_secs_f64());
            let _ = writeln!(out, "hookrelay_oldest_pending_age_seconds{{target=\"{target}\"}} {age}");
        }
        family(
            &mut out,
            "hookrelay_breaker_open",
            "gauge",
            "1 while the target is paused by its circuit breaker.",
        );
        for (target, g) in targets {
            let _ =
                writeln!(out, "hookrelay_breaker_open{{target=\"{target}\"}} {}", u8::from(g.breaker_open));
        }
        if let Some(bytes) = journal_bytes {
            family(&mut out, "hookrelay_journal_size_bytes", "gauge", "Size of the journal on disk.");
            let _ = writeln!(out, "hookrelay_journal_size_bytes {bytes}");
        }
        if let Some(limit) = self.journal_limit {
            family(
                &mut out,
                "hookrelay_journal_max_bytes",
                "gauge",
                "journal.max_disk: at this size ingress answers 503 journal_full.",
            );
            let _ = writeln!(out, "hookrelay_journal_max_bytes {limit}");
        }
        out
    }
}

/// How an inbound request ended, for the ingest counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    Accepted,
    Duplicate,
    Rejected(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"));
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_count 3\n"));
    }
}
