//! The real `hookrelay` binary as a child process with captured JSON logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use super::SECRET;

pub const BIN: &str = env!("CARGO_BIN_EXE_hookrelay");

/// A gateway child process whose JSON logs are captured.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        let mut command = Command::new(BIN);
        command.args(["--log-format", "json", "serve", "--config"]).arg(config);
        Daemon::spawn(command)
    }

    /// Runs `command` (which ends up running `hookrelay serve` with JSON
    /// logs) and waits for its "listening" line.
    pub fn spawn(mut command: Command) -> Daemon {
        let mut child = command
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "listening"
                {
                    let addr = |field: &str| event[field].as_str().unwrap().parse::<SocketAddr>().unwrap();
                    let _ = tx.send((addr("addr"), addr("admin_addr")));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (addr, admin_addr) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no 'listening' line; logs: {:?}", logs.lock().unwrap()));
        Daemon { child, addr, admin_addr, logs }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits (up to 30 s) for the process to exit, without blocking the
    /// test's runtime: its targets and fake APIs run on it.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the daemon did not exit");
    }

    /// [`Daemon::wait`] for a test with no runtime.
    pub fn wait_blocking(&mut self) -> std::process::ExitStatus {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(self.wait())
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `text`; returns that line.
    pub async fn wait_for_log(&self, text: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|line| line.contains(text)) {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {text:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("hookrelay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [journal]\npath = \"journal\"\n\
             [sources.parallel]\nsecrets = [\"{SECRET}\"]\n{extra}"
        ),
    )
    .unwrap();
    path
}
