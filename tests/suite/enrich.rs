//! Enrichment against a fake Parallel API on loopback: thin events reach
//! `enrich = true` targets with Parallel's content attached, fetched once per
//! delivery and re-signed; plain targets get the original bytes and never
//! wait on the API.

use std::time::Duration;

use crate::common::parallel::{API_KEY, FakeParallel};
use crate::common::target::{Received, TestTarget};
use crate::common::*;

const MONITOR: &str = "monitor_b0079f70";
const PLAIN_SECRET: &str = "whsec_cGxhaW4tdGFyZ2V0LXNlY3JldA==";
const RICH_SECRET: &str = "whsec_cmljaC10YXJnZXQtc2VjcmV0LTE=";
const WAITING_SECRET: &str = "whsec_d2FpdGluZy10YXJnZXQtc2VjcmV0";
const WAIT: Duration = Duration::from_secs(20);

fn api_event(group: usize, n: usize) -> serde_json::Value {
    serde_json::json!({
        "event_type": "event_stream",
        "event_id": format!("mevt_{group}_{n}"),
        "event_group_id": format!("mevtgrp_{group}"),
        "event_date": "2026-11-27T10:00:00Z",
        "output": {"type": "text", "content": format!("change {n}"), "basis": []},
    })
}

fn detected(group: usize) -> String {
    format!(
        r#"{{"type":"monitor.event.detected","timestamp":"2026-11-27T10:00:01Z","data":{{"monitor_id":"{MONITOR}","event":{{"event_group_id":"mevtgrp_{group}"}},"metadata":{{"team":"research"}}}}}}"#
    )
}

fn task_run(run_id: &str, status: &str) -> String {
    format!(
        r#"{{"type":"task_run.status","timestamp":"2026-11-27T10:00:01Z","data":{{"run_id":"{run_id}","status":"{status}","is_active":false,"processor":"core"}}}}"#
    )
}

fn target(name: &str, target: &TestTarget, secret: &str, extra: &str) -> String {
    format!(
        "[targets.{name}]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{secret}\"\n{extra}\n",
        target.url()
    )
}

async fn gateway(api: &FakeParallel, targets: String) -> TestGateway {
    TestGateway::with(Options {
        sources: Some(format!(
            "[sources.parallel]\nsecrets = [\"{SECRET}\"]\n\
             [sources.parallel.parallel]\napi_key = \"{API_KEY}\"\nbase_url = \"http://{}\"\nrate_limit = {{ per_second = 100 }}\n",
            api.addr
        )),
        targets,
        ..Options::default()
    })
    .await
}

fn json(received: &Received) -> serde_json::Value {
    serde_json::from_slice(&received.body).unwrap()
}

fn by_id<'a>(received: &'a [Received], webhook_id: &str) -> &'a Received {
    received
        .iter()
        .find(|r| r.header("webhook-id") == webhook_id)
        .unwrap_or_else(|| panic!("{webhook_id} not received"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriched_and_plain_targets_side_by_side() {
    let events: Vec<_> = [(1, 1), (2, 1), (2, 2), (2, 3)].iter().map(|&(g, n)| api_event(g, n)).collect();
    let api = FakeParallel::start(MONITOR, events.clone()).await;
    let result = serde_json::json!({"run": {"run_id": "trun_1", "status": "completed"}, "output": {"type": "text", "content": "the answer"}});
    api.task_result("trun_1", result.clone());
    let plain = TestTarget::start(Some(PLAIN_SECRET), vec![]).await;
    let rich = TestTarget::start(Some(RICH_SECRET), vec![]).await;
    let rich_too = TestTarget::start(Some(RICH_SECRET), vec![]).await;
    let gateway = gateway(
        &api,
        [
            target("plain", &plain, PLAIN_SECRET, ""),
            target("rich", &rich, RICH_SECRET, "enrich = true"),
            target("rich_too", &rich_too, RICH_SECRET, "enrich = true"),
        ]
        .concat(),
    )
    .await;

    let sent = [
        ("whevent_g2", detected(2)),
        ("whevent_done", task_run("trun_1", "completed")),
        ("whevent_running", task_run("trun_2", "running")),
    ];
    for (id, body) in &sent {
        assert_eq!(gateway.post_signed(Transport::Http, "parallel", id, body).await.status, 200);
    }
    let plain_got = plain.wait_for(3, WAIT).await;
    let rich_got = rich.wait_for(3, WAIT).await;
    let rich_too_got = rich_too.wait_for(3, WAIT).await;

    // Plain: the exact original bytes, no enrichment header.
    for (id, body) in &sent {
        let r = by_id(&plain_got, id);
        assert_eq!(r.body, body.as_bytes());
        assert_eq!(r.header("hookrelay-enrichment"), "");
        assert!(matches!(r.verified, Some(Ok(()))));
    }
    for got in [&rich_got, &rich_too_got] {
        // The detection with its group's three events (two pages of the listing).
        let r = by_id(got, "whevent_g2");
        assert!(matches!(r.verified, Some(Ok(()))), "re-signed over the enriched bytes");
        assert_eq!(r.header("hookrelay-enrichment"), "attached");
        let body = json(r);
        assert_eq!(body["data"]["events"], serde_json::json!(events[1..].to_vec()));
        assert_eq!(body["data"]["metadata"]["team"], "research", "the rest of the payload is kept");
        // The completed run with its result.
        let r = by_id(got, "whevent_done");
        assert_eq!(json(r)["data"]["result"], result);
        assert!(matches!(r.verified, Some(Ok(()))));
        // A running task has nothing to attach: the original bytes.
        let r = by_id(got, "whevent_running");
        assert_eq!(r.body, sent[2].1.as_bytes());
        assert_eq!(r.header("hookrelay-enrichment"), "");
    }
    // Fetched once per delivery, not once per target: two pages for the group, one result.
    let calls = api.requests();
    let group_pages = calls.iter().filter(|(uri, _)| uri.contains("event_group_id=mevtgrp_2")).count();
    let results = calls.iter().filter(|(uri, _)| uri.contains("/v1/tasks/runs/trun_1/result")).count();
    assert_eq!((group_pages, results), (2, 1), "{calls:?}");
    assert!(calls.iter().all(|(_, key)| key == API_KEY));
    for r in plain_got.iter().chain(&rich_got).chain(&rich_too_got) {
        assert!(!format!("{:?}{:?}", r.headers, r.body).contains(API_KEY), "the API key reached a consumer");
    }
    // And journaled with the delivery.
    let delivery = gateway.journal.iter().map(|r| r.unwrap()).find(|r| r.webhook_id == "whevent_g2").unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&gateway.journal.enrichment(delivery.id).unwrap().unwrap()).unwrap();
    assert_eq!(stored, serde_json::json!(events[1..].to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_failures_are_retried_and_never_hold_up_plain_targets() {
    let api = FakeParallel::start(MONITOR, vec![api_event(1, 1), api_event(3, 1)]).await;
    let plain = TestTarget::start(Some(PLAIN_SECRET), vec![]).await;
    let rich = TestTarget::start(Some(RICH_SECRET), vec![]).await;
    let waiting = TestTarget::start(Some(WAITING_SECRET), vec![]).await;
    let gateway = gateway(
        &api,
        [
            target("plain", &plain, PLAIN_SECRET, ""),
            target("rich", &rich, RICH_SECRET, "enrich = true"),
            target(
                "waiting",
                &waiting,
                WAITING_SECRET,
                "enrich = true\nenrich_failure = \"wait\"\nretry = { initial = \"100ms\", max_delay = \"200ms\", max_attempts = 10 }",
            ),
        ]
        .concat(),
    )
    .await;

    // A 429 and a 503 are retried by the API client: the first delivery is
    // enriched all the same.
    api.fail_next(&[429, 503]);
    assert_eq!(
        gateway.post_signed(Transport::Http, "parallel", "whevent_g1", &detected(1)).await.status,
        200
    );
    let r = rich.wait_for(1, WAIT).await;
    assert_eq!(r[0].header("hookrelay-enrichment"), "attached");

    waiting.wait_for(1, WAIT).await;

    // The API fails every query for group 3 until told otherwise.
    api.fail_group("mevtgrp_3", true);
    assert_eq!(
        gateway.post_signed(Transport::Http, "parallel", "whevent_g3", &detected(3)).await.status,
        200
    );
    // The plain target gets it without waiting for the API.
    let plain_got =
        plain.wait_until(WAIT, |got| got.iter().any(|r| r.header("webhook-id") == "whevent_g3")).await;
    let rich_got =
        rich.wait_until(WAIT, |got| got.iter().any(|r| r.header("webhook-id") == "whevent_g3")).await;
    assert!(plain_got.iter().all(|r| r.header("hookrelay-enrichment").is_empty()));
    // send_original: the original payload, marked.
    let r = by_id(&rich_got, "whevent_g3");
    assert_eq!(r.header("hookrelay-enrichment"), "failed");
    assert_eq!(r.body, detected(3).as_bytes());
    assert!(matches!(r.verified, Some(Ok(()))));
    // wait: nothing sent while the API fails; its retries fetch again once it works.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(waiting.received().iter().all(|r| r.header("webhook-id") != "whevent_g3"));
    api.fail_group("mevtgrp_3", false);
    let waiting_got =
        waiting.wait_until(WAIT, |got| got.iter().any(|r| r.header("webhook-id") == "whevent_g3")).await;
    let r = by_id(&waiting_got, "whevent_g3");
    assert_eq!(r.header("hookrelay-enrichment"), "attached");
    assert!(r.header("hookrelay-attempt").parse::<u32>().unwrap() >= 2, "a retry, not the first attempt");
    assert_eq!(json(r)["data"]["events"][0]["event_id"], "mevt_3_1");
    // The API's failures did not open the waiting target's breaker.
    let targets = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    let waiting_state =
        targets["targets"].as_array().unwrap().iter().find(|t| t["name"] == "waiting").unwrap();
    assert_eq!(waiting_state["breaker"], "closed", "{waiting_state}");
}

#[test]
fn enrich_needs_an_api_key_and_a_re_signing_target() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookrelay.toml");
    let load = |text: String| {
        std::fs::write(&path, text).unwrap();
        hookrelay::config::Config::load(&path).map(drop).unwrap_err().to_string()
    };
    let source = format!("[sources.parallel]\nsecrets = [\"{SECRET}\"]\n");
    let err = load(format!(
        "{source}[targets.t]\nsource = \"parallel\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"{PLAIN_SECRET}\"\nenrich = true\n"
    ));
    assert!(err.contains("targets.t.enrich") && err.contains("[sources.parallel.parallel]"), "{err}");
    let err = load(format!(
        "{source}[sources.parallel.parallel]\napi_key = \"k\"\n\
         [targets.t]\nsource = \"parallel\"\nurl = \"http://127.0.0.1:9/\"\nsigning = \"passthrough\"\nenrich = true\n"
    ));
    assert!(err.contains("targets.t.enrich") && err.contains("passed-through signature"), "{err}");
}

/// The real binary with debug logs: enrichment, a backfill and an API
/// failure later, the key appears in no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_reaches_the_logs() {
    use crate::common::daemon::{Daemon, write_config};
    let api = FakeParallel::start(MONITOR, vec![api_event(1, 1), api_event(4, 1)]).await;
    let rich = TestTarget::start(Some(RICH_SECRET), vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[sources.parallel.parallel]\napi_key = \"{API_KEY}\"\nbase_url = \"http://{}\"\n{}",
            api.addr,
            target("rich", &rich, RICH_SECRET, "enrich = true")
        ),
    );
    let start = tokio::task::spawn_blocking(move || Daemon::start(&config));
    let mut daemon = start.await.unwrap();
    let reply = send_plain(
        daemon.addr,
        signed_request("parallel", SECRET, "whevent_g1", now(), detected(1).as_bytes()),
    )
    .await;
    assert_eq!(reply.status, 200);
    rich.wait_for(1, WAIT).await;
    let backfilled = admin_post(
        daemon.admin_addr,
        "/v1/backfill",
        serde_json::json!({"source": "parallel", "monitor": MONITOR}),
    )
    .await;
    assert_eq!(backfilled.status, 200, "{}", backfilled.text());
    rich.wait_for(2, WAIT).await;
    api.fail_next(&[401]);
    let refused = admin_post(
        daemon.admin_addr,
        "/v1/backfill",
        serde_json::json!({"source": "parallel", "monitor": MONITOR}),
    )
    .await;
    assert_eq!(refused.status, 502);
    assert!(refused.text().contains("[redacted]"), "the echoed key is redacted: {}", refused.text());
    daemon.signal("TERM");
    assert!(daemon.wait().await.success());
    let logs = daemon.logs();
    assert!(logs.contains("enrichment fetched") && logs.contains("backfill"), "debug logs were captured");
    assert!(!logs.contains(API_KEY), "the API key reached the logs");
    for reply in [backfilled, refused] {
        assert!(!reply.text().contains(API_KEY));
    }
}

/// A detection whose events come to more than the 4 MiB an enrichment may
/// hold: the pages stop being read once over it (not every page first), and
/// the target gets the original payload, marked failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_group_over_the_size_limit_is_not_read_to_the_end() {
    let big = |n: usize| {
        let mut event = api_event(9, n);
        event["output"]["content"] = "x".repeat(1 << 20).into();
        event
    };
    // Six events of 1 MiB: three pages of the fake's two.
    let api = FakeParallel::start(MONITOR, (1..=6).map(big).collect()).await;
    let rich = TestTarget::start(Some(RICH_SECRET), vec![]).await;
    let gateway = gateway(&api, target("rich", &rich, RICH_SECRET, "enrich = true")).await;
    assert_eq!(
        gateway.post_signed(Transport::Http, "parallel", "whevent_big", &detected(9)).await.status,
        200
    );
    let got = rich.wait_for(1, WAIT).await;
    assert_eq!(got[0].header("hookrelay-enrichment"), "failed");
    assert_eq!(got[0].body, detected(9).as_bytes(), "the original payload");
    let pages = api.requests().iter().filter(|(uri, _)| uri.contains("event_group_id=mevtgrp_9")).count();
    assert_eq!(pages, 2, "stopped at the page that went over 4 MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_from_the_api_pauses_every_call_of_the_source() {
    let api = FakeParallel::start(MONITOR, vec![api_event(1, 0), api_event(2, 0)]).await;
    let rich = TestTarget::start(Some(RICH_SECRET), vec![]).await;
    let gateway = gateway(&api, target("rich", &rich, RICH_SECRET, "enrich = true")).await;
    api.fail_next_asking(&[429], 3);
    assert_eq!(
        gateway.post_signed(Transport::Http, "parallel", "whevent_g1", &detected(1)).await.status,
        200
    );
    let deadline = std::time::Instant::now() + WAIT;
    while api.request_times().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first fetch reaches the API");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let told = api.request_times()[0];
    // Another delivery's fetch, a second into the pause: it waits too, not
    // only the call that was told.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        gateway.post_signed(Transport::Http, "parallel", "whevent_g2", &detected(2)).await.status,
        200
    );
    let got = rich.wait_for(2, WAIT).await;
    assert!(got.iter().all(|r| r.header("hookrelay-enrichment") == "attached"));
    let after: Vec<Duration> = api.request_times()[1..].iter().map(|at| *at - told).collect();
    assert!(after.len() >= 2, "both fetched: {after:?}");
    assert!(
        after.iter().all(|d| *d >= Duration::from_millis(2_900)),
        "a call went out during the pause: {after:?}"
    );
}
