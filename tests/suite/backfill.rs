//! Backfill against a fake Parallel API on loopback: detections whose
//! webhooks never arrived are listed (cursor pagination, retried on errors)
//! and injected once; the real webhook arriving late is a duplicate.

use std::time::Duration;

use crate::common::parallel::{API_KEY, FakeParallel};
use crate::common::target::TestTarget;
use crate::common::*;

const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC1iYWNrZmlsbA==";
const MONITOR: &str = "monitor_b0079f70";
const WAIT: Duration = Duration::from_secs(15);

/// An event of group `n`, dated `days_ago`.
fn api_event(n: usize, days_ago: u64) -> serde_json::Value {
    // Date only, as Parallel's listing gives it.
    let date = hookrelay::time::rfc3339(now() as u64 - days_ago * 86_400)[..10].to_owned();
    serde_json::json!({
        "event_type": "event_stream",
        "event_id": format!("mevt_{n}"),
        "event_group_id": format!("mevtgrp_{n}"),
        "event_date": date,
        "output": {"type": "text", "content": "something changed", "basis": []},
    })
}

/// The webhook Parallel sends for group `n`.
fn detected(n: usize) -> String {
    format!(
        r#"{{"type":"monitor.event.detected","timestamp":"2026-11-25T10:00:00Z","data":{{"monitor_id":"{MONITOR}","event":{{"event_group_id":"mevtgrp_{n}"}},"metadata":{{"team":"research"}}}}}}"#
    )
}

async fn gateway(api: &FakeParallel, consumer: &TestTarget) -> TestGateway {
    gateway_with(api, consumer, "").await
}

async fn gateway_with(api: &FakeParallel, consumer: &TestTarget, parallel_extra: &str) -> TestGateway {
    TestGateway::with(Options {
        sources: Some(format!(
            "[sources.parallel]\nsecrets = [\"{SECRET}\"]\n\
             [sources.parallel.parallel]\napi_key = \"{API_KEY}\"\nbase_url = \"http://{}\"\ntimeout = \"5s\"\n\
             rate_limit = {{ per_second = 50 }}\n{parallel_extra}\n\
             [sources.other]\nsecrets = [\"{SECRET}\"]\n",
            api.addr
        )),
        targets: format!(
            "[targets.consumer]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\nevents = [\"monitor.*\"]\n",
            consumer.url()
        ),
        ..Options::default()
    })
    .await
}

async fn backfill(gateway: &TestGateway, body: serde_json::Value) -> Reply {
    admin_post(gateway.admin_addr, "/v1/backfill", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_after_a_three_day_outage_injects_exactly_the_missing_detections() {
    // Five detections over the last four days, and one nine days old; the
    // gateway got only 1 and 2.
    let mut events: Vec<_> = (1..=5).map(|n| api_event(n, 5 - n as u64)).collect();
    events.insert(0, api_event(9, 9));
    // A detection first seen 70 days ago, with an event yesterday: past what
    // the journal remembers (twice the default 30-day retention), it may
    // have arrived and been pruned, so it is left out, and said so.
    events.extend([api_event(7, 70), api_event(7, 1)]);
    let api = FakeParallel::start(MONITOR, events).await;
    let consumer = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = gateway(&api, &consumer).await;
    for n in [1, 2] {
        let reply = gateway
            .post_signed(Transport::Http, "parallel", &format!("whevent_real_{n}"), &detected(n))
            .await;
        assert_eq!(reply.status, 200);
    }
    consumer.wait_for(2, WAIT).await;

    // A dry run says what is missing and changes nothing.
    let dry = backfill(
        &gateway,
        serde_json::json!({"source": "parallel", "monitor": MONITOR, "since": "7d", "dry_run": true}),
    )
    .await;
    assert_eq!(dry.status, 200, "{}", dry.text());
    let dry = dry.json();
    assert_eq!(dry["event_groups"], 6, "the nine-day-old detection is before --since: {dry}");
    assert_eq!(dry["missing"], serde_json::json!(["mevtgrp_3", "mevtgrp_4", "mevtgrp_5"]));
    assert_eq!(dry["too_old"], serde_json::json!(["mevtgrp_7"]));
    assert_eq!(dry["injected"], serde_json::json!([]));
    assert_eq!(gateway.journal.len(), 2);

    // The listing is walked page by page, retried through a 503 and a 429.
    api.fail_next(&[503, 429]);
    let done =
        backfill(&gateway, serde_json::json!({"source": "parallel", "monitor": MONITOR, "since": "7d"}))
            .await;
    assert_eq!(done.status, 200, "{}", done.text());
    let done = done.json();
    assert_eq!(done["injected"].as_array().unwrap().len(), 3, "{done}");
    let received = consumer.wait_for(5, WAIT).await;
    let mut backfilled: Vec<_> = received.iter().filter(|r| r.header("hookrelay-backfill") == "1").collect();
    backfilled.sort_by_key(|r| r.header("webhook-id").to_owned());
    assert_eq!(backfilled.len(), 3);
    for (r, n) in backfilled.iter().zip([3, 4, 5]) {
        assert_eq!(r.header("webhook-id"), format!("whbackfill_mevtgrp_{n}"));
        assert!(matches!(r.verified, Some(Ok(()))), "re-signed with the target's secret");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "monitor.event.detected");
        assert_eq!(body["data"]["monitor_id"], MONITOR);
        assert_eq!(body["data"]["event"]["event_group_id"], format!("mevtgrp_{n}"));
    }
    let pages: Vec<_> = api.requests().into_iter().filter(|(uri, _)| uri.contains("/events")).collect();
    assert!(pages.iter().any(|(uri, _)| uri.contains("cursor=p2")), "all three pages were read: {pages:?}");
    assert!(pages.iter().all(|(_, key)| key == API_KEY));

    // Again: nothing new.
    let again =
        backfill(&gateway, serde_json::json!({"source": "parallel", "monitor": MONITOR})).await.json();
    assert_eq!(
        (again["missing"].clone(), again["injected"].clone()),
        (serde_json::json!([]), serde_json::json!([]))
    );

    // Parallel's own webhook for a backfilled detection arrives late: a duplicate.
    let late = gateway.post_signed(Transport::Http, "parallel", "whevent_real_4", &detected(4)).await;
    assert_eq!(late.status, 200);
    assert_eq!(late.json()["duplicate"], true);
    assert_eq!(late.json()["id"], done["injected"][1]["id"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(consumer.received().len(), 5, "nothing delivered twice");
    assert_eq!(gateway.journal.len(), 5);

    // The API key is nowhere in what the admin API shows.
    for reply in [
        admin_get(gateway.admin_addr, "/v1/deliveries?limit=100").await,
        admin_get(gateway.admin_addr, "/v1/targets").await,
    ] {
        assert!(!reply.text().contains(API_KEY));
    }
    for r in consumer.received() {
        assert!(!format!("{:?}", r.headers).contains(API_KEY), "the API key reached a consumer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_errors_are_clear() {
    let api = FakeParallel::start(MONITOR, vec![api_event(1, 1)]).await;
    let consumer = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = gateway(&api, &consumer).await;
    let cases = [
        (serde_json::json!({"source": "other", "monitor": MONITOR}), 400, "bad_request"),
        (serde_json::json!({"source": "nope", "monitor": MONITOR}), 400, "bad_request"),
        (serde_json::json!({"source": "parallel"}), 400, "bad_request"),
        (
            serde_json::json!({"source": "parallel", "monitor": MONITOR, "since": "yesterday"}),
            400,
            "bad_request",
        ),
        // Past journal.retention (30 days): pruned detections would come back.
        (serde_json::json!({"source": "parallel", "monitor": MONITOR, "since": "60d"}), 400, "bad_request"),
        (serde_json::json!({"source": "parallel", "monitor": "monitor_unknown"}), 502, "parallel_api_failed"),
    ];
    for (body, status, code) in cases {
        let reply = backfill(&gateway, body.clone()).await;
        assert_eq!((reply.status, reply.error_code().as_str()), (status, code), "{body}: {}", reply.text());
        assert!(!reply.text().contains(API_KEY));
    }
    // Failing for good (five 500s): 502 after the retries, nothing injected.
    api.fail_next(&[500, 500, 500, 500, 500]);
    let reply = backfill(&gateway, serde_json::json!({"source": "parallel", "monitor": MONITOR})).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(reply.text().contains("try again"), "Parallel's message is passed on: {}", reply.text());
    assert_eq!(gateway.journal.len(), 0);
    let wrong_method = admin_get(gateway.admin_addr, "/v1/backfill").await;
    assert_eq!(wrong_method.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_command_lists_and_injects_through_the_admin_api() {
    let api = FakeParallel::start(MONITOR, vec![api_event(7, 1), api_event(8, 2)]).await;
    let consumer = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = gateway(&api, &consumer).await;
    let admin = format!("http://{}", gateway.admin_addr);
    let run = |extra: &[&str]| {
        let mut command = std::process::Command::new(crate::common::daemon::BIN);
        command
            .args(["backfill", "--admin", &admin, "--source", "parallel", "--monitor", MONITOR])
            .args(extra);
        command
    };
    let dry = tokio::task::spawn_blocking({
        let mut command = run(&["--dry-run"]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{stdout} {}", String::from_utf8_lossy(&dry.stderr));
    assert!(
        stdout.contains("2 never arrived") && stdout.contains("mevtgrp_7") && stdout.contains("dry run"),
        "{stdout}"
    );
    let done = tokio::task::spawn_blocking({
        let mut command = run(&["--json"]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    assert!(done.status.success());
    let json: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(json["injected"].as_array().unwrap().len(), 2);
    consumer.wait_for(2, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_backfills_on_its_own_at_start_and_on_schedule() {
    let api = FakeParallel::start(MONITOR, vec![api_event(1, 2), api_event(2, 1), api_event(3, 20)]).await;
    let consumer = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let reconcile = format!(
        "reconcile = {{ monitors = [\"{MONITOR}\", \"{MONITOR}\"], every = \"3s\", lookback = \"3d\" }}"
    );
    let started = std::time::Instant::now();
    let gateway = gateway_with(&api, &consumer, &reconcile).await;
    // The pass at start injects the two recent detections (not the 20-day-old one).
    let received = consumer.wait_for(2, WAIT).await;
    assert!(received.iter().all(|r| r.header("hookrelay-backfill") == "1"));
    let listings = || api.requests().iter().filter(|(uri, _)| uri.contains("/events")).count();
    // One listing (two pages) for the monitor named twice; the next pass is
    // 3 s away (a machine so busy that it came already may show it too).
    let passes = if started.elapsed() < Duration::from_millis(2500) { 1 } else { 2 };
    assert!(listings() <= 2 * passes, "a monitor listed twice is reconciled once: {:?}", api.requests());
    // A later pass finds nothing new.
    let listed = listings();
    let deadline = std::time::Instant::now() + WAIT;
    while listings() < listed + 1 {
        assert!(std::time::Instant::now() < deadline, "reconcile stopped running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consumer.received().len(), 2);
    let late = gateway.post_signed(Transport::Http, "parallel", "whevent_real_2", &detected(2)).await;
    assert_eq!(late.json()["duplicate"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_retried_then_a_clear_502() {
    // A port bound but never listening: connections are refused, and no
    // other test can take it meanwhile.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let refused_at = reserved.local_addr().unwrap();
    let consumer = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = TestGateway::with(Options {
        sources: Some(format!(
            "[sources.parallel]\nsecrets = [\"{SECRET}\"]\n\
             [sources.parallel.parallel]\napi_key = \"{API_KEY}\"\nbase_url = \"http://{refused_at}\"\n"
        )),
        targets: format!(
            "[targets.consumer]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n",
            consumer.url()
        ),
        ..Options::default()
    })
    .await;
    let started = std::time::Instant::now();
    let reply = backfill(&gateway, serde_json::json!({"source": "parallel", "monitor": MONITOR})).await;
    let took = started.elapsed();
    assert_eq!((reply.status, reply.error_code().as_str()), (502, "parallel_api_failed"), "{}", reply.text());
    assert!(reply.text().contains("refused"), "the cause is named: {}", reply.text());
    assert!(!reply.text().contains(API_KEY));
    // Five tries with backoff 0.5 + 1 + 2 + 4 s between them: not given up at once.
    assert!(took >= Duration::from_secs(7), "gave up after {took:?}");
    assert_eq!(gateway.journal.len(), 0);
    drop(reserved);
}

/// A gateway whose targets route by the monitor's metadata, as most fan-outs do.
async fn metadata_routed_gateway(api: &FakeParallel, research: &TestTarget, ops: &TestTarget) -> TestGateway {
    let table = |name: &str, target: &TestTarget, team: &str| {
        format!(
            "[targets.{name}]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n\
             match = {{ \"/data/metadata/team\" = \"{team}\" }}\n",
            target.url()
        )
    };
    TestGateway::with(Options {
        sources: Some(format!(
            "[sources.parallel]\nsecrets = [\"{SECRET}\"]\n\
             [sources.parallel.parallel]\napi_key = \"{API_KEY}\"\nbase_url = \"http://{}\"\n",
            api.addr
        )),
        targets: table("research", research, "research") + &table("ops", ops, "ops"),
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfilled_detections_carry_the_monitors_metadata_and_route_like_the_webhook() {
    let api = FakeParallel::start(MONITOR, (1..=3).map(|n| api_event(n, 1)).collect()).await;
    api.set_metadata(Some(serde_json::json!({"team": "research", "slack_thread_id": "1234.5"})));
    let research = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let ops = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = metadata_routed_gateway(&api, &research, &ops).await;
    // Detection 1 arrived as Parallel's webhook (metadata team = research).
    let real = gateway.post_signed(Transport::Http, "parallel", "whevent_real_1", &detected(1)).await;
    assert_eq!(real.status, 200);

    // A dry run does not read the monitor.
    let dry =
        backfill(&gateway, serde_json::json!({"source": "parallel", "monitor": MONITOR, "dry_run": true}))
            .await;
    assert_eq!(dry.json()["missing"], serde_json::json!(["mevtgrp_2", "mevtgrp_3"]));
    assert!(!api.requests().iter().any(|(uri, _)| uri.ends_with(MONITOR)), "{:?}", api.requests());

    // The monitor cannot be read (five 500s): nothing is injected without its
    // metadata, and the answer says why.
    let failing = backfill_with_monitor_failing(&gateway, &api).await;
    assert_eq!(
        (failing.status, failing.error_code().as_str()),
        (502, "parallel_api_failed"),
        "{}",
        failing.text()
    );
    assert!(failing.text().contains("reading the monitor"), "which call failed: {}", failing.text());
    assert!(!failing.text().contains(API_KEY), "{}", failing.text());
    assert_eq!(gateway.journal.len(), 1);

    let done = backfill(&gateway, serde_json::json!({"source": "parallel", "monitor": MONITOR})).await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["injected"].as_array().unwrap().len(), 2, "{}", done.text());
    // The metadata-matching target gets every detection, the real one and the
    // two backfilled; the other team's target none.
    let received = research.wait_for(3, WAIT).await;
    for r in received.iter().filter(|r| r.header("hookrelay-backfill") == "1") {
        assert!(matches!(r.verified, Some(Ok(()))));
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["data"]["metadata"]["slack_thread_id"], "1234.5", "{body}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ops.received().len(), 0);
    assert_eq!(research.received().len(), 3);
}

/// Backfills while every request for the monitor object answers 500.
async fn backfill_with_monitor_failing(gateway: &TestGateway, api: &FakeParallel) -> Reply {
    api.fail_monitor(true);
    let reply = backfill(gateway, serde_json::json!({"source": "parallel", "monitor": MONITOR})).await;
    api.fail_monitor(false);
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_without_monitor_objects_still_backfills_without_metadata() {
    let api = FakeParallel::start(MONITOR, vec![api_event(1, 1)]).await;
    api.set_metadata(None);
    let consumer = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = gateway(&api, &consumer).await;
    let done = backfill(&gateway, serde_json::json!({"source": "parallel", "monitor": MONITOR})).await;
    assert_eq!(done.status, 200, "{}", done.text());
    let received = consumer.wait_for(1, WAIT).await;
    let body: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert!(body["data"].get("metadata").is_none(), "{body}");
    // Both API versions were asked before giving up on the metadata.
    let asked: Vec<_> =
        api.requests().into_iter().map(|(uri, _)| uri).filter(|uri| uri.ends_with(MONITOR)).collect();
    assert_eq!(asked, [format!("/v1/monitors/{MONITOR}"), format!("/v1alpha/monitors/{MONITOR}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_is_read_under_v1alpha_where_v1_does_not_serve_it() {
    let api = FakeParallel::start(MONITOR, vec![api_event(1, 1)]).await;
    api.set_metadata(Some(serde_json::json!({"team": "research"})));
    api.serve_monitor_at("v1alpha");
    let research = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let ops = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = metadata_routed_gateway(&api, &research, &ops).await;
    let done = backfill(&gateway, serde_json::json!({"source": "parallel", "monitor": MONITOR})).await;
    assert_eq!(done.status, 200, "{}", done.text());
    let received = research.wait_for(1, WAIT).await;
    let body: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body["data"]["metadata"]["team"], "research", "{body}");
    assert_eq!(ops.received().len(), 0);
}
