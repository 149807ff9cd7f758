//! Replays, backfill, dead letters and purges: the operator's side after an
//! outage, against a real gateway, real targets and the real CLI binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::target::{Received, TestTarget};
use crate::common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");
const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
const WAIT: Duration = Duration::from_secs(30);

/// A target table with a short retry budget and a breaker that stays shut,
/// so a target that is down turns its jobs dead quickly.
fn target_table(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[targets.{name}]\nsource = \"parallel\"\nurl = \"{url}\"\nsecret = \"{TARGET_SECRET}\"\nconcurrency = 8\n\
         retry = {{ initial = \"10ms\", max_delay = \"20ms\", max_attempts = 2, max_age = \"1h\" }}\n\
         breaker = {{ failures = 100000, probe_interval = \"1s\" }}\n{extra}\n"
    )
}

/// An address where nothing listens (connections are refused) until a
/// target is started on it.
/// An address that refuses connections while the socket lives: bound, never
/// listening, so no other test can take the port meanwhile.
fn refused_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = reserved.local_addr().unwrap();
    (reserved, addr)
}

fn event(kind: &str, n: usize) -> String {
    format!(r#"{{"type":"{kind}","timestamp":"2025-07-02T23:29:35Z","data":{{"monitor_id":"monitor_{n}"}}}}"#)
}

/// How many times each webhook-id arrived.
fn counts(received: &[Received]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in received {
        *counts.entry(r.header("webhook-id").to_owned()).or_default() += 1;
    }
    counts
}

async fn wait_for_json(
    admin: SocketAddr,
    path: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = admin_get(admin, path).await;
        let value = reply.json();
        if reply.status == 200 && pred(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}; last answer {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Once `delivery` has reached `consumer`: pauses the target and replays the
/// delivery to it; the replay's id. The replayed job stays pending.
async fn replay_while_paused(admin_addr: SocketAddr, consumer: &TestTarget, delivery: &str) -> String {
    consumer.wait_for(1, WAIT).await;
    wait_for_json(admin_addr, "/v1/targets", "delivered", |t| target_field(t, "consumer", "pending") == 0)
        .await;
    assert_eq!(admin_post(admin_addr, "/v1/targets/consumer/pause", json!({})).await.status, 200);
    let started = admin_post(admin_addr, "/v1/replays", json!({"ids": [delivery]})).await;
    assert_eq!(started.status, 201, "{}", started.text());
    assert_eq!(started.json()["matched"], 1);
    started.json()["id"].as_str().unwrap().to_owned()
}

fn target_field(targets: &serde_json::Value, name: &str, field: &str) -> u64 {
    targets["targets"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()[field]
        .as_u64()
        .unwrap()
}

/// Runs the CLI off the async workers; returns (exit code, stdout, stderr).
async fn cli(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN).args(&args).env_remove("HOOKRELAY_ADMIN_TOKEN").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_story_dead_jobs_are_replayed_once_to_the_recovered_target_only() {
    let (reserved, down_addr) = refused_addr();
    let healthy = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let targets = target_table("consumer", &format!("http://{down_addr}/hook"), "")
        + &target_table("healthy", &healthy.url(), "");
    let gateway = TestGateway::with(Options { targets, ..Options::default() }).await;

    // 200 deliveries arrive while the consumer refuses connections.
    const N: usize = 200;
    for i in 0..N {
        let reply = gateway
            .post_signed(
                Transport::Http,
                "parallel",
                &format!("whevent_{i:03}"),
                &event("monitor.event.detected", i),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    healthy.wait_for(N, WAIT).await;
    let targets = wait_for_json(gateway.admin_addr, "/v1/targets", "all consumer jobs dead", |t| {
        target_field(t, "consumer", "dead") == N as u64
    })
    .await;
    assert_eq!(target_field(&targets, "consumer", "pending"), 0);
    let metrics = admin_get(gateway.admin_addr, "/metrics").await.text();
    assert!(metrics.contains(&format!("hookrelay_dead_jobs{{target=\"consumer\"}} {N}")), "{metrics}");

    // The consumer comes back; the operator replays what it missed.
    drop(reserved);
    let consumer = TestTarget::start_on(down_addr, Some(TARGET_SECRET)).await;
    let admin = format!("http://{}", gateway.admin_addr);
    let (code, stdout, stderr) = cli(args(&[
        "replay",
        "--admin",
        &admin,
        "--target",
        "consumer",
        "--status",
        "dead",
        "--since",
        "1h",
        "--dry-run",
    ]))
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), format!("would replay {N} jobs"));
    assert!(consumer.received().is_empty(), "a dry run sends nothing");

    let (code, stdout, stderr) = cli(args(&[
        "replay", "--admin", &admin, "--target", "consumer", "--status", "dead", "--since", "1h",
    ]))
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("{N} jobs requeued")), "{stdout}");
    assert!(stdout.contains(&format!("{N} delivered, 0 dead again")), "{stdout}");
    assert!(stderr.contains(&format!("{N}/{N}")), "progress is shown: {stderr}");

    // Exactly once more each, marked as a replay, re-signed, same webhook-id.
    let received = consumer.received();
    let per_id = counts(&received);
    assert_eq!(per_id.len(), N);
    assert!(per_id.values().all(|&n| n == 1), "each delivery exactly once: {per_id:?}");
    for r in &received {
        assert_eq!(r.header("hookrelay-replay"), "1");
        assert_eq!(r.header("hookrelay-attempt"), "1", "a replay starts a fresh budget");
        assert_eq!(r.verified, Some(Ok(())));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(healthy.received().len(), N, "the healthy target got nothing extra");
    assert_eq!(consumer.received().len(), N);
    let metrics = admin_get(gateway.admin_addr, "/metrics").await.text();
    assert!(metrics.contains("hookrelay_dead_jobs{target=\"consumer\"} 0"), "{metrics}");

    // Replaying dead jobs again finds none.
    let (code, stdout, _) = cli(args(&[
        "replay", "--admin", &admin, "--target", "consumer", "--status", "dead", "--since", "1h",
    ]))
    .await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("0 jobs requeued"), "{stdout}");
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_added_later_is_backfilled_from_the_journal_honouring_its_filters() {
    let first = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let options = |targets: String| Options { targets, dir: Some(dir.clone()), ..Options::default() };
    let gateway = TestGateway::with(options(target_table("first", &first.url(), ""))).await;
    for i in 0..3 {
        gateway
            .post_signed(
                Transport::Http,
                "parallel",
                &format!("whevent_m{i}"),
                &event("monitor.event.detected", i),
            )
            .await;
    }
    for i in 0..2 {
        gateway
            .post_signed(Transport::Http, "parallel", &format!("whevent_t{i}"), &event("task_run.status", i))
            .await;
    }
    first.wait_for(5, WAIT).await;
    gateway.stop().await.unwrap();

    // A new consumer of task events joins.
    let tasks = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let targets = target_table("first", &first.url(), "")
        + &target_table("tasks", &tasks.url(), "events = [\"task_run.*\"]");
    let gateway = TestGateway::with(options(targets)).await;
    let selection = json!({"since": "0", "target": "tasks", "status": "missing"});
    let dry = admin_post(gateway.admin_addr, "/v1/replays", json!({"dry_run": true}).merge(&selection)).await;
    assert_eq!(dry.status, 200, "{}", dry.text());
    assert_eq!((dry.json()["matched"].as_u64(), dry.json()["id"].is_null()), (Some(2), true));

    let started = admin_post(gateway.admin_addr, "/v1/replays", selection).await;
    assert_eq!(started.status, 201, "{}", started.text());
    let id = started.json()["id"].as_str().unwrap().to_owned();
    let received = tasks.wait_for(2, WAIT).await;
    let mut ids: Vec<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["whevent_t0", "whevent_t1"], "only the events its filter takes");
    let progress = wait_for_json(gateway.admin_addr, &format!("/v1/replays/{id}"), "replay finished", |p| {
        p["finished"] == true
    })
    .await;
    assert_eq!((progress["matched"].as_u64(), progress["done"].as_u64()), (Some(2), Some(2)));
    assert_eq!(progress["selection"]["target"], "tasks");

    // Nothing is missing any more, and the first target got nothing extra.
    let again =
        admin_post(gateway.admin_addr, "/v1/replays", json!({"since": "0", "status": "missing"})).await;
    assert_eq!(again.json()["matched"], 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(first.received().len(), 5);
    assert_eq!(tasks.received().len(), 2);
    let listed = admin_get(gateway.admin_addr, "/v1/replays").await.json();
    assert_eq!(listed["replays"].as_array().unwrap().len(), 2);
    assert_eq!(listed["replays"][1]["id"], id.as_str(), "newest first");
    gateway.stop().await.unwrap();
}

/// `json!` objects merged, for building request bodies from a base.
trait Merge {
    fn merge(self, other: &serde_json::Value) -> serde_json::Value;
}

impl Merge for serde_json::Value {
    fn merge(mut self, other: &serde_json::Value) -> serde_json::Value {
        for (key, value) in other.as_object().unwrap() {
            self[key] = value.clone();
        }
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_survives_a_restart() {
    let consumer = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let options = || Options {
        targets: target_table("consumer", &consumer.url(), ""),
        dir: Some(dir.clone()),
        ..Options::default()
    };
    let gateway = TestGateway::with(options()).await;
    let reply = gateway
        .post_signed(Transport::Http, "parallel", "whevent_r", &event("monitor.event.detected", 1))
        .await;
    let delivery = reply.json()["id"].as_str().unwrap().to_owned();
    // Paused, so the replayed job is still pending when the gateway stops.
    let id = replay_while_paused(gateway.admin_addr, &consumer, &delivery).await;
    gateway.stop().await.unwrap();

    let gateway = TestGateway::with(options()).await;
    let progress = admin_get(gateway.admin_addr, &format!("/v1/replays/{id}")).await.json();
    assert_eq!((progress["pending"].as_u64(), progress["finished"].as_bool()), (Some(1), Some(false)));
    let targets = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    assert_eq!(target_field(&targets, "consumer", "replay_pending"), 1);
    assert_eq!(admin_post(gateway.admin_addr, "/v1/targets/consumer/resume", json!({})).await.status, 200);
    let received = consumer.wait_for(2, WAIT).await;
    assert_eq!(received[1].header("webhook-id"), "whevent_r");
    assert_eq!(received[1].header("hookrelay-replay"), "1");
    wait_for_json(gateway.admin_addr, &format!("/v1/replays/{id}"), "replay finished", |p| {
        p["finished"] == true && p["done"] == 1
    })
    .await;
    // The delivery shows which replay re-sent it, with the whole history.
    let shown = admin_get(gateway.admin_addr, &format!("/v1/deliveries/{delivery}")).await.json();
    assert_eq!(shown["jobs"][0]["replay"], id.as_str());
    assert_eq!(shown["jobs"][0]["history"].as_array().unwrap().len(), 2);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn replay_requests_are_checked() {
    let gateway = TestGateway::with(Options {
        targets: target_table("consumer", "http://127.0.0.1:9/hook", ""),
        ..Options::default()
    })
    .await;
    let admin = gateway.admin_addr;
    let post = |body: serde_json::Value| admin_post(admin, "/v1/replays", body);
    let nothing = post(json!({})).await;
    assert_eq!((nothing.status, nothing.error_code()), (400, "bad_selection".to_owned()));
    assert!(nothing.json()["message"].as_str().unwrap().contains("since"));
    let unknown_target = post(json!({"since": "1h", "target": "nope"})).await;
    assert_eq!(unknown_target.status, 400);
    assert!(unknown_target.text().contains("no target named"), "{}", unknown_target.text());
    let unknown_source = post(json!({"since": "1h", "source": "nope"})).await;
    assert!(unknown_source.text().contains("no source named"), "{}", unknown_source.text());
    let bad_status = post(json!({"since": "1h", "status": "pending"})).await;
    assert_eq!(bad_status.status, 400);
    let missing = post(json!({"ids": ["dlv_0000000000010000000000000001"]})).await;
    assert_eq!((missing.status, missing.error_code()), (404, "unknown_delivery".to_owned()));
    let not_json = admin_post(admin, "/v1/replays", json!("x")).await;
    assert_eq!(not_json.status, 400);

    assert_eq!(admin_get(admin, "/v1/replays/nope").await.status, 400);
    let unknown = admin_get(admin, "/v1/replays/rpl_00000000000000ff").await;
    assert_eq!((unknown.status, unknown.error_code()), (404, "unknown_replay".to_owned()));
    let wrong_method = admin_post(admin, "/v1/replays/rpl_00000000000000ff", json!({})).await;
    assert_eq!(wrong_method.status, 405);

    // The CLI: usage errors, API errors and an unreachable daemon.
    let url = format!("http://{admin}");
    let (code, _, stderr) = cli(args(&["replay", "--admin", &url, "--target", "consumer"])).await;
    assert_eq!(code, Some(64), "neither --id nor --since");
    assert!(stderr.contains("--since"), "{stderr}");
    let (code, _, stderr) =
        cli(args(&["replay", "--admin", &url, "--since", "1h", "--target", "nope"])).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no target named \"nope\""), "{stderr}");
    let (code, stdout, _) =
        cli(args(&["replay", "--admin", &url, "--since", "1h", "--no-wait", "--json"])).await;
    assert_eq!(code, Some(0));
    let started: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(started["matched"], 0);
    assert!(started["id"].as_str().unwrap().starts_with("rpl_"));
    let (_reserved, gone) = refused_addr();
    let gone = format!("http://{gone}");
    let (code, _, stderr) = cli(args(&["replay", "--admin", &gone, "--since", "1h"])).await;
    assert_eq!(code, Some(69));
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_deliveries_are_purged_only_on_request() {
    let healthy = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let (_reserved, down) = refused_addr();
    let targets = target_table("down", &format!("http://{down}/hook"), "")
        + &target_table("healthy", &healthy.url(), "");
    let gateway = TestGateway::with(Options { targets, ..Options::default() }).await;
    for i in 0..3 {
        gateway
            .post_signed(
                Transport::Http,
                "parallel",
                &format!("whevent_{i}"),
                &event("monitor.event.detected", i),
            )
            .await;
    }
    wait_for_json(gateway.admin_addr, "/v1/targets", "settled", |t| {
        target_field(t, "down", "dead") == 3 && target_field(t, "healthy", "pending") == 0
    })
    .await;
    let admin = format!("http://{}", gateway.admin_addr);

    let (code, stdout, stderr) = cli(args(&[
        "deliveries",
        "purge",
        "--admin",
        &admin,
        "--status",
        "dead",
        "--until",
        "0s",
        "--dry-run",
    ]))
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("would purge 3 dead deliveries (6 jobs)"), "{stdout}");
    assert_eq!(gateway.journal.len(), 3);

    let (code, _, stderr) =
        cli(args(&["deliveries", "purge", "--admin", &admin, "--status", "delivered", "--until", "0s"]))
            .await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("only dead deliveries"), "{stderr}");

    let (code, stdout, _) =
        cli(args(&["deliveries", "purge", "--admin", &admin, "--status", "dead", "--until", "0s"])).await;
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("purged 3 dead deliveries"), "{stdout}");
    assert_eq!(gateway.journal.len(), 0);
    let targets = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    assert_eq!(target_field(&targets, "down", "dead"), 0);
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_delivered_deliveries_in_the_background_and_keeps_dead_ones() {
    let healthy = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let (_reserved, down) = refused_addr();
    let down = format!("http://{down}/hook");
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let targets = target_table("healthy", &healthy.url(), "")
        + &target_table("down", &down, "events = [\"task_run.*\"]");
    let options = |journal: &str| Options {
        targets: targets.clone(),
        journal: journal.to_owned(),
        dir: Some(dir.clone()),
        ..Options::default()
    };
    let gateway = TestGateway::with(options("")).await;
    for i in 0..4 {
        gateway
            .post_signed(
                Transport::Http,
                "parallel",
                &format!("whevent_m{i}"),
                &event("monitor.event.detected", i),
            )
            .await;
    }
    let dead =
        gateway.post_signed(Transport::Http, "parallel", "whevent_t", &event("task_run.status", 9)).await;
    healthy.wait_for(5, WAIT).await;
    wait_for_json(gateway.admin_addr, "/v1/targets", "settled", |t| {
        target_field(t, "down", "dead") == 1 && target_field(t, "healthy", "pending") == 0
    })
    .await;
    gateway.stop().await.unwrap();
    assert_eq!(gateway_journal_len(&dir), 5);

    // With a tiny retention the sweep at start-up prunes the delivered four.
    // (The dedup window must cover twice each source's tolerance.)
    let tiny = Options {
        sources: Some(default_sources().replace("\"]\n", "\"]\ntolerance = \"1ms\"\n")),
        ..options("retention = \"2ms\"\ndedup_window = \"2ms\"")
    };
    let gateway = TestGateway::with(tiny).await;
    let deadline = Instant::now() + WAIT;
    while gateway.journal.len() != 1 {
        assert!(Instant::now() < deadline, "retention did not prune: {} left", gateway.journal.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = gateway.journal.iter().next().unwrap().unwrap();
    assert_eq!(left.id.to_string(), dead.json()["id"].as_str().unwrap(), "the dead one stays");
    gateway.stop().await.unwrap();
}

fn gateway_journal_len(dir: &tempfile::TempDir) -> usize {
    let config = hookrelay::config::JournalConfig {
        path: dir.path().join("journal"),
        dedup_window: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
        cache: 1 << 20,
        max_disk: None,
    };
    hookrelay::journal::Journal::open(&config).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_replay_survives_sigkill() {
    use crate::common::daemon::{Daemon, write_config};
    let consumer = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &target_table("consumer", &consumer.url(), ""));
    let start = |config: std::path::PathBuf| tokio::task::spawn_blocking(move || Daemon::start(&config));
    let mut daemon = start(config.clone()).await.unwrap();
    let reply = send_plain(
        daemon.addr,
        signed_request("parallel", SECRET, "whevent_k", now(), event("monitor.event.detected", 1).as_bytes()),
    )
    .await;
    let delivery = reply.json()["id"].as_str().unwrap().to_owned();
    // Paused, so the replayed job can only be pending when the process dies.
    let id = replay_while_paused(daemon.admin_addr, &consumer, &delivery).await;
    // Killed the moment the replay was answered: no clean shutdown, no final flush.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    drop(daemon);

    let daemon = start(config).await.unwrap();
    let progress = admin_get(daemon.admin_addr, &format!("/v1/replays/{id}")).await.json();
    assert_eq!(
        (progress["matched"].as_u64(), progress["pending"].as_u64()),
        (Some(1), Some(1)),
        "{progress}"
    );
    assert_eq!(admin_post(daemon.admin_addr, "/v1/targets/consumer/resume", json!({})).await.status, 200);
    let received = consumer.wait_for(2, WAIT).await;
    assert_eq!(received[1].header("webhook-id"), "whevent_k");
    assert_eq!(received[1].header("hookrelay-replay"), "1");
    wait_for_json(daemon.admin_addr, &format!("/v1/replays/{id}"), "replay finished", |p| p["done"] == 1)
        .await;
}
