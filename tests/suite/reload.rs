//! Reloading a running gateway in process (what SIGHUP triggers): each part
//! that may change without a restart does, and a bad file changes nothing.

use std::time::Duration;

use serde_json::json;

use crate::common::target::{Answer, TestTarget};
use crate::common::*;

const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
const NEW_SOURCE_SECRET: &str = "whsec_bmV3LXNvdXJjZS1zZWNyZXQ=";
/// The default config's second source.
const OTHER_SECRET: &str = "whsec_b3RoZXItc291cmNlLXNlY3JldA==";

fn rewrite(gateway: &TestGateway, edit: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(&gateway.config_path).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&gateway.config_path, edited).unwrap();
}

async fn tls_handshake(
    gateway: &TestGateway,
    client: std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.map(drop)
}

#[tokio::test]
async fn a_new_certificate_is_served_to_new_connections() {
    let gateway = TestGateway::start_tls().await;
    let old_client = gateway.client_tls();
    tls_handshake(&gateway, old_client.clone()).await.unwrap();
    // Renewal: new key and certificate at the same paths, then a reload.
    let (_, _, new_client) = make_tls(gateway.dir.path());
    gateway.reload.reload().await.unwrap();
    tls_handshake(&gateway, new_client).await.unwrap();
    assert!(tls_handshake(&gateway, old_client).await.is_err(), "the old certificate is gone");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn source_secrets_and_limits_swap_and_a_bad_file_changes_nothing() {
    let gateway = TestGateway::start().await;
    let send = |secret: &'static str, id: &'static str| {
        let request = signed_request("parallel", secret, id, now(), MONITOR_EVENT.as_bytes());
        gateway.send(Transport::Http, request)
    };
    assert_eq!(send(SECRET, "evt_1").await.status, 200);
    rewrite(&gateway, |text| {
        text.replace(
            &format!("secrets = [\"{SECRET}\", \"{ROTATED_SECRET}\"]"),
            &format!("secrets = [\"{NEW_SOURCE_SECRET}\"]\nrate_limit = {{ per_second = 1, burst = 1 }}"),
        )
    });
    let reloaded = gateway.reload.reload().await.unwrap();
    assert!(reloaded.needs_restart.is_empty(), "{reloaded:?}");
    let old = send(SECRET, "evt_2").await;
    assert_eq!((old.status, old.error_code()), (401, "invalid_signature".to_owned()));
    // At once, so that the second comes within the second the token takes
    // to come back however slow the journal: one of them gets it (evt_2 did
    // not verify, and spent none), and the new limit refuses the other.
    let (a, b) = tokio::join!(send(NEW_SOURCE_SECRET, "evt_3"), send(NEW_SOURCE_SECRET, "evt_3b"));
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429]);

    // A broken file: the error names it, and the running config stays.
    std::fs::write(&gateway.config_path, "[sources.parallel]\nsecrets = []\n").unwrap();
    let err = gateway.reload.reload().await.unwrap_err();
    assert!(err.contains("sources.parallel.secrets"), "{err}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(send(NEW_SOURCE_SECRET, "evt_4").await.status, 200);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_reload_is_held_to_the_journal_settings_in_force_until_a_restart() {
    let gateway = TestGateway::start().await;
    // Valid as a file, but its tolerance needs the dedup window it also
    // raises, and a new window takes a restart: refused, nothing changes.
    rewrite(&gateway, |text| {
        text.replace(
            &format!("path = \"{}/journal\"\n", gateway.dir.path().display()),
            &format!("path = \"{}/journal\"\ndedup_window = \"720h\"\n", gateway.dir.path().display()),
        )
        .replace("[sources.parallel]\n", "[sources.parallel]\ntolerance = \"100h\"\n")
    });
    hookrelay::config::Config::load(&gateway.config_path).expect("valid on its own");
    let err = gateway.reload.reload().await.unwrap_err();
    assert!(err.contains("sources.parallel.tolerance") && err.contains("restart"), "{err}");
    let stale = signed_request("parallel", SECRET, "evt_old", now() - 3600, MONITOR_EVENT.as_bytes());
    let answer = gateway.send(Transport::Http, stale).await;
    assert_eq!(answer.status, 401, "the 5-minute tolerance still holds");
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_added_by_a_reload_get_deliveries_and_removed_ones_stop() {
    // "first" keeps failing, so its job stays pending and keeps retrying.
    let first = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    first.answer_with(|_| Some(Answer::Status(500)));
    let second = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let table = |name: &str, target: &TestTarget| {
        format!(
            "[targets.{name}]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n\
             retry = {{ initial = \"50ms\", max_delay = \"100ms\", max_attempts = 1000, max_age = \"1h\" }}\n",
            target.url()
        )
    };
    let gateway = TestGateway::with(Options { targets: table("first", &first), ..Options::default() }).await;
    gateway.post_signed(Transport::Http, "parallel", "evt_1", MONITOR_EVENT).await;
    first.wait_for(3, Duration::from_secs(20)).await;

    // Swap: "first" leaves, "second" joins.
    rewrite(&gateway, |text| text.replace(&table("first", &first), &table("second", &second)));
    gateway.reload.reload().await.unwrap();
    gateway.post_signed(Transport::Http, "parallel", "evt_2", MONITOR_EVENT).await;
    let received = second.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(received[0].header("webhook-id"), "evt_2");

    // The removed target's retries stop (an attempt in flight at the reload may still land).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts_then = first.received().len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(first.received().len(), attempts_then, "a removed target is not retried");
    // Its pending job is kept, and shown.
    let targets = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    let listed: Vec<(&str, &str, u64)> = targets["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["state"].as_str().unwrap(), t["pending"].as_u64().unwrap()))
        .collect();
    assert_eq!(listed, [("first", "removed", 1), ("second", "active", 0)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = admin_get(gateway.admin_addr, "/metrics").await.text();
        if metrics.contains("hookrelay_attempts_total{target=\"second\",outcome=\"delivered\"} 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no series for the new target: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back in the config, it picks up where it was.
    first.answer_with(|_| Some(Answer::Status(200)));
    rewrite(&gateway, |text| format!("{text}\n{}", table("first", &first)));
    gateway.reload.reload().await.unwrap();
    first.wait_until(Duration::from_secs(20), |r| r.last().is_some_and(|r| r.answered.contains("200"))).await;
    gateway.stop().await.unwrap();
}

/// `[targets.crm]` of `source`, at `target`, retrying every 50–100 ms for an hour.
fn crm(source: &str, target: &TestTarget) -> String {
    format!(
        "[targets.crm]\nsource = \"{source}\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n\
         retry = {{ initial = \"50ms\", max_delay = \"100ms\", max_attempts = 1000, max_age = \"1h\" }}\n",
        target.url()
    )
}

/// The first dead delivery the admin API lists, once there is one.
async fn first_dead(gateway: &TestGateway) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = admin_get(gateway.admin_addr, "/v1/deliveries?status=dead").await.json();
        if let Some(dead) = page["deliveries"].as_array().unwrap().first().cloned() {
            return dead;
        }
        assert!(std::time::Instant::now() < deadline, "no job went dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn replay(gateway: &TestGateway, selection: serde_json::Value) -> serde_json::Value {
    let answer = admin_post(gateway.admin_addr, "/v1/replays", selection).await;
    assert!(answer.status < 300, "{}", answer.text());
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_name_given_to_another_source_never_gets_the_old_backlog() {
    let old = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let new = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = TestGateway::with(Options { targets: crm("parallel", &old), ..Options::default() }).await;
    gateway.post_signed(Transport::Http, "parallel", "evt_parallel", MONITOR_EVENT).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while admin_get(gateway.admin_addr, "/v1/deliveries?status=delivered").await.json()["deliveries"]
        == json!([])
    {
        assert!(std::time::Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then replayed to the same target, naming its source too (what an
    // operator does every day), and the target now fails: the replayed job
    // keeps retrying.
    old.answer_with(|_| Some(Answer::Status(500)));
    let selection = json!({"since": "1h", "source": "parallel", "target": "crm", "status": "delivered"});
    assert_eq!(replay(&gateway, selection).await["matched"], 1);
    old.wait_for(3, Duration::from_secs(20)).await;

    // "crm" now names a target of the other source, somewhere else.
    rewrite(&gateway, |text| text.replace(&crm("parallel", &old), &crm("other", &new)));
    gateway.reload.reload().await.unwrap();
    let other = signed_request("other", OTHER_SECRET, "evt_other", now(), MONITOR_EVENT.as_bytes());
    assert_eq!(gateway.send(Transport::Http, other).await.status, 200);
    let received = new.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(received[0].header("webhook-id"), "evt_other");
    // The old source's retry goes dead, never sent there: that replay was for
    // the target of its day, not for this one.
    let dead = first_dead(&gateway).await;
    assert_eq!(dead["webhook_id"], "evt_parallel");
    let shown =
        admin_get(gateway.admin_addr, &format!("/v1/deliveries/{}", dead["id"].as_str().unwrap())).await;
    assert!(shown.text().contains("now takes deliveries of source"), "{}", shown.text());
    // And a replay naming the target alone does not send it either.
    let target_only = replay(&gateway, json!({"since": "1h", "target": "crm", "status": "dead"})).await;
    assert_eq!(target_only["matched"], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        new.received().iter().all(|r| r.header("webhook-id") != "evt_parallel"),
        "the old source's payload reached the new target"
    );
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_sources_backlog_goes_on_with_a_replay_naming_source_and_target() {
    let down = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    down.answer_with(|_| Some(Answer::Status(500)));
    let up = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let gateway = TestGateway::with(Options { targets: crm("parallel", &down), ..Options::default() }).await;
    gateway.post_signed(Transport::Http, "parallel", "evt_before_rename", MONITOR_EVENT).await;
    down.wait_for(2, Duration::from_secs(20)).await;

    // The source is renamed "prod" (its path becomes /hooks/prod), and the
    // target follows it: the pending job is from a source no longer configured.
    rewrite(&gateway, |text| {
        text.replace("[sources.parallel]", "[sources.prod]")
            .replace(&crm("parallel", &down), &crm("prod", &up))
    });
    gateway.reload.reload().await.unwrap();
    let dead = first_dead(&gateway).await;
    assert_eq!(dead["webhook_id"], "evt_before_rename");
    let both =
        replay(&gateway, json!({"since": "1h", "source": "parallel", "target": "crm", "status": "dead"}))
            .await;
    assert_eq!(both["matched"], 1);
    let received = up.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(received[0].header("webhook-id"), "evt_before_rename");
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_target_can_be_forgotten_so_its_deliveries_no_longer_wait() {
    // Each attempt fails after ten seconds: they are still landing when the
    // target is removed, however slow the machine.
    let down = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    down.answer_with(|_| Some(Answer::Slow(Duration::from_secs(10), 500)));
    let gateway = TestGateway::with(Options { targets: crm("parallel", &down), ..Options::default() }).await;
    for i in 0..3 {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_{i}"), MONITOR_EVENT).await;
    }
    down.wait_for(1, Duration::from_secs(20)).await;
    let forget = || admin_post(gateway.admin_addr, "/v1/targets/crm/forget", json!({}));
    let configured = forget().await;
    assert_eq!((configured.status, configured.error_code()), (409, "target_configured".to_owned()));

    rewrite(&gateway, |text| text.replace(&crm("parallel", &down), ""));
    gateway.reload.reload().await.unwrap();
    let listed = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    assert_eq!(listed["targets"][0]["state"], "removed", "{listed}");
    // An attempt begun before the removal is still landing: not yet.
    let landing = forget().await;
    assert_eq!(
        (landing.status, landing.error_code()),
        (409, "attempts_in_flight".to_owned()),
        "{}",
        landing.text()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let forgotten = loop {
        let answer = forget().await;
        if answer.status != 409 {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "{}", answer.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(forgotten.status, 200, "{}", forgotten.text());
    assert_eq!(forgotten.json()["dead"], 3);
    // No longer listed as waiting; each job dead, saying why; and a second
    // time there is nothing left.
    let listed = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    assert_eq!(listed["targets"], json!([]), "{listed}");
    let dead = admin_get(gateway.admin_addr, "/v1/deliveries?status=dead").await.json();
    assert_eq!(dead["deliveries"].as_array().unwrap().len(), 3);
    let id = dead["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let shown = admin_get(gateway.admin_addr, &format!("/v1/deliveries/{id}")).await.text();
    assert!(shown.contains(hookrelay::journal::FORGOTTEN), "{shown}");
    assert_eq!(forget().await.json()["dead"], 0);
    let unknown = admin_post(gateway.admin_addr, "/v1/targets/crm2/forget", json!({})).await;
    assert_eq!((unknown.status, unknown.error_code()), (404, "unknown_target".to_owned()));
    // Dead letters now: a purge deletes them.
    let purged =
        admin_post(gateway.admin_addr, "/v1/deliveries/purge", json!({"status": "dead", "until": "0s"}))
            .await;
    assert_eq!(purged.json()["purged"], 3, "{}", purged.text());
    gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_removed_while_their_jobs_wait_are_listed_after_a_restart_and_can_come_back_or_be_forgotten()
{
    let down = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    down.answer_with(|_| Some(Answer::Status(500)));
    let old = crm("parallel", &down).replace("[targets.crm]", "[targets.old]");
    let gateway =
        TestGateway::with(Options { targets: crm("parallel", &down) + &old, ..Options::default() }).await;
    for i in 0..2 {
        gateway.post_signed(Transport::Http, "parallel", &format!("evt_{i}"), MONITOR_EVENT).await;
    }
    let dir = gateway.dir.clone();
    gateway.stop().await.unwrap();

    // Restarted with neither: no lanes, but the journal still holds their jobs.
    let gateway = TestGateway::with(Options { dir: Some(dir), ..Options::default() }).await;
    let listed = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    let rows: Vec<(&str, &str, u64)> = listed["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["state"].as_str().unwrap(), t["pending"].as_u64().unwrap()))
        .collect();
    assert_eq!(rows, [("crm", "removed", 2), ("old", "removed", 2)], "{listed}");
    let metrics = admin_get(gateway.admin_addr, "/metrics").await.text();
    assert!(metrics.contains("hookrelay_pending_jobs{target=\"crm\"} 2\n"), "{metrics}");

    // One is forgotten: its jobs dead, no longer listed as waiting, and its
    // dead jobs still gauged (as a target removed by a reload keeps them).
    let forgotten = admin_post(gateway.admin_addr, "/v1/targets/old/forget", json!({})).await;
    assert_eq!((forgotten.status, forgotten.json()["dead"].clone()), (200, json!(2)), "{}", forgotten.text());
    let listed = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    assert_eq!(listed["targets"].as_array().unwrap().len(), 1, "{listed}");
    let metrics = admin_get(gateway.admin_addr, "/metrics").await.text();
    assert!(metrics.contains("hookrelay_dead_jobs{target=\"old\"} 2\n"), "{metrics}");
    assert!(metrics.contains("hookrelay_pending_jobs{target=\"old\"} 0\n"), "{metrics}");
    let again = admin_post(gateway.admin_addr, "/v1/targets/old/forget", json!({})).await;
    assert_eq!((again.status, again.json()["dead"].clone()), (200, json!(0)), "nothing left to forget");

    // The other comes back at a reload: its new lane sends what waited.
    let up = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    std::fs::write(
        &gateway.config_path,
        std::fs::read_to_string(&gateway.config_path).unwrap() + &crm("parallel", &up),
    )
    .unwrap();
    gateway.reload.reload().await.unwrap();
    let received = up.wait_for(2, Duration::from_secs(20)).await;
    let mut ids: Vec<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["evt_0", "evt_1"]);
    let listed = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    assert_eq!(listed["targets"][0]["state"], "active", "{listed}");
    assert_eq!(listed["targets"].as_array().unwrap().len(), 1, "{listed}");
    // Once delivered, removing it again leaves nothing waiting to list.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while admin_get(gateway.admin_addr, "/v1/targets").await.json()["targets"][0]["pending"] != 0 {
        assert!(std::time::Instant::now() < deadline, "its outcomes are written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rewrite(&gateway, |text| text.replace(&crm("parallel", &up), ""));
    gateway.reload.reload().await.unwrap();
    let listed = admin_get(gateway.admin_addr, "/v1/targets").await.json();
    assert_eq!(listed["targets"], json!([]), "{listed}");
    gateway.stop().await.unwrap();
}
