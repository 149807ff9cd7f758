//! hookrelay as a systemd service: the unit files (checked by
//! `systemd-analyze`), the sd_notify protocol against a datagram socket the
//! test owns, SIGHUP reload, and socket activation through systemd's own
//! `systemd-socket-activate`. `scripts/test` installs the systemd package.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::daemon::{BIN, Daemon, write_config};
use crate::common::target::{Answer, TestTarget};
use crate::common::*;

const SYSTEMD_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";
const ROTATED_TARGET_SECRET: &str = "whsec_bmV3LXRhcmdldC1zZWNyZXQtMg==";

fn tool(name: &str) -> Command {
    let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().unwrap();
    assert!(found.status.success(), "{name} is missing: install the systemd package (scripts/test does)");
    Command::new(name)
}

#[test]
fn the_unit_files_verify_and_score_well_with_systemd_analyze() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's binary exists: point it at this build.
    let unit = std::fs::read_to_string(Path::new(SYSTEMD_DIR).join("hookrelay.service")).unwrap();
    // A config error must reach RestartPreventExitStatus=64, which systemd
    // applies to the main process only: no check-config in ExecStartPre=.
    assert!(!unit.contains("\nExecStartPre="), "a config error in ExecStartPre= is restarted");
    for directive in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartPreventExitStatus=64",
        "#LoadCredential=tls-key:",
        "DynamicUser=yes",
        "StateDirectory=hookrelay",
        "ConfigurationDirectory=hookrelay",
        "LoadCredential=",
        "WatchdogSec=",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "CapabilityBoundingSet=\n",
        "UMask=0077",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    std::fs::write(dir.path().join("hookrelay.service"), unit.replace("/usr/local/bin/hookrelay", BIN))
        .unwrap();
    std::fs::copy(Path::new(SYSTEMD_DIR).join("hookrelay.socket"), dir.path().join("hookrelay.socket"))
        .unwrap();

    let verify = tool("systemd-analyze")
        .arg("verify")
        .args(["hookrelay.service", "hookrelay.socket"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{complaints}");
    assert!(!complaints.contains("hookrelay"), "systemd-analyze verify complained: {complaints}");

    let security = tool("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", "./hookrelay.service"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|line| line.split("Overall exposure level for hookrelay.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in: {report}"));
    // The README quotes the score; 0 is best, 10 worst.
    assert!(exposure <= 1.5, "exposure {exposure} is worse than the 1.1 the README quotes");
}

#[test]
fn the_example_production_config_loads_with_credentials_and_a_state_directory() {
    struct SystemdEnv(std::path::PathBuf);
    impl hookrelay::config::Environment for SystemdEnv {
        fn var(&self, name: &str) -> Option<String> {
            match name {
                "CREDENTIALS_DIRECTORY" => Some(self.0.display().to_string()),
                "STATE_DIRECTORY" => Some("/var/lib/hookrelay".into()),
                _ => None,
            }
        }
    }
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(credentials.path().join("parallel-webhook-secret"), "whsec_cGFyYWxsZWwtc2VjcmV0\n")
        .unwrap();
    std::fs::write(credentials.path().join("admin-token"), "s3cret-admin-token\n").unwrap();
    let path = Path::new(SYSTEMD_DIR).join("hookrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = hookrelay::config::Config::parse(&path, &text, &SystemdEnv(credentials.path().to_owned()))
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(config.journal.path, Path::new("/var/lib/hookrelay/journal"));
    assert_eq!(config.admin.token.as_ref().map(|t| t.expose().to_owned()), Some("s3cret-admin-token".into()));
    // The socket unit's first ListenStream is the configured inbound address.
    let socket = std::fs::read_to_string(Path::new(SYSTEMD_DIR).join("hookrelay.socket")).unwrap();
    assert!(socket.contains(&format!("ListenStream={}\n", config.server.listen)), "{socket}");

    // Its commented TLS line, uncommented, reads the pair the unit's
    // (commented) LoadCredential=tls-cert/tls-key lines copy in.
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(credentials.path().join("tls-cert"), certified.cert.pem()).unwrap();
    std::fs::write(credentials.path().join("tls-key"), certified.signing_key.serialize_pem()).unwrap();
    let tls_line = "tls = { cert = \"credential:tls-cert\", key = \"credential:tls-key\" }";
    let with_tls = text.replace(&format!("# {tls_line}"), tls_line);
    assert_ne!(with_tls, text, "the shipped config has the TLS line");
    let config =
        hookrelay::config::Config::parse(&path, &with_tls, &SystemdEnv(credentials.path().to_owned()))
            .unwrap_or_else(|err| panic!("{err}"));
    assert!(config.server.tls.is_some());
}

/// Reads sd_notify datagrams until one satisfies `pred`; returns it.
fn expect_message(socket: &UnixDatagram, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let Ok(n) = socket.recv(&mut buf) else { continue };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if pred(&message) {
            return message;
        }
        seen.push(message);
    }
    panic!("no {what} message; got {seen:?}");
}

#[test]
fn tells_systemd_ready_status_watchdog_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let mut daemon = Daemon::spawn(command);

    let ready = expect_message(&socket, "READY=1", |m| m.contains("READY=1"));
    assert!(ready.contains("STATUS=0 deliveries accepted"), "{ready}");
    // Pings at half WATCHDOG_USEC: several within a second.
    let started = Instant::now();
    for _ in 0..3 {
        expect_message(&socket, "WATCHDOG=1", |m| m == "WATCHDOG=1");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "pings too slow: {:?}", started.elapsed());

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reply = runtime.block_on(send_plain(
        daemon.addr,
        signed_request("parallel", SECRET, "whevent_notify", now(), MONITOR_EVENT.as_bytes()),
    ));
    assert_eq!(reply.status, 200);
    expect_message(&socket, "STATUS with the delivery", |m| m.contains("STATUS=1 deliveries accepted"));

    daemon.signal("HUP");
    expect_message(&socket, "RELOADING=1", |m| m.starts_with("RELOADING=1"));
    expect_message(&socket, "READY=1 after the reload", |m| m.starts_with("READY=1"));

    daemon.signal("TERM");
    expect_message(&socket, "STOPPING=1", |m| m.starts_with("STOPPING=1"));
    assert!(daemon.wait_blocking().success());
}

fn target_table(url: &str, secret: &str, extra: &str) -> String {
    format!(
        "[targets.consumer]\nsource = \"parallel\"\nurl = \"{url}\"\nsecret = {secret}\ntimeout = \"10s\"\n\
         retry = {{ initial = \"100ms\", max_delay = \"1s\", max_attempts = 10, max_age = \"1h\" }}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_target_url_and_secrets_keeps_in_flight_work_and_survives_a_bad_config() {
    // The old consumer answers its first request slowly: that attempt is in
    // flight across the reload.
    let old = TestTarget::start(Some(TARGET_SECRET), vec![Answer::Slow(Duration::from_secs(3), 200)]).await;
    let new = TestTarget::start(Some(ROTATED_TARGET_SECRET), vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &target_table(&old.url(), &format!("\"{TARGET_SECRET}\""), ""));
    let daemon = tokio::task::spawn_blocking({
        let config = config.clone();
        move || Daemon::start(&config)
    })
    .await
    .unwrap();
    let first = send_plain(
        daemon.addr,
        signed_request("parallel", SECRET, "whevent_1", now(), MONITOR_EVENT.as_bytes()),
    )
    .await;
    assert_eq!(first.status, 200);
    old.wait_for(1, Duration::from_secs(20)).await;

    // Rotate: new URL, a new secret first and the old one beside it; a
    // startup-only key changes too.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &target_table(&old.url(), &format!("\"{TARGET_SECRET}\""), ""),
        &target_table(&new.url(), &format!("[\"{ROTATED_TARGET_SECRET}\", \"{TARGET_SECRET}\"]"), ""),
    );
    std::fs::write(&config, text.replace("shutdown_grace = \"5s\"", "shutdown_grace = \"6s\"")).unwrap();
    daemon.signal("HUP");
    let reloaded = daemon.wait_for_log("configuration reloaded", Duration::from_secs(20)).await;
    assert!(reloaded.contains("server.shutdown_grace"), "names what needs a restart: {reloaded}");
    let first_id = first.json()["id"].as_str().unwrap().to_owned();
    let during = admin_get(daemon.admin_addr, &format!("/v1/deliveries/{first_id}")).await.json();
    assert_eq!(
        (during["jobs"][0]["state"].as_str(), during["jobs"][0]["attempts"].as_u64()),
        (Some("pending"), Some(0)),
        "the first attempt was still in flight across the reload"
    );

    let second = send_plain(
        daemon.addr,
        signed_request("parallel", SECRET, "whevent_2", now(), MONITOR_EVENT.as_bytes()),
    )
    .await;
    assert_eq!(second.status, 200);
    let received = new.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(received[0].header("webhook-id"), "whevent_2");
    assert_eq!(received[0].verified, Some(Ok(())), "signed with the rotated secret");
    assert_eq!(
        received[0].header("webhook-signature").matches("v1,").count(),
        2,
        "one entry per active secret"
    );

    // The attempt in flight finished on the old settings and was recorded once.
    let admin = daemon.admin_addr;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = admin_get(admin, &format!("/v1/deliveries/{first_id}")).await.json();
        if shown["jobs"][0]["state"] == "delivered" {
            assert_eq!(shown["jobs"][0]["attempts"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "the in-flight attempt was lost: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(old.received().len(), 1);
    assert!(new.received().iter().all(|r| r.header("webhook-id") != "whevent_1"));

    // A broken config is refused; the gateway keeps serving on the last good one.
    std::fs::write(&config, "[server\nlisten = ").unwrap();
    daemon.signal("HUP");
    let failed = daemon.wait_for_log("configuration reload failed", Duration::from_secs(20)).await;
    assert!(failed.contains("hookrelay.toml"), "the error names the file: {failed}");
    let third = send_plain(
        daemon.addr,
        signed_request("parallel", SECRET, "whevent_3", now(), MONITOR_EVENT.as_bytes()),
    )
    .await;
    assert_eq!(third.status, 200);
    let received = new.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(received[1].header("webhook-id"), "whevent_3");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_the_socket_systemd_passes() {
    let dir = tempfile::tempdir().unwrap();
    // The configured address is never bound: the passed socket wins.
    let config = write_config(dir.path(), "");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut command = tool("systemd-socket-activate");
    command
        // It passes no environment on unless told to.
        .args([
            "--listen",
            &addr.to_string(),
            "--setenv=RUST_LOG=debug",
            BIN,
            "--log-format",
            "json",
            "serve",
            "--config",
        ])
        .arg(&config);
    // systemd-socket-activate starts the service at the first connection.
    let first = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "nothing listens on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        send_plain(addr, signed_request("parallel", SECRET, "whevent_fd3", now(), MONITOR_EVENT.as_bytes()))
            .await
    });
    let daemon = tokio::task::spawn_blocking(move || Daemon::spawn(command)).await.unwrap();
    assert_eq!(daemon.addr, addr, "the gateway reports the passed socket");
    let reply = first.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(daemon.logs().contains("passed by systemd"));
    drop(daemon);
}

#[test]
fn refuses_a_public_admin_socket_from_systemd_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    // Valid on its own: admin.listen is loopback, so no token is required...
    let config = write_config(dir.path(), "");
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let inbound = format!("127.0.0.1:{}", free());
    // ...but systemd hands over an admin socket on every interface.
    let admin = format!("0.0.0.0:{}", free());
    let child = tool("systemd-socket-activate")
        .args(["--listen", &inbound, "--listen", &admin, BIN, "serve", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The service starts at the first connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&inbound).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {inbound}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // It must exit by itself; if it kept serving, the test fails instead of hanging.
    let (done, exited) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let out = match exited.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the gateway kept serving a public admin socket without a token");
        }
    };
    // A config error, like the ones check-config finds: EX_USAGE (64).
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin.token: required"), "{stderr}");
}
