//! The reliability suite (RELIABILITY.md): the real binary attacked the way
//! production will — SIGKILL under load, target outages, overload, a disk
//! that stops taking writes, hostile clients — with the invariant that no
//! acknowledged webhook is lost. Every scenario prints its figures.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::daemon::{BIN, Daemon, write_config};
use crate::common::target::{Received, TestTarget};
use crate::common::*;
use hookrelay::config::Config;
use hookrelay::journal::Journal;

const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC1yZWxpYWJpbGl0eQ==";

/// A realistic Parallel event, `pad` bytes longer: a `task_run.status` for
/// every fifth `n`, a `monitor.event.detected` otherwise; team "research"
/// for even `n`.
fn event(n: usize, pad: usize) -> String {
    let kind = if n.is_multiple_of(5) { "task_run.status" } else { "monitor.event.detected" };
    format!(
        r#"{{"type":"{kind}","timestamp":"2025-07-02T23:29:35.114Z","data":{{"monitor_id":"monitor_{}","event":{{"event_group_id":"mevtgrp_{n:06}"}},"metadata":{{"team":"{}"}},"pad":"{}"}}}}"#,
        n % 7,
        if n.is_multiple_of(2) { "research" } else { "sales" },
        "x".repeat(pad)
    )
}

/// Sends one signed webhook on a fresh connection; `None` when the
/// connection failed (the gateway is down, or closed it).
async fn try_send(addr: SocketAddr, id: &str, body: &str) -> Option<Reply> {
    let request = signed_request("parallel", SECRET, id, now(), body.as_bytes());
    let send = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await.ok()?;
        let (parts, body) = response.into_parts();
        let body = http_body_util::BodyExt::collect(body).await.ok()?.to_bytes();
        Some(Reply { status: parts.status.as_u16(), headers: parts.headers, body })
    };
    tokio::time::timeout(Duration::from_secs(30), send).await.ok().flatten()
}

/// Each webhook-id and how often it arrived.
fn arrivals(received: &[Received]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in received {
        *counts.entry(r.header("webhook-id").to_owned()).or_default() += 1;
    }
    counts
}

/// Every request a target got carries a valid signature (its secret) over a
/// body that was really sent under that webhook-id.
fn assert_authentic(name: &str, received: &[Received], sent: &BTreeMap<String, String>) {
    for r in received {
        let id = r.header("webhook-id");
        assert!(
            matches!(r.verified, Some(Ok(()))),
            "{name}: {id} arrived with a bad signature: {:?}",
            r.verified
        );
        let body = sent.get(id).unwrap_or_else(|| panic!("{name}: {id} was never sent"));
        assert_eq!(r.body, body.as_bytes(), "{name}: {id} arrived with a body that was never sent");
    }
}

/// Which of the crash test's targets a webhook `n` matches.
fn matches(target: &str, n: usize) -> bool {
    match target {
        "monitors" => !n.is_multiple_of(5),
        "research" => n.is_multiple_of(2),
        _ => true,
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small xorshift generator: the kill points, reproducible from the
/// printed seed (RELIABILITY_SEED).
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("RELIABILITY_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        println!("seed: RELIABILITY_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Percentile (0..=1) of durations in milliseconds.
fn percentile_ms(mut values: Vec<Duration>, p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort();
    let index = ((values.len() - 1) as f64 * p).round() as usize;
    values[index].as_secs_f64() * 1000.0
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn target_table(name: &str, target: &TestTarget, extra: &str) -> String {
    format!(
        "[targets.{name}]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n{extra}\n",
        target.url()
    )
}

/// Reopens a stopped gateway's journal and checks that every acknowledged
/// webhook is there with its exact bytes.
fn assert_journaled(config_path: &Path, acked: &BTreeMap<String, String>) {
    let config = Config::load(config_path).unwrap();
    let journal = Journal::open(&config.journal).unwrap();
    let mut found = BTreeMap::new();
    for record in journal.iter() {
        let record = record.unwrap();
        found.insert(record.webhook_id.clone(), record.body.clone());
    }
    for (id, body) in acked {
        let stored =
            found.get(id).unwrap_or_else(|| panic!("{id} was acknowledged but is not in the journal"));
        assert_eq!(stored, body.as_bytes(), "{id}: journaled bytes differ");
    }
}

// ---------------------------------------------------------------- disk trouble

/// The journal's file may not grow past RLIMIT_FSIZE (the way a full disk or
/// a quota stops writes): ingress answers 503 with Retry-After and never a
/// 2xx for what it could not write; /readyz says so; when the limit is lifted
/// (space returns) the gateway reopens its journal by itself and takes
/// webhooks again, and everything acknowledged is delivered and on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_refuses_writes_gets_503_and_recovers_when_space_returns() {
    const LIMIT: u64 = 1536 * 1024;
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), &target_table("consumer", &target, ""));
    // Soft limit only: lifting it again needs no privilege, like freeing space.
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--fsize={LIMIT}:unlimited"))
        .arg("--")
        .arg(BIN)
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config_path);
    let mut daemon = Daemon::spawn(command);
    let pid = daemon.child.id();

    let mut acked = BTreeMap::new();
    let mut sent = BTreeMap::new();
    let mut refused = 0;
    let mut n = 0;
    // Fill the file until the journal refuses, then a few more.
    while refused < 20 {
        n += 1;
        assert!(n < 5_000, "the journal never refused a write");
        let (id, body) = (format!("whevent_disk_{n:05}"), event(n, 3000));
        let reply = try_send(daemon.addr, &id, &body).await.expect("the gateway stays up");
        sent.insert(id.clone(), body.clone());
        match reply.status {
            // After a refusal a reopen may still find room for a while: a
            // 200 is fine as long as it is on disk (checked at the end).
            200 => {
                acked.insert(id, body);
            }
            503 => {
                assert_eq!(reply.error_code(), "journal_unavailable");
                assert_eq!(reply.headers["retry-after"], "5");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    // (A reopen attempt may succeed for a moment while the limit holds.)
    let unready_by = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = admin_get(daemon.admin_addr, "/readyz").await;
        if ready.status == 503 {
            assert!(ready.text().contains("journal refuses writes"), "{}", ready.text());
            break;
        }
        assert!(Instant::now() < unready_by, "/readyz never said the journal refuses writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.wait_for_log("refusing writes until the journal is reopened", Duration::from_secs(5)).await;
    println!("disk: {} accepted, then 503 with Retry-After at the {LIMIT}-byte file limit", acked.len());

    // Space returns.
    let lifted = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--fsize=unlimited:unlimited"])
        .status()
        .unwrap();
    assert!(lifted.success());
    let recovered_at = Instant::now();
    let mut recovered = false;
    while recovered_at.elapsed() < Duration::from_secs(60) {
        n += 1;
        let (id, body) = (format!("whevent_disk_{n:05}"), event(n, 3000));
        let reply = try_send(daemon.addr, &id, &body).await.expect("the gateway stays up");
        sent.insert(id.clone(), body.clone());
        if reply.status == 200 {
            acked.insert(id, body);
            recovered = true;
            break;
        }
        assert_eq!(reply.status, 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "no 200 within 60 s of space returning; logs:\n{}", daemon.logs());
    println!("disk: writes again {:.1}s after space returned", recovered_at.elapsed().as_secs_f64());
    let ready_by = Instant::now() + Duration::from_secs(10);
    while admin_get(daemon.admin_addr, "/readyz").await.status != 200 {
        assert!(Instant::now() < ready_by, "/readyz stays 503 after recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..50 {
        n += 1;
        let (id, body) = (format!("whevent_disk_{n:05}"), event(n, 3000));
        let reply = try_send(daemon.addr, &id, &body).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        sent.insert(id.clone(), body.clone());
        acked.insert(id, body);
    }

    // Every acknowledged webhook reaches the consumer, including those whose
    // outcomes could not be recorded while the disk was full.
    let received = target
        .wait_until(Duration::from_secs(60), |received| {
            let got = arrivals(received);
            acked.keys().all(|id| got.contains_key(id))
        })
        .await;
    assert_authentic("consumer", &received, &sent);
    let extra = received.len() - acked.len();
    println!("disk: {} acknowledged, all delivered ({extra} repeated deliveries)", acked.len());
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert_journaled(&config_path, &acked);
    assert!(daemon.logs().contains("journal reopened after a storage failure"));
    assert!(!daemon.logs().contains("panicked"));
}

// ------------------------------------------------------------- crash under load

/// N signed webhooks at concurrency C while the gateway is SIGKILLed at
/// random points, several rounds, each restart on the same journal; the
/// sender resends whatever got no answer (as Parallel does). Invariant:
/// every webhook that got a 200 reaches every matching target at least
/// once, with a valid signature over bytes that were really sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_webhook() {
    let n = env_or("RELIABILITY_N", 2_000);
    let concurrency = env_or("RELIABILITY_CONCURRENCY", 32);
    let kills = env_or("RELIABILITY_KILLS", 4);
    let mut rng = Rng::from_env();
    let names = ["all", "monitors", "research"];
    let mut targets = BTreeMap::new();
    let mut tables = String::new();
    for name in names {
        let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
        // A little slow, so attempts are in flight when the kill comes.
        target.answer_with(|_| Some(crate::common::target::Answer::Slow(Duration::from_millis(2), 200)));
        let filter = match name {
            "monitors" => "events = [\"monitor.*\"]",
            "research" => "match = { \"/data/metadata/team\" = \"research\" }",
            _ => "",
        };
        tables.push_str(&target_table(name, &target, &format!("concurrency = 8\n{filter}")));
        targets.insert(name, target);
    }
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), &tables);
    let sent: BTreeMap<String, String> =
        (0..n).map(|i| (format!("whevent_crash_{i:06}"), event(i, 200))).collect();
    let index_of = |id: &str| id.rsplit('_').next().unwrap().parse::<usize>().unwrap();
    let mut unacked: Vec<String> = sent.keys().cloned().collect();
    let mut acked = BTreeMap::new();

    for round in 0..=kills {
        let daemon = Daemon::start(&config_path);
        let addr = daemon.addr;
        let queue = Arc::new(std::sync::Mutex::new(unacked.clone()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let senders: Vec<_> = (0..concurrency)
            .map(|_| {
                let (queue, tx, sent) = (queue.clone(), tx.clone(), sent.clone());
                tokio::spawn(async move {
                    loop {
                        let Some(id) = queue.lock().unwrap().pop() else { return };
                        match try_send(addr, &id, &sent[&id]).await {
                            Some(reply) => {
                                assert_eq!(reply.status, 200, "{id}: {}", reply.text());
                                let _ = tx.send(id);
                            }
                            None => return, // the gateway is gone: resend next round
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut daemon = daemon;
        let mut this_round = 0;
        if round < kills {
            // Somewhere inside the load — appends being group-committed,
            // fan-out in flight — after a random share of a round's work.
            let share = (n / (kills + 1)) as u64;
            let kill_after = share / 2 + rng.below(share.max(1));
            while this_round < kill_after {
                let Some(id) = rx.recv().await else { break };
                acked.insert(id.clone(), sent[&id].clone());
                this_round += 1;
            }
            daemon.child.kill().unwrap();
            daemon.child.wait().unwrap();
        }
        for sender in senders {
            sender.await.unwrap();
        }
        while let Ok(id) = rx.try_recv() {
            acked.insert(id.clone(), sent[&id].clone());
            this_round += 1;
        }
        unacked.retain(|id| !acked.contains_key(id));
        println!("crash: round {round}: {this_round} acknowledged, {} to resend", unacked.len());
        if round == kills {
            assert!(unacked.is_empty(), "with no kill every webhook is acknowledged");
            // Everything acknowledged arrives at every matching target.
            for (name, target) in &targets {
                let expected: BTreeSet<&String> =
                    acked.keys().filter(|id| matches(name, index_of(id))).collect();
                let received = target
                    .wait_until(Duration::from_secs(120), |received| {
                        let got = arrivals(received);
                        expected.iter().all(|id| got.contains_key(id.as_str()))
                    })
                    .await;
                assert_authentic(name, &received, &sent);
                let got = arrivals(&received);
                assert!(
                    got.keys().all(|id| matches(name, index_of(id))),
                    "{name} got a webhook its filter excludes"
                );
                let repeats: usize = got.values().map(|count| count - 1).sum();
                println!(
                    "crash: target {name}: {} expected, {} delivered, {repeats} repeated (same webhook-id)",
                    expected.len(),
                    got.len()
                );
                assert_eq!(got.len(), expected.len());
            }
            daemon.signal("TERM");
            assert!(daemon.wait().await.success());
        }
    }
    println!("crash: {kills} SIGKILLs, {} acknowledged of {n} sent, none lost", acked.len());
    assert_journaled(&config_path, &acked);
}

// ---------------------------------------------------------------- target outage

/// Four targets: one healthy, one refusing connections, one answering 503
/// with Retry-After, one too slow for its timeout. The healthy one gets
/// everything while the others are down; after they recover, retries and
/// a replay of what went dead deliver the rest; nothing dead is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_outages_stay_isolated_and_everything_arrives_after_recovery() {
    use crate::common::target::Answer;
    use std::sync::atomic::{AtomicBool, Ordering};
    const N: usize = 200;
    let healthy = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    // Bound but not listening: connections are refused, and no other process
    // can take the port before the target comes back on it.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let refused_at = reserved.local_addr().unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let unavailable = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let flag = down.clone();
    unavailable.answer_with(move |_| flag.load(Ordering::Relaxed).then_some(Answer::RetryAfter(503, "1")));
    let slow = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let flag = down.clone();
    slow.answer_with(move |_| {
        flag.load(Ordering::Relaxed).then_some(Answer::Slow(Duration::from_secs(2), 200))
    });
    // Few attempts, so some jobs go dead during the outage and need the replay.
    let retry = "retry = { initial = \"200ms\", max_delay = \"1s\", max_attempts = 3, max_age = \"1h\" }\n\
                 breaker = { failures = 1000 }";
    let tables = [
        target_table("healthy", &healthy, ""),
        format!(
            "[targets.refused]\nsource = \"parallel\"\nurl = \"http://{refused_at}/hook\"\nsecret = \"{TARGET_SECRET}\"\n{retry}\n"
        ),
        target_table("unavailable", &unavailable, retry),
        target_table("slow", &slow, &format!("timeout = \"300ms\"\n{retry}")),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&write_config(dir.path(), &tables));

    let mut sent = BTreeMap::new();
    let mut sent_at = BTreeMap::new();
    for i in 0..N {
        let (id, body) = (format!("whevent_outage_{i:04}"), event(i, 100));
        sent_at.insert(id.clone(), Instant::now());
        assert_eq!(try_send(daemon.addr, &id, &body).await.unwrap().status, 200);
        sent.insert(id, body);
    }
    let received = healthy.wait_for(N, Duration::from_secs(30)).await;
    let latencies: Vec<Duration> =
        received.iter().map(|r| r.at.duration_since(sent_at[r.header("webhook-id")])).collect();
    let targets = admin_get(daemon.admin_addr, "/v1/targets").await.json();
    let refused_target =
        targets["targets"].as_array().unwrap().iter().find(|t| t["name"] == "refused").unwrap();
    assert_eq!(
        refused_target["attempts_since_start"]["delivered"], 0,
        "the healthy target got everything while the refused one got nothing: {refused_target}"
    );
    println!(
        "outage: healthy target got all {N} during the outage; latency p50 {:.1} ms, p99 {:.1} ms",
        percentile_ms(latencies.clone(), 0.5),
        percentile_ms(latencies, 0.99)
    );

    // Let some jobs spend their attempts, then recover everything.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let targets = admin_get(daemon.admin_addr, "/v1/targets").await.json();
    let dead_during: u64 =
        targets["targets"].as_array().unwrap().iter().map(|t| t["dead"].as_u64().unwrap()).sum();
    println!("outage: {dead_during} jobs dead during the outage (kept for replay)");
    assert!(dead_during > 0, "the outage outlasted some retry budgets: {targets}");
    let refused = TestTarget::start_on_socket(reserved, Some(TARGET_SECRET)).await;
    down.store(false, Ordering::Relaxed);
    // Whatever is still retrying finishes by itself; the dead ones by replay.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replay =
        admin_post(daemon.admin_addr, "/v1/replays", serde_json::json!({"since": "0", "status": "dead"}))
            .await;
    assert_eq!(replay.status, 201, "{}", replay.text());
    for (name, target) in
        [("refused", &refused), ("unavailable", &unavailable), ("slow", &slow), ("healthy", &healthy)]
    {
        let received = target
            .wait_until(Duration::from_secs(60), |received| {
                let got = arrivals(received);
                sent.keys().all(|id| got.contains_key(id))
            })
            .await;
        assert_authentic(name, &received, &sent);
        println!("outage: target {name}: all {N} delivered ({} requests)", received.len());
    }
    // Nothing left dead or pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let targets = admin_get(daemon.admin_addr, "/v1/targets").await.json();
        let left: u64 = targets["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["dead"].as_u64().unwrap() + t["pending"].as_u64().unwrap())
            .sum();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs left after recovery: {targets}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(healthy.received().len(), N, "the healthy target got each webhook once");
}

// --------------------------------------------------------------------- overload

/// 10× the source's rate limit: the excess is refused with 429 and
/// Retry-After, everything accepted is delivered, the target's own rate
/// limit holds at every moment (from its receive times) and memory stays
/// bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_rate_limit_is_refused_cleanly_and_the_rest_delivered() {
    const SOURCE_RATE: u64 = 40;
    const SECONDS: u64 = 3;
    const TARGET_RATE: f64 = 25.0;
    const TARGET_BURST: f64 = 5.0;
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(
        dir.path(),
        &format!(
            "rate_limit = {{ per_second = {SOURCE_RATE}, burst = 10 }}\n{}",
            target_table("t", &target, "rate_limit = { per_second = 25, burst = 5 }")
        ),
    );
    let daemon = Daemon::start(&config_path);
    let addr = daemon.addr;

    // Open loop at 10× the limit: each request leaves at its time, whatever
    // happened to the previous ones.
    let total = SOURCE_RATE * 10 * SECONDS;
    let interval = Duration::from_secs(SECONDS).div_f64(total as f64);
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..total as usize)
        .map(|i| {
            let body = event(i, 500);
            tokio::spawn(async move {
                tokio::time::sleep_until(started + interval * i as u32).await;
                let id = format!("whevent_flood_{i:05}");
                let reply = try_send(addr, &id, &body).await.expect("answered");
                (id, body, reply)
            })
        })
        .collect();
    let mut accepted = BTreeMap::new();
    let mut limited = 0;
    for task in tasks {
        let (id, body, reply) = task.await.unwrap();
        match reply.status {
            200 => {
                accepted.insert(id, body);
            }
            429 => {
                assert_eq!(reply.error_code(), "rate_limited");
                let after: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(after >= 1);
                limited += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    }
    println!(
        "overload: {total} sent in {SECONDS}s (10× {SOURCE_RATE}/s): {} accepted, {limited} refused with 429",
        accepted.len()
    );
    assert!(limited as u64 > total / 2, "most of a 10× flood is refused");
    assert!(!accepted.is_empty());

    let received = target
        .wait_until(Duration::from_secs(60), |received| {
            let got = arrivals(received);
            accepted.keys().all(|id| got.contains_key(id))
        })
        .await;
    assert_authentic("t", &received, &accepted);
    let peak = peak_rss_kib(daemon.child.id());
    let mut daemon = daemon;
    daemon.signal("TERM");
    assert!(daemon.wait().await.success());
    // When the gateway sent each attempt (recorded in the journal, taken
    // right after the rate limiter let it go): in any stretch of time at
    // most burst + rate × its length, +1 for millisecond rounding.
    let journal = Journal::open(&Config::load(&config_path).unwrap().journal).unwrap();
    let mut times: Vec<u64> = Vec::new();
    for record in journal.iter() {
        let record = record.unwrap();
        for job in journal.jobs_of(record.id).unwrap() {
            times.extend(job.history.iter().map(|attempt| attempt.at_ms));
        }
    }
    times.sort_unstable();
    assert_eq!(times.len(), accepted.len(), "one attempt per accepted webhook");
    let mut worst = 0.0f64;
    for i in 0..times.len() {
        for j in i..times.len() {
            let span = (times[j] - times[i]) as f64 / 1000.0;
            let allowed = TARGET_BURST + TARGET_RATE * span + 1.0;
            let count = (j - i + 1) as f64;
            worst = worst.max(count / allowed);
            assert!(count <= allowed, "{count} attempts in {span:.3}s exceed the target's rate limit");
        }
    }
    println!(
        "overload: all {} accepted delivered at ≤ {TARGET_RATE}/s (worst window at {:.0}% of the limit); peak RSS {} MiB",
        accepted.len(),
        worst * 100.0,
        peak / 1024
    );
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
}

// ---------------------------------------------------------------- hostile input

const ADMIN_TOKEN: &str = "admin-token-reliability-3f9c2a";

/// A gateway over TLS with tight limits, an admin token and one target.
fn hostile_config(dir: &Path) -> (std::path::PathBuf, Arc<rustls::ClientConfig>) {
    let (cert, key, client) = make_tls(dir);
    let path = dir.join("hookrelay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\
             max_body = \"64KiB\"\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\nmax_connections = 64\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\
             [journal]\npath = \"journal\"\n\
             [sources.parallel]\nsecrets = [\"{SECRET}\"]\n"
        ),
    )
    .unwrap();
    (path, client)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(addr: SocketAddr, client: &Arc<rustls::ClientConfig>, alpn: &[u8]) -> Tls {
    let mut config = (**client).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

/// Writes `bytes` (ignoring a peer that already hung up), then reads until
/// a whole HTTP/1.1 response has arrived, the peer closes the connection, or
/// `within` passes; returns what arrived and whether the connection ended.
async fn exchange(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
    within: Duration,
) -> (String, bool) {
    let (received, closed) = exchange_until(stream, bytes, within, |received| {
        let text = String::from_utf8_lossy(received);
        text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            head.starts_with("HTTP/1.1 ")
                && head
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned)
                    })
                    .and_then(|len| len.trim().parse::<usize>().ok())
                    .is_some_and(|len| body.len() >= len)
        })
    })
    .await;
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// The same, the bytes as they came, until the peer closes or `within` passes.
async fn exchange_raw(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
    within: Duration,
) -> (Vec<u8>, bool) {
    exchange_until(stream, bytes, within, |_| false).await
}

async fn exchange_until(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
    within: Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let mut received = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if enough(&received) {
            return (received, false);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => return (received, false),
        }
    }
}

/// The types of the whole HTTP/2 frames a server sent, in order.
fn h2_frame_kinds(bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + 9) {
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        kinds.push(head[3]);
        at += 9 + len;
    }
    kinds
}

/// The status of the first HTTP/1.1 response in `text`, if any.
fn status_of(text: &str) -> Option<u16> {
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// One well-formed signed webhook over TLS still gets its 200.
async fn assert_served(addr: SocketAddr, client: &Arc<rustls::ClientConfig>, id: &str) {
    let body = event(1, 10);
    let request = signed_request("parallel", SECRET, id, now(), body.as_bytes());
    let tls = tls_connect(addr, client, b"http/1.1").await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("{id}: a well-behaved client was not served within 10 s"))
        .unwrap();
    assert_eq!(response.status(), 200, "{id}");
}

/// A raw HTTP/1.1 POST head to the webhook path with these extra lines.
fn raw_post(path: &str, lines: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{lines}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends the h2 preface and reads the server's first SETTINGS frame:
/// its SETTINGS_MAX_CONCURRENT_STREAMS, if it sets one.
async fn h2_max_concurrent_streams(tls: &mut Tls) -> Option<u32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(h2_frame(0x4, 0, 0, &[]));
    tls.write_all(&preface).await.unwrap();
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 0x4, "the server's first frame is its SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).await.unwrap();
    payload
        .chunks_exact(6)
        .find(|setting| setting[..2] == [0, 3])
        .map(|setting| u32::from_be_bytes(setting[2..].try_into().unwrap()))
}

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Every kind of hostile client the issue lists, against the inbound TLS
/// listener (HTTP/1.1 and h2) and the admin listener. Each gets a clear 4xx
/// or a closed connection; between attacks a well-behaved client is served;
/// at the end the process is alive, never panicked and its memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_4xx_or_a_closed_connection_and_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (config_path, client) = hostile_config(dir.path());
    let mut daemon = Daemon::start(&config_path);
    let (addr, admin) = (daemon.addr, daemon.admin_addr);
    let signed = |id: &str, ts: &str, body: &[u8]| {
        let key = hookrelay::signature::signing_key_for_secret(SECRET).unwrap();
        let signature = hookrelay::signature::sign(&key, id, ts, body);
        format!("webhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {signature}\r\n")
    };
    let mut findings = Vec::new();
    let mut check = |name: &str, outcome: String| {
        println!("hostile: {name}: {outcome}");
        findings.push(name.to_owned());
    };

    // Slowloris: 40 TLS connections trickling a head, one line at a time.
    let mut trickles = Vec::new();
    for _ in 0..40 {
        let mut tls = tls_connect(addr, &client, b"http/1.1").await;
        tls.write_all(b"POST /hooks/parallel HTTP/1.1\r\nhost: localhost\r\n").await.unwrap();
        trickles.push(tokio::spawn(async move {
            for _ in 0..20 {
                if tls.write_all(b"x-slow: 1\r\n").await.is_err() || tls.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            exchange(&mut tls, b"", Duration::from_secs(10)).await
        }));
    }
    assert_served(addr, &client, "whevent_hostile_during_slowloris").await;
    for trickle in trickles {
        let (answer, closed) = trickle.await.unwrap();
        assert!(status_of(&answer) == Some(408) || (answer.is_empty() && closed), "not cut off: {answer}");
    }
    check("slowloris (40 trickled heads)", "408 / closed at header_timeout; others served meanwhile".into());

    // More idle connections than `max_connections`: they wait, are closed
    // at header_timeout, and a real client still gets in.
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    daemon.wait_for_log("every connection slot is taken", Duration::from_secs(10)).await;
    assert_served(addr, &client, "whevent_hostile_past_max_connections").await;
    drop(idle);
    check("150 idle connections, max_connections = 64", "closed at header_timeout; others served".into());

    // Bodies over max_body, declared and streamed.
    let mut tls = tls_connect(addr, &client, b"http/1.1").await;
    let lines = signed("whevent_hostile_big", &now().to_string(), b"{}");
    let head = format!(
        "POST /hooks/parallel HTTP/1.1\r\nhost: localhost\r\n{lines}content-length: 10000000000\r\n\r\n"
    );
    let (answer, _) = exchange(&mut tls, head.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), Some(413), "{answer}");
    let mut tls = tls_connect(addr, &client, b"http/1.1").await;
    let mut chunked = format!(
        "POST /hooks/parallel HTTP/1.1\r\nhost: localhost\r\n{lines}transfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 4096, "a".repeat(4096)).as_bytes());
    }
    let (answer, _) = exchange(&mut tls, &chunked, Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), Some(413), "{answer}");
    check("bodies over max_body (declared 10 GB, chunked 160 KiB)", "413".into());

    // Invalid UTF-8 in a header and in an unsigned body; a signed non-JSON body.
    let mut bad = b"POST /hooks/parallel HTTP/1.1\r\nhost: localhost\r\nwebhook-id: \xff\xfe\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,AA==\r\ncontent-length: 2\r\n\r\n{}".to_vec();
    let mut tls = tls_connect(addr, &client, b"http/1.1").await;
    let (answer, _) = exchange(&mut tls, &bad, Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), Some(400), "{answer}");
    bad = raw_post(
        "/hooks/parallel",
        &signed("whevent_hostile_utf8", &now().to_string(), b"{}"),
        b"\xff\xfe\xfd\x00",
    );
    let mut tls = tls_connect(addr, &client, b"http/1.1").await;
    let (answer, _) = exchange(&mut tls, &bad, Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), Some(401), "a body that is not what was signed: {answer}");
    check("invalid UTF-8 (header, body)", "400, 401".into());

    // 10,000 signature entries: all compared, none matches.
    let entries = vec!["v1,AAAAAAAA"; 10_000].join(" ");
    let lines = format!(
        "webhook-id: whevent_many\r\nwebhook-timestamp: {}\r\nwebhook-signature: {entries}\r\n",
        now()
    );
    let mut tls = tls_connect(addr, &client, b"http/1.1").await;
    let started = Instant::now();
    let (answer, _) =
        exchange(&mut tls, &raw_post("/hooks/parallel", &lines, b"{}"), Duration::from_secs(5)).await;
    assert!(matches!(status_of(&answer), Some(401 | 431)), "{answer}");
    check(
        "10,000 signature entries",
        format!("{:?} in {:.0} ms", status_of(&answer), started.elapsed().as_secs_f64() * 1e3),
    );

    // Enormous header counts and sizes.
    let many: String = (0..10_000).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut tls = tls_connect(addr, &client, b"http/1.1").await;
    let (answer, closed) =
        exchange(&mut tls, &raw_post("/hooks/parallel", &many, b"{}"), Duration::from_secs(5)).await;
    assert!(status_of(&answer) == Some(431) || (answer.is_empty() && closed), "{answer}");
    let huge = format!("x-huge: {}\r\n", "h".repeat(1 << 20));
    let mut tls = tls_connect(addr, &client, b"http/1.1").await;
    let (answer, closed) =
        exchange(&mut tls, &raw_post("/hooks/parallel", &huge, b"{}"), Duration::from_secs(5)).await;
    assert!(status_of(&answer) == Some(431) || (answer.is_empty() && closed), "{answer}");
    check("10,000 headers; one 1 MiB header", "431 or closed".into());

    // Timestamps at and past the i64 limits.
    for ts in [i64::MAX.to_string(), i64::MIN.to_string(), "99999999999999999999999".into(), "-0".into()] {
        let lines = signed("whevent_hostile_ts", &ts, b"{}");
        let mut tls = tls_connect(addr, &client, b"http/1.1").await;
        let (answer, _) =
            exchange(&mut tls, &raw_post("/hooks/parallel", &lines, b"{}"), Duration::from_secs(5)).await;
        assert!(matches!(status_of(&answer), Some(400 | 401)), "timestamp {ts}: {answer}");
    }
    check("timestamps i64::MAX, i64::MIN, 10^23, -0", "400 / 401".into());

    // TLS garbage, and plain HTTP on the TLS port.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let garbage: Vec<u8> = (0..16_384u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (answer, closed) = exchange(&mut tcp, &garbage, Duration::from_secs(5)).await;
    assert!(closed && !answer.contains("HTTP/1.1 2"), "{answer}");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (answer, closed) =
        exchange(&mut tcp, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", Duration::from_secs(5)).await;
    assert!(closed && !answer.contains("HTTP/1.1 2"), "{answer}");
    check("TLS garbage; plain HTTP on the TLS port", "connection closed".into());

    // HTTP/2: a thousand concurrent streams on one connection...
    let tls = tls_connect(addr, &client, b"h2").await;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let streams: Vec<_> = (0..1_000)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let request = request("parallel", &[], b"{}");
                sender.send_request(request).await.map(|r| r.status().as_u16()).unwrap_or(0)
            })
        })
        .collect();
    let mut unsigned = 0;
    for stream in streams {
        if stream.await.unwrap() == 400 {
            unsigned += 1;
        }
    }
    assert!(unsigned > 0);
    // ...and a rapid-reset flood: open a stream and cancel it, 10,000 times.
    let mut tls = tls_connect(addr, &client, b"h2").await;
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    flood.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    let mut headers = vec![0x83, 0x87, 0x84, 0x01, 0x09]; // POST, https, /, :authority
    headers.extend_from_slice(b"localhost");
    for stream in (1..20_000u32).step_by(2) {
        flood.extend(h2_frame(0x1, 0x4, stream, &headers)); // HEADERS, END_HEADERS
        flood.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let (answer, closed) = exchange_raw(&mut tls, &flood, Duration::from_secs(10)).await;
    let goaway = h2_frame_kinds(&answer).contains(&0x7);
    assert!(closed || goaway, "the rapid-reset flood was neither refused nor cut off");
    check(
        "h2: 1,000 concurrent streams; 10,000 rapid resets",
        format!("{unsigned} answered 400; flood → GOAWAY/closed"),
    );
    // ...and an h2 connection that goes quiet after its preface is closed at
    // header_timeout instead of holding a connection slot for good.
    let mut tls = tls_connect(addr, &client, b"h2").await;
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(h2_frame(0x4, 0, 0, &[]));
    let (_, closed) = exchange(&mut tls, &preface, Duration::from_secs(10)).await;
    assert!(closed, "an idle h2 connection stays open");
    check("h2: a connection idle after its preface", "closed at header_timeout".into());
    // Each stream may buffer a body before its signature is checked: few per connection.
    let mut tls = tls_connect(addr, &client, b"h2").await;
    assert_eq!(h2_max_concurrent_streams(&mut tls).await, Some(8));
    check("h2: streams per connection", "SETTINGS_MAX_CONCURRENT_STREAMS = 8".into());
    assert_served(addr, &client, "whevent_hostile_after_h2").await;

    // Path traversal never leaves /hooks/{source}.
    for path in [
        "/hooks/../metrics",
        "/hooks/..%2f..%2fetc%2fpasswd",
        "/hooks/parallel/../other",
        "/hooks/%2e%2e",
        "//hooks/parallel/..",
    ] {
        let lines = signed("whevent_hostile_path", &now().to_string(), b"{}");
        let mut tls = tls_connect(addr, &client, b"http/1.1").await;
        let (answer, _) = exchange(&mut tls, &raw_post(path, &lines, b"{}"), Duration::from_secs(5)).await;
        assert!(matches!(status_of(&answer), Some(400 | 404)), "{path}: {answer}");
    }
    check("path traversal under /hooks/", "404 / 400".into());

    // The admin listener: no token, a wrong one, traversal, trickled and oversized heads.
    for token in [None, Some("wrong"), Some("")] {
        let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let head = format!("GET /v1/targets HTTP/1.1\r\nhost: localhost\r\n{auth}\r\n");
        let (answer, _) = exchange(&mut tcp, head.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), Some(401), "{answer}");
        assert!(!answer.contains(ADMIN_TOKEN));
    }
    for path in ["/v1/../metrics", "/v1/targets/../../etc/passwd", "/v1/deliveries/..%2f..%2f"] {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        let head =
            format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\r\n");
        let (answer, _) = exchange(&mut tcp, head.as_bytes(), Duration::from_secs(5)).await;
        assert!(matches!(status_of(&answer), Some(400 | 404)), "{path}: {answer}");
    }
    // A declared body that never comes: refused before reading outside /v1,
    // cut off at the deadline inside it.
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head = "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n";
    let (answer, _) = exchange(&mut tcp, head.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), Some(405), "{answer}");
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head = format!(
        "POST /v1/replays HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-length: 1000\r\n\r\n"
    );
    let (answer, _) = exchange(&mut tcp, head.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status_of(&answer), Some(408), "{answer}");
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (answer, closed) =
        exchange(&mut tcp, b"GET /metrics HTTP/1.1\r\nhost: x\r\n", Duration::from_secs(15)).await;
    assert!(closed, "a head left unfinished on the admin listener is cut off: {answer}");
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (answer, closed) = exchange(&mut tcp, &garbage, Duration::from_secs(5)).await;
    assert!(status_of(&answer) == Some(400) || (answer.is_empty() && closed), "{answer}");
    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head = format!("GET /metrics HTTP/1.1\r\nhost: x\r\n{huge}\r\n");
    let (answer, closed) = exchange(&mut tcp, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(status_of(&answer) == Some(431) || (answer.is_empty() && closed), "{answer}");
    check(
        "admin: no/wrong token, traversal, unsent bodies, trickled head, garbage, 1 MiB header",
        "401 / 404 / 405 / 408 / closed / 431".into(),
    );

    assert_served(addr, &client, "whevent_hostile_at_the_end").await;
    assert!(daemon.child.try_wait().unwrap().is_none(), "the gateway is still running");
    let peak = peak_rss_kib(daemon.child.id());
    println!("hostile: {} attacks; the gateway kept serving; peak RSS {} MiB", findings.len(), peak / 1024);
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
    daemon.signal("TERM");
    assert!(daemon.wait().await.success());
    let logs = daemon.logs();
    assert!(!logs.contains("panicked"), "a panic in the logs");
    for secret in [SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ADMIN_TOKEN] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}

/// A gateway whose two connection slots are held by `hold` (one client
/// each, run for 30 s unless the gateway cuts it off) still serves a
/// well-behaved client: each holder is cut off at `header_timeout` (1 s).
async fn both_slots_taken_by(
    name: &str,
    hold: impl Fn(SocketAddr, Arc<rustls::ClientConfig>) -> tokio::task::JoinHandle<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (config_path, client) = hostile_config(dir.path());
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, text.replace("max_connections = 64", "max_connections = 2")).unwrap();
    let daemon = Daemon::start(&config_path);
    let holders = [hold(daemon.addr, client.clone()), hold(daemon.addr, client.clone())];
    daemon.wait_for_log("every connection slot is taken", Duration::from_secs(10)).await;
    let started = Instant::now();
    // Well before the holders give up by themselves (connecting included).
    tokio::time::timeout(
        Duration::from_secs(10),
        assert_served(daemon.addr, &client, &format!("whevent_after_{name}")),
    )
    .await
    .unwrap_or_else(|_| panic!("{name}: the slots were still held after 10 s"));
    println!("hostile: {name}: both slots freed; a client served after {:?}", started.elapsed());
    for holder in holders {
        holder.abort();
    }
}

/// An h2 client that keeps its connection busy with PINGs but never opens a
/// request is closed at `header_timeout` like a silent one: frames are not
/// requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_connections_that_only_ping_are_closed_at_header_timeout() {
    both_slots_taken_by("h2_pings", |addr, client| {
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tls = tls_connect(addr, &client, b"h2").await;
            let (mut reader, mut writer) = tokio::io::split(tls);
            let drain = tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while reader.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            });
            let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            preface.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
            let mut sent = writer.write_all(&preface).await;
            let until = Instant::now() + Duration::from_secs(30);
            while sent.is_ok() && !drain.is_finished() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(250)).await;
                sent = writer.write_all(&h2_frame(0x6, 0, 0, &[7; 8])).await; // PING
            }
        })
    })
    .await;
}

/// A client that pipelines requests and never reads the answers (a tiny
/// receive window) stalls the gateway's writes; the stalled connection is
/// cut off at `header_timeout` instead of holding its slot for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answers_is_cut_off() {
    both_slots_taken_by("unread_answers", |addr, client| {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let tcp = socket.connect(addr).await.unwrap();
            let mut config = (*client).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls =
                tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
            // Each answered 404 without a read on this side; the writes block
            // once the gateway stops reading behind its unsent answers.
            let requests = b"GET /nowhere HTTP/1.1\r\nhost: localhost\r\n\r\n".repeat(1_000);
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                match tokio::time::timeout(Duration::from_secs(1), tls.write_all(&requests)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return, // cut off
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await, // blocked
                }
            }
        })
    })
    .await;
}

// ------------------------------------------------------------------- security

/// On the real binary: a signature made for one source fails on another; a
/// resent webhook inside the timestamp tolerance is a duplicate and outside
/// it is refused; the admin API wants its token; and no secret or token
/// appears in the logs (captured at debug level) of all that plus deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_checks_hold_and_no_secret_reaches_the_logs() {
    const OTHER_SECRET: &str = "whsec_b3RoZXItc291cmNlLXNlY3JldC1yZWxpYWJpbGl0eQ==";
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("hookrelay.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\
             [journal]\npath = \"journal\"\n[sources.parallel]\nsecrets = [\"{SECRET}\"]\n\
             [sources.other]\nsecrets = [\"{OTHER_SECRET}\"]\n{}",
            target_table("consumer", &target, "")
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(&config_path);
    let body = event(2, 10);

    // Signed for `parallel`, posted to `other`.
    let request = signed_request("other", SECRET, "whevent_cross", now(), body.as_bytes());
    let reply = send_plain(daemon.addr, request).await;
    assert_eq!((reply.status, reply.error_code().as_str()), (401, "invalid_signature"));

    // The same webhook again: inside the tolerance a duplicate, outside refused.
    let first =
        send_plain(daemon.addr, signed_request("parallel", SECRET, "whevent_again", now(), body.as_bytes()))
            .await;
    assert_eq!(first.status, 200);
    let again =
        send_plain(daemon.addr, signed_request("parallel", SECRET, "whevent_again", now(), body.as_bytes()))
            .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(again.json()["id"], first.json()["id"]);
    let stale = now() - 3600;
    let late =
        send_plain(daemon.addr, signed_request("parallel", SECRET, "whevent_again", stale, body.as_bytes()))
            .await;
    assert_eq!((late.status, late.error_code().as_str()), (401, "timestamp_too_old"));
    target.wait_for(1, Duration::from_secs(10)).await;

    // The admin API without, with a wrong, and with the right token.
    let call = |token: Option<&str>| {
        let mut builder = hyper::Request::get("/v1/targets").header("host", "localhost");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap()
    };
    assert_eq!(send_plain(daemon.admin_addr, call(None)).await.status, 401);
    assert_eq!(send_plain(daemon.admin_addr, call(Some("not-the-token"))).await.status, 401);
    let listed = send_plain(daemon.admin_addr, call(Some(ADMIN_TOKEN))).await;
    assert_eq!(listed.status, 200);
    let deliveries = send_plain(
        daemon.admin_addr,
        hyper::Request::get("/v1/deliveries")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    for answer in [listed.text(), deliveries.text()] {
        for secret in [SECRET, OTHER_SECRET, TARGET_SECRET, ADMIN_TOKEN] {
            assert!(!answer.contains(secret), "the admin API showed a secret");
        }
    }

    daemon.signal("TERM");
    assert!(daemon.wait().await.success());
    let logs = daemon.logs();
    assert!(logs.contains("\"level\":\"DEBUG\""), "logs were captured at debug level");
    // Each secret whole and its key part, as configured and as decoded.
    let mut forbidden = vec![ADMIN_TOKEN.to_owned()];
    for secret in [SECRET, OTHER_SECRET, TARGET_SECRET] {
        let key = secret.trim_start_matches("whsec_");
        forbidden.extend([secret.to_owned(), key.to_owned()]);
        if let Ok(decoded) = base64_decode(key) {
            forbidden.push(String::from_utf8_lossy(&decoded).into_owned());
        }
    }
    for secret in &forbidden {
        assert!(!logs.contains(secret.as_str()), "{secret:?} reached the logs");
    }
    println!(
        "security: cross-source 401, duplicate inside tolerance, 401 outside, admin 401 without token; {} log lines scanned for {} secret forms",
        logs.lines().count(),
        forbidden.len()
    );
}

fn base64_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text)
}
