//! The delivery engine against real fake targets on loopback.

use std::time::{Duration, Instant};

use crate::common::target::{Answer, Received, TestTarget};
use crate::common::*;
use hookrelay::journal::{DeliveryId, JobState};

const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
const WAIT: Duration = Duration::from_secs(20);

/// A `[targets.NAME]` table for `target` with fast retries for tests.
fn target_table(name: &str, target: &TestTarget, extra: &str) -> String {
    format!(
        "[targets.{name}]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n\
         retry = {{ initial = \"100ms\", max_delay = \"2s\", max_attempts = 10, max_age = \"1h\" }}\n{extra}\n",
        target.url()
    )
}

async fn gateway_with(targets: String) -> TestGateway {
    TestGateway::with(Options { targets, ..Options::default() }).await
}

fn event(kind: &str, monitor: &str, team: &str) -> String {
    format!(
        r#"{{"type":"{kind}","timestamp":"2025-07-02T23:29:35Z","data":{{"monitor_id":"{monitor}","metadata":{{"team":"{team}"}}}}}}"#
    )
}

fn ids(received: &[Received]) -> Vec<String> {
    let mut ids: Vec<String> = received.iter().map(|r| r.header("webhook-id").to_owned()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn fans_out_to_targets_by_their_filters_re_signed() {
    let targets: Vec<TestTarget> = futures_join(5).await;
    let [all, monitors, tasks, research, one] = &targets[..] else { unreachable!() };
    let config = [
        target_table("all", all, ""),
        target_table("monitors", monitors, "events = [\"monitor.*\"]"),
        target_table("tasks", tasks, "events = [\"task_run.status\"]"),
        target_table("research", research, "match = { \"/data/metadata/team\" = \"research\" }"),
        target_table(
            "one_monitor",
            one,
            "events = [\"monitor.event.detected\"]\nmatch = { \"/data/monitor_id\" = \"monitor_1\" }",
        ),
    ]
    .concat();
    let gateway = gateway_with(config).await;
    let sent = [
        ("evt_1", event("monitor.event.detected", "monitor_1", "research")),
        ("evt_2", event("monitor.execution.completed", "monitor_2", "ops")),
        ("evt_3", event("task_run.status", "", "research")),
        ("evt_4", event("monitor.event.detected", "monitor_2", "ops")),
    ];
    let mut delivery_ids = std::collections::HashMap::new();
    for (id, body) in &sent {
        let reply = gateway.post_signed(Transport::Http, "parallel", id, body).await;
        assert_eq!(reply.status, 200);
        delivery_ids.insert(id.to_string(), reply.json()["id"].as_str().unwrap().to_owned());
    }
    let expect: [(&TestTarget, &[&str]); 5] = [
        (all, &["evt_1", "evt_2", "evt_3", "evt_4"]),
        (monitors, &["evt_1", "evt_2", "evt_4"]),
        (tasks, &["evt_3"]),
        (research, &["evt_1", "evt_3"]),
        (one, &["evt_1"]),
    ];
    for (target, wanted) in expect {
        let received = target.wait_for(wanted.len(), WAIT).await;
        assert_eq!(ids(&received), wanted);
        for request in &received {
            assert_eq!(request.verified, Some(Ok(())), "re-signed with the target's secret");
            let id = request.header("webhook-id");
            let body = &sent.iter().find(|(i, _)| *i == id).unwrap().1;
            assert_eq!(request.body, body.as_bytes(), "the exact journaled bytes");
            assert_eq!(request.header("hookrelay-delivery"), delivery_ids[id]);
            assert_eq!(request.header("hookrelay-attempt"), "1");
            assert_eq!(request.header("hookrelay-source"), "parallel");
            assert_eq!(request.header("content-type"), "application/json");
            assert!(request.headers.get("hookrelay-replay").is_none());
        }
    }
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(one.received().len(), 1);
    assert_eq!(tasks.received().len(), 1);
}

async fn futures_join(n: usize) -> Vec<TestTarget> {
    let mut targets = Vec::new();
    for _ in 0..n {
        targets.push(TestTarget::start(Some(TARGET_SECRET), vec![]).await);
    }
    targets
}

#[tokio::test]
async fn connections_to_a_target_are_pooled_and_reused() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = gateway_with(target_table("t", &target, "concurrency = 1")).await;
    for i in 0..20 {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_pool_{i}"), MONITOR_EVENT).await;
        target.wait_for(i + 1, WAIT).await;
    }
    assert!(target.connections() <= 2, "20 deliveries used {} connections", target.connections());
}

#[tokio::test]
async fn a_target_never_has_more_requests_open_than_its_concurrency() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    target.answer_with(|_| Some(Answer::Slow(Duration::from_millis(150), 200)));
    let gateway = gateway_with(target_table("t", &target, "concurrency = 3")).await;
    // Paused while the deliveries arrive, so all twelve wait at once.
    let pause = admin_post(gateway.admin_addr, "/v1/targets/t/pause", serde_json::json!({})).await;
    assert_eq!(pause.status, 200);
    for i in 0..12 {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_cap_{i}"), MONITOR_EVENT).await;
    }
    let resume = admin_post(gateway.admin_addr, "/v1/targets/t/resume", serde_json::json!({})).await;
    assert_eq!(resume.status, 200);
    target.wait_for(12, WAIT).await;
    // The cap holds, and the lane uses all of it.
    assert_eq!(target.most_at_once(), 3, "requests open at once with concurrency = 3");
}

#[tokio::test]
async fn retries_with_growing_delays_until_delivered() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![Answer::Status(500), Answer::Status(500)]).await;
    let gateway = gateway_with(target_table("t", &target, "")).await;
    let reply = gateway.post_signed(Transport::Http, "parallel", "evt_retry", MONITOR_EVENT).await;
    let received = target.wait_for(3, WAIT).await;
    let attempts: Vec<&str> = received.iter().map(|r| r.header("hookrelay-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let first_gap = received[1].at - received[0].at;
    let second_gap = received[2].at - received[1].at;
    assert!(first_gap >= Duration::from_millis(100), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(100), "{second_gap:?}");
    assert!(received.iter().all(|r| r.verified == Some(Ok(()))), "every attempt is freshly signed");
    // Each attempt carries its own timestamp, the id stays the original.
    assert!(received.iter().all(|r| r.header("webhook-id") == "evt_retry"));

    let delivery: DeliveryId = reply.json()["id"].as_str().unwrap().parse().unwrap();
    let job = wait_for_state(&gateway, delivery, "t", JobState::Delivered).await;
    assert_eq!(job.attempts, 3);
    let statuses: Vec<Option<u16>> = job.history.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
}

async fn wait_for_state(
    gateway: &TestGateway,
    delivery: DeliveryId,
    target: &str,
    state: JobState,
) -> hookrelay::journal::Job {
    let deadline = Instant::now() + WAIT;
    loop {
        let job = gateway.journal.job(delivery, target).unwrap().expect("job exists");
        if job.state == state {
            return job;
        }
        assert!(Instant::now() < deadline, "job stuck in {:?}: {job:?}", job.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn retry_after_is_respected() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![Answer::RetryAfter(429, "1")]).await;
    let gateway = gateway_with(target_table("t", &target, "")).await;
    gateway.post_signed(Transport::Http, "parallel", "evt_429", MONITOR_EVENT).await;
    let received = target.wait_for(2, WAIT).await;
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_millis(950), "Retry-After: 1 honoured, got {gap:?}");
}

#[tokio::test]
async fn redirects_are_failures_and_never_followed() {
    let elsewhere = TestTarget::start(None, vec![]).await;
    let target = TestTarget::start(Some(TARGET_SECRET), vec![Answer::Redirect(elsewhere.url())]).await;
    let gateway = gateway_with(target_table("t", &target, "")).await;
    let reply = gateway.post_signed(Transport::Http, "parallel", "evt_301", MONITOR_EVENT).await;
    let received = target.wait_for(2, WAIT).await;
    assert_eq!(received[1].header("hookrelay-attempt"), "2", "301 was retried at the same URL");
    let delivery: DeliveryId = reply.json()["id"].as_str().unwrap().parse().unwrap();
    let job = wait_for_state(&gateway, delivery, "t", JobState::Delivered).await;
    assert_eq!(job.history[0].status, Some(301));
    assert!(elsewhere.received().is_empty(), "the Location was not followed");
}

#[tokio::test]
async fn timeouts_and_dropped_connections_are_retried() {
    let target =
        TestTarget::start(Some(TARGET_SECRET), vec![Answer::Slow(Duration::from_secs(2), 200), Answer::Drop])
            .await;
    let gateway = gateway_with(target_table("t", &target, "timeout = \"300ms\"")).await;
    let reply = gateway.post_signed(Transport::Http, "parallel", "evt_slow", MONITOR_EVENT).await;
    let delivery: DeliveryId = reply.json()["id"].as_str().unwrap().parse().unwrap();
    let job = wait_for_state(&gateway, delivery, "t", JobState::Delivered).await;
    assert_eq!(job.attempts, 3);
    assert_eq!(job.history[0].error.as_deref(), Some("timeout"));
    assert_eq!(job.history[0].status, None);
    assert!(job.history[1].error.is_some(), "dropped connection recorded: {:?}", job.history[1]);
    assert_eq!(job.history[2].status, Some(200));
}

#[tokio::test]
async fn a_target_that_never_recovers_ends_dead_and_is_kept() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    target.answer_with(|_| Some(Answer::Status(503)));
    let table = format!(
        "[targets.t]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n\
         retry = {{ initial = \"50ms\", max_delay = \"100ms\", max_attempts = 3, max_age = \"1h\" }}\n",
        target.url()
    );
    let gateway = gateway_with(table).await;
    let reply = gateway.post_signed(Transport::Http, "parallel", "evt_dead", MONITOR_EVENT).await;
    let delivery: DeliveryId = reply.json()["id"].as_str().unwrap().parse().unwrap();
    let job = wait_for_state(&gateway, delivery, "t", JobState::Dead).await;
    assert_eq!(job.attempts, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(target.received().len(), 3, "no attempts after dead");
    assert_eq!(gateway.journal.pending_count("t"), 0);
    assert!(gateway.journal.get(delivery).unwrap().is_some(), "the delivery is kept");
}

#[tokio::test]
async fn the_breaker_pauses_a_failing_target_and_a_probe_resumes_it() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![Answer::Status(500); 3]).await;
    let table =
        target_table("t", &target, "concurrency = 1\nbreaker = { failures = 2, probe_interval = \"2s\" }");
    let gateway = gateway_with(table).await;
    for i in 0..3 {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_b{i}"), MONITOR_EVENT).await;
    }
    // Two failures open the breaker; the third request is the probe.
    let received = target.wait_for(3, WAIT).await;
    let paused = received[2].at - received[1].at;
    assert!(paused >= Duration::from_millis(1900), "paused for the probe interval, got {paused:?}");
    // The failed probe re-opens it; the next probe succeeds and the rest flows.
    let received =
        target.wait_until(WAIT, |r| r.iter().filter(|r| r.answered == "Status(200)").count() >= 3).await;
    let second_pause = received[3].at - received[2].at;
    assert!(second_pause >= Duration::from_millis(1900), "{second_pause:?}");
    // Not another probe interval: the rest went as soon as the probe succeeded.
    let after_resume = received.last().unwrap().at - received[3].at;
    assert!(after_resume < Duration::from_millis(1900), "resumed at full speed, took {after_resume:?}");
}

#[tokio::test]
async fn a_target_rate_limit_is_never_exceeded() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway =
        gateway_with(target_table("t", &target, "rate_limit = { per_second = 5, burst = 2 }")).await;
    let n = 10;
    for i in 0..n {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_rate_{i}"), MONITOR_EVENT).await;
    }
    let received = target.wait_for(n, WAIT).await;
    // Times of arrival at the target: each is its release by the limiter
    // plus a delay (a busy machine's scheduling, loopback). A delay can
    // only bring arrivals closer when an earlier one is held up: the span
    // allows a delay of 150 ms, the window one of 350 ms. (A limit 20% too
    // loose still fails the span; no limit fails both.)
    let span = received[n - 1].at - received[0].at;
    // burst 2 at once, then one every 200 ms: (10 - 2) / 5 s = 1.6 s.
    assert!(span >= Duration::from_millis(1600 - 150), "{n} requests in {span:?}");
    for (i, request) in received.iter().enumerate() {
        let in_window =
            received[i..].iter().filter(|r| r.at - request.at < Duration::from_millis(850)).count();
        // Eight would need releases 7 apart (1.2 s at least) to arrive
        // within 850 ms.
        assert!(in_window <= 2 + 5, "{in_window} requests within 850 ms");
    }
}

#[tokio::test]
async fn a_slow_target_does_not_delay_the_others() {
    // The slow target's first answer takes 20 s: everything the fast one gets
    // before then, it did not wait for. (Far more than a busy machine needs,
    // so the test says what it means, not how fast this machine is.)
    let slow = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    slow.answer_with(|_| Some(Answer::Slow(Duration::from_secs(20), 200)));
    let fast = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let config =
        [target_table("slow", &slow, "concurrency = 1\ntimeout = \"60s\""), target_table("fast", &fast, "")]
            .concat();
    let gateway = gateway_with(config).await;
    let started = Instant::now();
    for i in 0..5 {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_s{i}"), MONITOR_EVENT).await;
    }
    fast.wait_for(5, WAIT).await;
    assert!(started.elapsed() < Duration::from_secs(20), "fast target waited {:?}", started.elapsed());
    assert_eq!(slow.received().len(), 1, "the slow target has one request in flight");
}

#[tokio::test]
async fn fresh_deliveries_are_not_starved_by_a_retry_backlog() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    // Old deliveries keep failing; new ones succeed.
    target.answer_with(|headers| {
        let id = headers.get("webhook-id").unwrap().to_str().unwrap();
        Some(if id.starts_with("old") { Answer::Status(500) } else { Answer::Status(200) })
    });
    let table = format!(
        "[targets.t]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\nconcurrency = 1\n\
         breaker = {{ failures = 1000000 }}\n\
         retry = {{ initial = \"10ms\", max_delay = \"10ms\", max_attempts = 100000, max_age = \"1h\" }}\n",
        target.url()
    );
    let gateway = gateway_with(table).await;
    for i in 0..20 {
        gateway.post_signed(Transport::Http, "parallel", &format!("old_{i}"), MONITOR_EVENT).await;
    }
    // Let the backlog build: every old delivery has failed at least once.
    target.wait_until(WAIT, |r| r.len() >= 40).await;
    gateway.post_signed(Transport::Http, "parallel", "new_1", MONITOR_EVENT).await;
    let handed_over = target.received().len();
    let received = target.wait_until(WAIT, |r| r.iter().any(|r| r.header("webhook-id") == "new_1")).await;
    // Counted in attempts, not time (a busy machine stretches both alike):
    // with one slot, at most the retry in flight and one taken as the
    // fresh job was handed over go first, not the twenty that are due.
    let new_at = received.iter().position(|r| r.header("webhook-id") == "new_1").unwrap();
    let ahead = new_at.saturating_sub(handed_over);
    assert!(ahead <= 2, "the fresh delivery waited behind {ahead} retries");
}

#[tokio::test]
async fn passthrough_and_unsigned_targets() {
    let passthrough = TestTarget::start(None, vec![]).await;
    let unsigned = TestTarget::start(None, vec![]).await;
    let config = format!(
        "[targets.pass]\nsource = \"parallel\"\nurl = \"{}\"\nsigning = \"passthrough\"\n\
         [targets.none]\nsource = \"parallel\"\nurl = \"{}\"\nsigning = \"none\"\n",
        passthrough.url(),
        unsigned.url()
    );
    let gateway = gateway_with(config).await;
    let request = signed_request("parallel", SECRET, "evt_pass", now(), MONITOR_EVENT.as_bytes());
    let original: Vec<String> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .iter()
        .map(|h| request.headers()[*h].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(gateway.send(Transport::Http, request).await.status, 200);
    let got = passthrough.wait_for(1, WAIT).await;
    for (name, value) in ["webhook-id", "webhook-timestamp", "webhook-signature"].iter().zip(&original) {
        assert_eq!(got[0].header(name), value, "{name} passed through");
    }
    let got = unsigned.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("webhook-id"), "evt_pass");
    assert!(got[0].headers.get("webhook-signature").is_none());
}

#[tokio::test]
async fn rotation_sends_one_signature_per_target_secret() {
    let target = TestTarget::start(None, vec![]).await;
    let table = format!(
        "[targets.t]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = [\"{TARGET_SECRET}\", \"whsec_bmV3LXNlY3JldA==\"]\n",
        target.url()
    );
    let gateway = gateway_with(table).await;
    gateway.post_signed(Transport::Http, "parallel", "evt_rot", MONITOR_EVENT).await;
    let got = target.wait_for(1, WAIT).await;
    let header = got[0].header("webhook-signature").to_owned();
    assert_eq!(header.split(' ').count(), 2, "{header}");
    for secret in [TARGET_SECRET, "whsec_bmV3LXNlY3JldA=="] {
        let verifier = hookrelay::signature::Verifier::new(
            hookrelay::signature::keys_for_secret(secret).unwrap(),
            Duration::from_secs(300),
        );
        let headers = hookrelay::signature::SignedHeaders::parse(
            Some(got[0].header("webhook-id")),
            Some(got[0].header("webhook-timestamp")),
            Some(&header),
        )
        .unwrap();
        assert_eq!(verifier.verify(&headers, &got[0].body, now()), Ok(()), "verifies with {secret}");
    }
}

#[tokio::test]
async fn https_targets_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let target = TestTarget::start_tls(Some(TARGET_SECRET), vec![], dir.path()).await;
    let table = format!(
        "[targets.t]\nsource = \"parallel\"\nurl = \"https://localhost:{}/hook\"\nsecret = \"{TARGET_SECRET}\"\nca_file = {:?}\n",
        target.addr.port(),
        target.tls_cert.as_ref().unwrap()
    );
    let gateway = gateway_with(table).await;
    gateway.post_signed(Transport::Http, "parallel", "evt_tls", MONITOR_EVENT).await;
    let got = target.wait_for(1, WAIT).await;
    assert_eq!(got[0].verified, Some(Ok(())));

    // Without the CA the certificate is refused: a TLS error, retried.
    let untrusted_dir = tempfile::tempdir().unwrap();
    let untrusted = TestTarget::start_tls(Some(TARGET_SECRET), vec![], untrusted_dir.path()).await;
    let table = format!(
        "[targets.u]\nsource = \"parallel\"\nurl = \"https://localhost:{}/hook\"\nsecret = \"{TARGET_SECRET}\"\n\
         retry = {{ initial = \"1s\", max_delay = \"1s\" }}\n",
        untrusted.addr.port()
    );
    let gateway = gateway_with(table).await;
    let reply = gateway.post_signed(Transport::Http, "parallel", "evt_untrusted", MONITOR_EVENT).await;
    let delivery: DeliveryId = reply.json()["id"].as_str().unwrap().parse().unwrap();
    let deadline = Instant::now() + WAIT;
    let job = loop {
        let job = gateway.journal.job(delivery, "u").unwrap().unwrap();
        if job.attempts > 0 || Instant::now() > deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = job.history[0].error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert!(untrusted.received().is_empty());
}

#[tokio::test]
async fn shutdown_lets_in_flight_attempts_finish_and_records_them() {
    let target =
        TestTarget::start(Some(TARGET_SECRET), vec![Answer::Slow(Duration::from_millis(500), 200)]).await;
    let mut gateway = gateway_with(target_table("t", &target, "")).await;
    let reply = gateway.post_signed(Transport::Http, "parallel", "evt_flight", MONITOR_EVENT).await;
    target.wait_for(1, WAIT).await;
    gateway.begin_stop();
    gateway.wait_stopped().await.unwrap();
    let delivery: DeliveryId = reply.json()["id"].as_str().unwrap().parse().unwrap();
    let job = gateway.journal.job(delivery, "t").unwrap().unwrap();
    assert_eq!(job.state, JobState::Delivered, "{job:?}");
}

#[tokio::test]
async fn pending_jobs_resume_after_a_restart() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    target.answer_with(|_| Some(Answer::Status(503)));
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let table = target_table("t", &target, "");
    let gateway =
        TestGateway::with(Options { dir: Some(dir.clone()), targets: table.clone(), ..Options::default() })
            .await;
    for i in 0..5 {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_r{i}"), MONITOR_EVENT).await;
    }
    target.wait_for(5, WAIT).await;
    gateway.stop().await.unwrap();
    // The target recovers while the gateway is down.
    target.answer_with(|_| None);
    let _gateway = TestGateway::with(Options { dir: Some(dir), targets: table, ..Options::default() }).await;
    let received =
        target.wait_until(WAIT, |r| r.iter().filter(|r| r.answered == "Status(200)").count() >= 5).await;
    let delivered: std::collections::BTreeSet<&str> =
        received.iter().filter(|r| r.answered == "Status(200)").map(|r| r.header("webhook-id")).collect();
    assert_eq!(delivered.len(), 5);
}

/// Verifies a received request with the Python `standardwebhooks` package,
/// the library consumers use; returns whether it accepted.
fn python_verifies(secret: &str, request: &Received, body: &[u8]) -> bool {
    use std::io::Write;
    let script = r#"
import base64, json, sys
from standardwebhooks.webhooks import Webhook
d = json.load(sys.stdin)
try:
    Webhook(d["secret"]).verify(base64.b64decode(d["body"]), d["headers"])
except Exception as e:
    print("rejected:", e)
    sys.exit(3)
print("verified")
"#;
    let headers: serde_json::Map<String, serde_json::Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|h| (h.to_string(), serde_json::Value::from(request.header(h))))
            .collect();
    use base64::Engine;
    let input = serde_json::json!({
        "secret": secret,
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    });
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test installs it)");
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "pip install standardwebhooks first (scripts/test does): {stderr}"
    );
    out.status.success()
}

#[tokio::test]
async fn outbound_signatures_verify_with_the_python_standardwebhooks_library() {
    let target = TestTarget::start(Some(TARGET_SECRET), vec![Answer::Status(500)]).await;
    let gateway = gateway_with(target_table("t", &target, "")).await;
    gateway.post_signed(Transport::Http, "parallel", "evt_py", MONITOR_EVENT).await;
    let received = target.wait_for(2, WAIT).await;
    for request in &received {
        assert!(
            python_verifies(TARGET_SECRET, request, &request.body),
            "attempt {}",
            request.header("hookrelay-attempt")
        );
    }
    // The same check refuses a changed body or another secret: it can fail.
    let mut tampered = request_body(&received[0]);
    tampered.push(b' ');
    assert!(!python_verifies(TARGET_SECRET, &received[0], &tampered));
    assert!(!python_verifies("whsec_b3RoZXI=", &received[0], &received[0].body));
}

fn request_body(request: &Received) -> Vec<u8> {
    request.body.to_vec()
}
