//! The admin listener: health, readiness and Prometheus metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::target::TestTarget;
use crate::common::*;
use bytes::Bytes;
use http_body_util::Full;
use tokio::io::AsyncWriteExt;

async fn get(addr: std::net::SocketAddr, path: &str) -> Reply {
    let request =
        hyper::Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    send_plain(addr, request).await
}

/// Parses the Prometheus text format strictly: every sample belongs to a
/// family declared by `# TYPE` before it, names and labels are well formed,
/// values are numbers. Returns `name{labels}` → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let valid_name = |name: &str| {
        !name.is_empty()
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(valid_name(rest.split(' ').next().unwrap()), "bad HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE: {line}"));
            assert!(
                valid_name(name) && ["counter", "gauge", "histogram"].contains(&kind),
                "bad TYPE: {line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family declared twice: {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line: {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = if value == "+Inf" {
            f64::INFINITY
        } else {
            value.parse().unwrap_or_else(|_| panic!("bad value: {line}"))
        };
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad name: {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels: {line}"));
            for pair in inner.split(',') {
                let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(
                    valid_name(key) && quoted.starts_with('"') && quoted.ends_with('"') && quoted.len() >= 2,
                    "bad label: {line}"
                );
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| types.get(*base).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its # TYPE: {line}");
        assert!(samples.insert(series.to_owned(), value).is_none(), "duplicate series: {series}");
    }
    samples
}

#[tokio::test]
async fn health_and_readiness() {
    let gateway = TestGateway::start().await;
    let health = get(gateway.admin_addr, "/healthz").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_eq!(get(gateway.admin_addr, "/readyz").await.status, 200);
    assert_eq!(get(gateway.admin_addr, "/nope").await.status, 404);
    let post =
        hyper::Request::post("/healthz").header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send_plain(gateway.admin_addr, post).await.status, 405);
    // The admin listener is not the inbound one.
    assert_eq!(get(gateway.addr, "/healthz").await.status, 404);
}

#[tokio::test]
async fn readiness_turns_503_when_shutdown_begins() {
    let mut gateway = TestGateway::start().await;
    // Keep a request in flight so the drain takes a while.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(b"POST /hooks/parallel HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nwebhook-id: a\r\nwebhook-timestamp: 1\r\nwebhook-signature: v1,x\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gateway.begin_stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ready = get(gateway.admin_addr, "/readyz").await;
        if ready.status == 503 {
            assert_eq!(ready.text(), "not ready\n");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "readyz stayed {}", ready.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.write_all(b"0123456789").await.unwrap();
    drop(stream);
    gateway.wait_stopped().await.unwrap();
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let targets = format!(
        "[targets.t]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n",
        target.url()
    );
    let gateway = TestGateway::with(Options { targets, ..Options::default() }).await;

    let before = parse_metrics(&get(gateway.admin_addr, "/metrics").await.text());
    assert_eq!(before["hookrelay_deliveries_received_total{source=\"parallel\"}"], 0.0);
    assert_eq!(before["hookrelay_pending_jobs{target=\"t\"}"], 0.0);

    for id in ["evt_m1", "evt_m2", "evt_m1"] {
        assert_eq!(gateway.post_signed(Transport::Http, "parallel", id, MONITOR_EVENT).await.status, 200);
    }
    let bad = gateway
        .send(Transport::Http, signed_request("parallel", "whsec_d3Jvbmc=", "evt_bad", now(), b"{}"))
        .await;
    assert_eq!(bad.status, 401);
    assert_eq!(gateway.post_signed(Transport::Http, "nope", "evt_x", MONITOR_EVENT).await.status, 404);
    target.wait_for(2, Duration::from_secs(20)).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let reply = get(gateway.admin_addr, "/metrics").await;
        assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        let after = parse_metrics(&reply.text());
        if after["hookrelay_attempts_total{target=\"t\",outcome=\"delivered\"}"] == 2.0 {
            break after;
        }
        assert!(std::time::Instant::now() < deadline, "attempts never reached 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let expect = [
        ("hookrelay_deliveries_received_total{source=\"parallel\"}", 2.0),
        ("hookrelay_deliveries_received_total{source=\"other\"}", 0.0),
        ("hookrelay_deliveries_duplicate_total{source=\"parallel\"}", 1.0),
        ("hookrelay_deliveries_rejected_total{source=\"parallel\",reason=\"invalid_signature\"}", 1.0),
        ("hookrelay_deliveries_rejected_total{source=\"\",reason=\"unknown_source\"}", 1.0),
        ("hookrelay_ingest_duration_seconds_count", 5.0),
        ("hookrelay_ingest_duration_seconds_bucket{le=\"+Inf\"}", 5.0),
        ("hookrelay_pending_jobs{target=\"t\"}", 0.0),
        ("hookrelay_oldest_pending_age_seconds{target=\"t\"}", 0.0),
        ("hookrelay_breaker_open{target=\"t\"}", 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(after.get(series), Some(&value), "{series}");
    }
    // Every attempt is timed, however it ended (a pooled connection the
    // target closed meanwhile fails one, which is then retried: a busy
    // machine makes that race likelier, and it is no fault of the gateway).
    let attempts: f64 = ["delivered", "retry", "dead"]
        .iter()
        .map(|outcome| after[&format!("hookrelay_attempts_total{{target=\"t\",outcome=\"{outcome}\"}}")])
        .sum();
    assert_eq!(after["hookrelay_attempt_duration_seconds_count{target=\"t\"}"], attempts);
    assert_eq!(after["hookrelay_attempts_total{target=\"t\",outcome=\"dead\"}"], 0.0);
    assert!(after["hookrelay_journal_size_bytes"] > 0.0);
    // No label ever carries a name the sender made up.
    assert!(!after.keys().any(|k| k.contains("nope")));
}

#[tokio::test]
async fn pending_jobs_and_their_age_show_while_a_target_is_down() {
    const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    target.answer_with(|_| Some(crate::common::target::Answer::Status(503)));
    let targets = format!(
        "[targets.t]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n\
         retry = {{ initial = \"10s\", max_delay = \"10s\" }}\nbreaker = {{ failures = 1, probe_interval = \"10s\" }}\n",
        target.url()
    );
    let gateway = TestGateway::with(Options { targets, ..Options::default() }).await;
    for i in 0..3 {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_down_{i}"), MONITOR_EVENT).await;
    }
    target.wait_for(1, Duration::from_secs(20)).await;
    // Until the failed attempt's outcome is written (a group commit away) and
    // the oldest job has waited a little.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = parse_metrics(&get(gateway.admin_addr, "/metrics").await.text());
        let retried = metrics.get("hookrelay_attempts_total{target=\"t\",outcome=\"retry\"}") == Some(&1.0);
        if retried && metrics["hookrelay_oldest_pending_age_seconds{target=\"t\"}"] >= 0.2 {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(metrics["hookrelay_pending_jobs{target=\"t\"}"], 3.0);
    assert!(metrics["hookrelay_oldest_pending_age_seconds{target=\"t\"}"] >= 0.2);
    assert_eq!(metrics["hookrelay_breaker_open{target=\"t\"}"], 1.0);
    assert_eq!(metrics["hookrelay_attempts_total{target=\"t\",outcome=\"retry\"}"], 1.0);
}

async fn call(addr: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>) -> Reply {
    let mut builder = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    send_plain(addr, builder.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn the_v1_api_needs_the_token_and_never_hints_at_it() {
    let token = "admin-token-for-tests";
    let gateway =
        TestGateway::with(Options { admin: format!("token = \"{token}\""), ..Options::default() }).await;
    for presented in [None, Some("wrong"), Some("admin-token-for-test"), Some("")] {
        let reply = call(gateway.admin_addr, "GET", "/v1/targets", presented).await;
        assert_eq!(reply.status, 401, "{presented:?}");
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
        assert_eq!(reply.error_code(), "unauthorized");
        assert!(!reply.text().contains("admin-token"));
    }
    assert_eq!(call(gateway.admin_addr, "GET", "/v1/targets", Some(token)).await.status, 200);
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(call(gateway.admin_addr, "GET", "/healthz", None).await.status, 200);
}

#[tokio::test]
async fn a_paused_target_accumulates_jobs_and_resume_delivers_them() {
    const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let targets = format!(
        "[targets.t]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n",
        target.url()
    );
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let options = Options { targets, dir: Some(dir.clone()), ..Options::default() };
    let gateway = TestGateway::with(options.clone()).await;

    let paused = call(gateway.admin_addr, "POST", "/v1/targets/t/pause", None).await;
    assert_eq!(paused.status, 200, "{}", paused.text());
    assert_eq!(paused.json()["state"], "paused");
    for i in 0..3 {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_p{i}"), MONITOR_EVENT).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(target.received().is_empty(), "a paused target gets nothing");
    let listed = call(gateway.admin_addr, "GET", "/v1/targets", None).await.json();
    let t = &listed["targets"][0];
    assert_eq!(
        (t["name"].as_str(), t["pending"].as_u64(), t["paused"].as_bool()),
        (Some("t"), Some(3), Some(true))
    );

    // The pause survives a restart.
    gateway.stop().await.unwrap();
    let gateway = TestGateway::with(options).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(target.received().is_empty());
    let listed = call(gateway.admin_addr, "GET", "/v1/targets", None).await.json();
    assert_eq!(listed["targets"][0]["state"], "paused");

    let resumed = call(gateway.admin_addr, "POST", "/v1/targets/t/resume", None).await;
    assert_eq!(resumed.json()["state"], "active");
    let received = target.wait_for(3, Duration::from_secs(20)).await;
    assert!(received.iter().all(|r| r.verified == Some(Ok(()))));

    assert_eq!(call(gateway.admin_addr, "POST", "/v1/targets/nope/pause", None).await.status, 404);
    assert_eq!(call(gateway.admin_addr, "GET", "/v1/targets/t/pause", None).await.status, 405);
    assert_eq!(call(gateway.admin_addr, "GET", "/v1/nothing", None).await.status, 404);
}

#[tokio::test]
async fn deliveries_list_filter_paginate_and_show() {
    use crate::common::target::Answer;
    const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
    let ok = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let flaky = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    flaky.answer_with(|headers| (headers["webhook-id"] == "evt_3").then_some(Answer::Status(503)));
    let targets = format!(
        "[targets.t1]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n\
         [targets.t2]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\nevents = [\"monitor.*\"]\n\
         retry = {{ initial = \"50ms\", max_delay = \"50ms\", max_attempts = 1 }}\n",
        ok.url(),
        flaky.url()
    );
    let gateway = TestGateway::with(Options { targets, ..Options::default() }).await;
    let task = r#"{"type":"task_run.status","data":{"run_id":"trun_1","status":"completed"}}"#;
    let bodies = [MONITOR_EVENT, MONITOR_EVENT, task, MONITOR_EVENT];
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(
            gateway.post_signed(Transport::Http, "parallel", &format!("evt_{i}"), body).await.status,
            200
        );
    }
    let binary = gateway
        .send(Transport::Http, signed_request("parallel", SECRET, "evt_4", now(), b"\xff\x00raw"))
        .await;
    assert_eq!(binary.status, 200);
    ok.wait_for(5, Duration::from_secs(20)).await;
    // t2 takes monitor events only: evt_0, evt_1 and evt_3 (which fails once and is dead).
    flaky.wait_for(3, Duration::from_secs(20)).await;
    // Until every outcome is written (a group commit after the answers).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while call(gateway.admin_addr, "GET", "/v1/deliveries?status=pending", None).await.json()["deliveries"]
        != serde_json::json!([])
    {
        assert!(std::time::Instant::now() < deadline, "outcomes never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let list = |query: String| {
        let addr = gateway.admin_addr;
        async move { call(addr, "GET", &format!("/v1/deliveries{query}"), None).await }
    };
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["webhook_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = list(String::new()).await.json();
    assert_eq!(ids(&all), ["evt_0", "evt_1", "evt_2", "evt_3", "evt_4"]);
    assert_eq!(all["next_cursor"], serde_json::Value::Null);

    // Pages of two, stable while a new delivery arrives between them.
    let first = list("?limit=2".into()).await.json();
    assert_eq!(ids(&first), ["evt_0", "evt_1"]);
    gateway.post_signed(Transport::Http, "parallel", "evt_5", MONITOR_EVENT).await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = list(format!("?limit=2&cursor={cursor}")).await.json();
    assert_eq!(ids(&second), ["evt_2", "evt_3"]);
    let third = list(format!("?limit=2&cursor={}", second["next_cursor"].as_str().unwrap())).await.json();
    assert_eq!(ids(&third), ["evt_4", "evt_5"]);
    assert_eq!(third["next_cursor"], serde_json::Value::Null);

    // Filters, alone and combined.
    assert_eq!(ids(&list("?event=task_run.*".into()).await.json()), ["evt_2"]);
    assert_eq!(ids(&list("?target=t2&status=dead".into()).await.json()), ["evt_3"]);
    assert_eq!(ids(&list("?status=dead".into()).await.json()), ["evt_3"]);
    assert_eq!(ids(&list("?status=delivered&limit=3".into()).await.json()), ["evt_0", "evt_1", "evt_2"]);
    assert_eq!(
        ids(&list("?target=t2&status=delivered&event=monitor.*&limit=2".into()).await.json()),
        ["evt_0", "evt_1"]
    );
    assert_eq!(ids(&list("?source=other".into()).await.json()), Vec::<String>::new());
    assert_eq!(ids(&list("?since=1h&until=2h".into()).await.json()), Vec::<String>::new());
    assert_eq!(list("?status=lost".into()).await.status, 400);
    assert_eq!(list("?status=lost".into()).await.error_code(), "bad_query");

    // One delivery in full.
    let dead_id = list("?target=t2&status=dead".into()).await.json()["deliveries"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = call(gateway.admin_addr, "GET", &format!("/v1/deliveries/{dead_id}"), None).await.json();
    assert_eq!(shown["body"]["type"], "monitor.event.detected");
    let t2 = shown["jobs"].as_array().unwrap().iter().find(|j| j["target"] == "t2").unwrap();
    assert_eq!(t2["state"], "dead");
    assert_eq!(t2["history"][0]["status"], 503);
    let raw_id = all["deliveries"][4]["id"].as_str().unwrap();
    let raw = call(gateway.admin_addr, "GET", &format!("/v1/deliveries/{raw_id}"), None).await.json();
    assert_eq!(raw["body_base64"], "/wByYXc=");
    let unknown =
        call(gateway.admin_addr, "GET", "/v1/deliveries/dlv_0000000000000000000000000000", None).await;
    assert_eq!((unknown.status, unknown.error_code().as_str()), (404, "unknown_delivery"));
    assert_eq!(call(gateway.admin_addr, "GET", "/v1/deliveries/nope", None).await.status, 400);
}
