//! The real binary as a child process: durability across SIGKILL, graceful
//! SIGTERM, CLI exit codes, and logs that never carry a secret.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::daemon::{BIN, Daemon, write_config};
use crate::common::*;
use hookrelay::config::Config;
use hookrelay::journal::{DeliveryId, Journal};

/// Sends `bodies` concurrently (at most `concurrency` at once); returns the
/// delivery id each got, in order.
async fn send_all(
    addr: SocketAddr,
    bodies: &[(String, String)],
    concurrency: usize,
) -> Vec<(u16, serde_json::Value)> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let tasks: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|(id, body)| {
            let semaphore = semaphore.clone();
            tokio::spawn(async move {
                let _permit = semaphore.acquire().await.unwrap();
                let reply =
                    send_plain(addr, signed_request("parallel", SECRET, &id, now(), body.as_bytes())).await;
                let json = if reply.status == 200 { reply.json() } else { serde_json::Value::Null };
                (reply.status, json)
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_deliveries_survive_sigkill() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), "");
    let bodies: Vec<(String, String)> = (0..N)
        .map(|i| {
            (
                format!("whevent_{i:04}"),
                format!(
                    r#"{{"type":"monitor.event.detected","data":{{"monitor_id":"monitor_{i}","n":{i}}}}}"#
                ),
            )
        })
        .collect();

    let mut daemon = Daemon::start(&config_path);
    let replies = send_all(daemon.addr, &bodies, 16).await;
    // SIGKILL straight after the last 200: no flush at exit, no goodbye.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let ids: Vec<String> = replies
        .iter()
        .map(|(status, json)| {
            assert_eq!(*status, 200);
            assert_eq!(json["duplicate"], false);
            json["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let first_logs = daemon.logs();
    drop(daemon);

    // Restart on the same journal: every webhook is known, under its original id.
    let mut daemon = Daemon::start(&config_path);
    let again = send_all(daemon.addr, &bodies, 16).await;
    for ((status, json), id) in again.iter().zip(&ids) {
        assert_eq!(*status, 200);
        assert_eq!(json["duplicate"], true, "{json}");
        assert_eq!(json["id"].as_str(), Some(id.as_str()));
    }
    daemon.signal("TERM");
    let status = daemon.wait().await;
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    let logs = format!("{first_logs}\n{}", daemon.logs());
    assert!(logs.contains("journal flushed; stopped"));

    // And the records hold the exact bytes.
    let config = Config::load(&config_path).unwrap();
    let journal = Journal::open(&config.journal).unwrap();
    assert_eq!(journal.len(), N);
    for ((webhook_id, body), id) in bodies.iter().zip(&ids) {
        let record = journal.get(id.parse::<DeliveryId>().unwrap()).unwrap().expect("journaled");
        assert_eq!(&record.webhook_id, webhook_id);
        assert_eq!(record.body, body.as_bytes());
    }
    println!("acked {N}, all {N} present after SIGKILL and restart");

    // Nothing secret reached the logs, even at debug level.
    for secret in [SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    assert!(logs.contains("delivery accepted") && logs.contains("\"outcome\":\"duplicate\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_and_retrying_jobs_survive_sigkill() {
    use crate::common::target::{Answer, TestTarget};
    const N: usize = 100;
    const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
    let target = TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    // Failing, and slowly, so attempts are in flight and retries queued at the kill.
    target.answer_with(|_| Some(Answer::Slow(Duration::from_millis(50), 503)));
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(
        dir.path(),
        &format!(
            "[targets.t]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\nconcurrency = 8\n\
             breaker = {{ failures = 1000000 }}\n\
             retry = {{ initial = \"100ms\", max_delay = \"300ms\", max_attempts = 1000, max_age = \"1h\" }}\n",
            target.url()
        ),
    );
    let bodies: Vec<(String, String)> = (0..N)
        .map(|i| {
            (format!("whevent_{i:03}"), format!(r#"{{"type":"monitor.event.detected","data":{{"n":{i}}}}}"#))
        })
        .collect();
    let mut daemon = Daemon::start(&config_path);
    let replies = send_all(daemon.addr, &bodies, 16).await;
    assert!(replies.iter().all(|(status, _)| *status == 200));
    target.wait_for(N + 20, Duration::from_secs(30)).await;
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let before_kill = target.received().len();
    drop(daemon);

    target.answer_with(|_| None); // recovered: 200 from now on
    let daemon = Daemon::start(&config_path);
    let received = target
        .wait_until(Duration::from_secs(60), |r| {
            r.iter()
                .filter(|r| r.answered == "Status(200)")
                .map(|r| r.header("webhook-id"))
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= N
        })
        .await;
    let delivered: std::collections::BTreeSet<&str> =
        received.iter().filter(|r| r.answered == "Status(200)").map(|r| r.header("webhook-id")).collect();
    let expected: std::collections::BTreeSet<&str> = bodies.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(delivered, expected);
    for request in &received {
        assert_eq!(request.verified, Some(Ok(())), "only bodies and signatures that were sent");
        let id = request.header("webhook-id");
        let body = &bodies.iter().find(|(i, _)| i == id).expect("a webhook-id that was sent").1;
        assert_eq!(request.body, body.as_bytes());
    }
    let duplicates = received.iter().filter(|r| r.answered == "Status(200)").count() - N;
    println!(
        "acked {N}; {before_kill} failed attempts before SIGKILL; all {N} delivered after restart ({duplicates} duplicate 200s)"
    );
    drop(daemon);
}

#[test]
fn check_config_exit_codes() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookrelay.toml");
    let ok = Command::new(BIN).args(["check-config", "--config"]).arg(&shipped).output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let summary = String::from_utf8_lossy(&ok.stdout);
    assert!(summary.contains(": OK") && summary.contains("source   parallel"), "{summary}");
    assert!(!summary.contains("whsec_"), "the summary shows no secret");

    let bad =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid-config/unknown-server-key.toml");
    for command in ["check-config", "serve"] {
        let out = Command::new(BIN).args([command, "--config"]).arg(&bad).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("unknown-server-key.toml:3: server.lisen: unknown field `lisen`"),
            "{stderr}"
        );
    }
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let out = Command::new(BIN).arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("check-config"));
}

#[test]
fn serve_exits_1_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookrelay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[journal]\npath = \"journal\"\n\
             [sources.parallel]\nsecrets = [\"{SECRET}\"]\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}

#[test]
fn gen_secret_prints_a_fresh_whsec_secret() {
    let run = || String::from_utf8(Command::new(BIN).arg("gen-secret").output().unwrap().stdout).unwrap();
    let (a, b) = (run(), run());
    assert!(a.starts_with("whsec_") && a.ends_with('\n'));
    assert_ne!(a, b);
    assert!(hookrelay::signature::keys_for_secret(a.trim()).unwrap().len() == 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_output_is_accepted_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(dir.path(), "");
    let body_path = dir.path().join("event.json");
    std::fs::write(&body_path, MONITOR_EVENT).unwrap();
    let mut daemon = Daemon::start(&config_path);
    for raw in [false, true] {
        let mut command = Command::new(BIN);
        command.args(["sign", "--secret", "env:TEST_SIGN_SECRET", "--body-file"]).arg(&body_path);
        command.env("TEST_SIGN_SECRET", SECRET);
        if raw {
            command.arg("--raw-key");
        }
        let out = command.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let headers: Vec<(&str, &str)> = text.lines().map(|line| line.split_once(": ").unwrap()).collect();
        assert_eq!(
            headers.iter().map(|h| h.0).collect::<Vec<_>>(),
            ["webhook-id", "webhook-timestamp", "webhook-signature"]
        );
        let reply = send_plain(daemon.addr, request("parallel", &headers, MONITOR_EVENT.as_bytes())).await;
        assert_eq!(reply.status, 200, "raw={raw}: {}", reply.text());
    }
    let out = Command::new(BIN)
        .args(["sign", "--secret", "env:SURELY_UNSET_FOR_TEST", "--body", "{}"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SURELY_UNSET_FOR_TEST is not set"));
    daemon.signal("INT");
    assert!(daemon.wait().await.success(), "SIGINT exits 0 too");
}

/// A child process whose output lines (stdout and stderr) are collected.
struct Lines {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    fn spawn(command: &mut Command) -> Lines {
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collect = |output: Box<dyn std::io::Read + Send>| {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        };
        collect(Box::new(child.stdout.take().unwrap()));
        collect(Box::new(child.stderr.take().unwrap()));
        Lines { child, lines }
    }

    /// A tap on port 0 and the port it says it listens on.
    fn tap(secret: &str) -> (Lines, u16) {
        let tap =
            Lines::spawn(Command::new(BIN).args(["tap", "--listen", "127.0.0.1:0", "--secret", secret]));
        let line = tap.wait_for_line(|l| l.contains("listening on http://127.0.0.1:"));
        let port = line.split("127.0.0.1:").nth(1).and_then(|rest| rest.split('/').next());
        let port = port.and_then(|port| port.parse().ok()).unwrap_or_else(|| panic!("no port in {line:?}"));
        (tap, port)
    }

    fn wait_for_line(&self, pred: impl Fn(&str) -> bool) -> String {
        for _ in 0..200 {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| pred(l)) {
                return line.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no such line; got {:?}", self.lines.lock().unwrap());
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that refuses connections while the socket lives: bound, never
/// listening, so no other test can take it meanwhile.
fn refused_port() -> (tokio::net::TcpSocket, u16) {
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = reserved.local_addr().unwrap().port();
    (reserved, port)
}

#[test]
fn quick_start_serve_tap_and_send_test() {
    const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
    // Bound before it says so: no port is freed for the tap to take later.
    let (tap, tap_port) = Lines::tap(TARGET_SECRET);
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(
        dir.path(),
        &format!(
            "[targets.tap]\nsource = \"parallel\"\nurl = \"http://127.0.0.1:{tap_port}/events\"\nsecret = \"{TARGET_SECRET}\"\n"
        ),
    );
    let daemon = Daemon::start(&config_path);
    for event_type in hookrelay::samples::EVENT_TYPES {
        let out = Command::new(BIN)
            .args(["send-test", "--type", event_type, "--config"])
            .arg(&config_path)
            .args(["--url", &format!("http://{}/hooks/parallel", daemon.addr)])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("-> 200") && stdout.contains("\"duplicate\":false"), "{stdout}");
        let line = tap.wait_for_line(|l| l.contains(&format!("type={event_type} ")));
        assert!(
            line.contains(" verified ") && line.contains("attempt=1") && line.contains("delivery=dlv_"),
            "{line}"
        );
    }

    // A tap with the wrong secret says why it refuses, and answers 401.
    let (wrong, wrong_port) = Lines::tap("whsec_d3Jvbmc=");
    let out = Command::new(BIN)
        .args(["send-test", "--url", &format!("http://127.0.0.1:{wrong_port}/"), "--secret", TARGET_SECRET])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a 401 is a failure");
    assert!(String::from_utf8_lossy(&out.stdout).contains("-> 401"));
    wrong.wait_for_line(|l| l.contains("REJECTED (invalid_signature)"));
}

#[test]
fn send_test_errors() {
    let (_reserved, refused) = refused_port();
    let unreachable = Command::new(BIN)
        .args([
            "send-test",
            "--url",
            &format!("http://127.0.0.1:{refused}/hooks/parallel"),
            "--secret",
            SECRET,
        ])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(69), "{}", String::from_utf8_lossy(&unreachable.stderr));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach"));
    let unknown = Command::new(BIN)
        .args(["send-test", "--type", "nope", "--url", "http://127.0.0.1:1/", "--secret", SECRET])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown event type \"nope\""));
    let no_source = Command::new(BIN)
        .args(["send-test", "--source", "nope", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookrelay.toml"))
        .output()
        .unwrap();
    assert_eq!(no_source.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&no_source.stderr).contains("no source \"nope\""));
}

#[test]
fn targets_cli_lists_pauses_and_resumes_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_config(
        dir.path(),
        "[targets.alpha]\nsource = \"parallel\"\nurl = \"http://127.0.0.1:9/\"\nsigning = \"none\"\n",
    );
    let with_token = std::fs::read_to_string(&config_path).unwrap().replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"cli-token\"\n",
    );
    assert!(with_token.contains("cli-token"));
    std::fs::write(&config_path, with_token).unwrap();
    let daemon = Daemon::start(&config_path);
    let admin = format!("http://{}", daemon.admin_addr);
    let run = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.arg("targets").args(["--admin", &admin]).args(args).env_remove("HOOKRELAY_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("HOOKRELAY_ADMIN_TOKEN", token);
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, _, stderr) = run(&["list"], None);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("refused the token"), "{stderr}");

    let (code, stdout, _) = run(&[], Some("cli-token"));
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("NAME"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("alpha") && l.contains("active")), "{stdout}");

    let (code, stdout, _) = run(&["pause", "alpha"], Some("cli-token"));
    assert_eq!(code, Some(0));
    assert!(stdout.lines().any(|l| l.starts_with("alpha") && l.contains("paused")), "{stdout}");

    let (code, stdout, _) = run(&["--json", "list"], Some("cli-token"));
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["targets"][0]["state"], "paused");

    let (code, stdout, _) = run(&["resume", "alpha"], Some("cli-token"));
    assert_eq!((code, stdout.contains("active")), (Some(0), true));

    let (code, _, stderr) = run(&["pause", "nope"], Some("cli-token"));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("unknown_target"), "{stderr}");

    // Deliveries, through the same admin API.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reply = runtime.block_on(send_plain(
        daemon.addr,
        signed_request("parallel", SECRET, "whevent_cli", now(), MONITOR_EVENT.as_bytes()),
    ));
    assert_eq!(reply.status, 200);
    let delivery_id = reply.json()["id"].as_str().unwrap().to_owned();
    let deliveries = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("deliveries")
            .args(args)
            .args(["--admin", &admin])
            .env("HOOKRELAY_ADMIN_TOKEN", "cli-token")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = deliveries(&["list", "--since", "1h"]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.starts_with("ID") && stdout.contains(&delivery_id) && stdout.contains("whevent_cli"),
        "{stdout}"
    );
    let (code, stdout, _) = deliveries(&["show", &delivery_id]);
    assert_eq!(code, Some(0));
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["body"]["type"], "monitor.event.detected");
    let (code, _, stderr) = deliveries(&["list", "--status", "lost"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("bad_query") && stderr.contains("status"), "{stderr}");

    let (_reserved, refused) = refused_port();
    let unreachable = Command::new(BIN)
        .args(["targets", "--admin", &format!("http://127.0.0.1:{refused}")])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the admin API"));
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_pending_jobs_where_an_earlier_version_looks_for_them() {
    const N: usize = 20;
    const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
    let dir = tempfile::tempdir().unwrap();
    let target = crate::common::target::TestTarget::start(Some(TARGET_SECRET), vec![]).await;
    let targets = format!(
        "[targets.t]\nsource = \"parallel\"\nurl = \"{}\"\nsecret = \"{TARGET_SECRET}\"\n",
        target.url()
    );
    let config_path = write_config(dir.path(), &targets);
    let mut daemon = Daemon::start(&config_path);
    // Paused, so every job is still fresh and pending at the stop.
    let pause = hyper::Request::post("/v1/targets/t/pause")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send_plain(daemon.admin_addr, pause).await.status, 200);
    let bodies: Vec<(String, String)> = (0..N)
        .map(|i| (format!("whevent_p{i:02}"), format!(r#"{{"type":"monitor.event.detected","n":{i}}}"#)))
        .collect();
    assert!(send_all(daemon.addr, &bodies, 4).await.iter().all(|(status, _)| *status == 200));
    daemon.signal("TERM");
    assert!(daemon.wait().await.success());
    assert!(daemon.logs().contains("pending fresh jobs queued for the next start"), "{}", daemon.logs());
    drop(daemon);

    // Earlier versions find pending jobs through the queue index alone
    // (keys `Q` target `\0` ...): every job is there.
    let db = sled::open(Config::load(&config_path).unwrap().journal.path).unwrap();
    let index = db.open_tree("journal").unwrap().scan_prefix(b"Qt\0").count();
    assert_eq!(index, N);
    assert!(target.received().is_empty());
}
