//! A fake Parallel API on 127.0.0.1:0 for backfill and enrichment tests:
//! `GET /v1/monitors/{id}/events` (in pages of two, cursor "p1", "p2", …;
//! `event_group_id=` narrows to one group), `GET /v1/monitors/{id}` (the
//! monitor object, with its metadata; or under `/v1alpha/`) and `GET /v1/tasks/runs/{id}/result`,
//! after any scripted failures. Records every request's URI and `x-api-key`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub const API_KEY: &str = "par_test_key_9f8e7d6c5b4a";

#[derive(Clone)]
pub struct FakeParallel {
    pub addr: SocketAddr,
    monitor: String,
    events: Arc<Vec<serde_json::Value>>,
    results: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    /// When each request in `seen` arrived.
    seen_at: Arc<Mutex<Vec<std::time::Instant>>>,
    /// Scripted answers: status and `Retry-After` in seconds.
    failures: Arc<Mutex<VecDeque<(u16, u64)>>>,
    /// Event groups whose queries answer 500 while listed here.
    failing_groups: Arc<Mutex<Vec<String>>>,
    /// The monitor object's `metadata`; `None` answers 404 for the object,
    /// as an API that serves no monitors by id would.
    metadata: Arc<Mutex<Option<serde_json::Value>>>,
    /// While set, requests for the monitor object answer 500.
    failing_monitor: Arc<std::sync::atomic::AtomicBool>,
    /// The API version the monitor object is served under ("v1" at start).
    monitor_version: Arc<Mutex<&'static str>>,
}

impl FakeParallel {
    pub async fn start(monitor: &str, events: Vec<serde_json::Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeParallel {
            addr: listener.local_addr().unwrap(),
            monitor: monitor.to_owned(),
            events: Arc::new(events),
            results: Default::default(),
            seen: Default::default(),
            seen_at: Default::default(),
            failures: Default::default(),
            failing_groups: Default::default(),
            metadata: Arc::new(Mutex::new(Some(serde_json::Value::Null))),
            failing_monitor: Default::default(),
            monitor_version: Arc::new(Mutex::new("v1")),
        };
        let state = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer(&request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    /// Serves `result` at `/v1/tasks/runs/{run_id}/result`.
    pub fn task_result(&self, run_id: &str, result: serde_json::Value) {
        self.results.lock().unwrap().insert(run_id.to_owned(), result);
    }

    /// The next requests get these statuses (with `Retry-After: 0`).
    pub fn fail_next(&self, statuses: &[u16]) {
        self.fail_next_asking(statuses, 0);
    }

    /// The next requests get these statuses, with `Retry-After: {seconds}`.
    pub fn fail_next_asking(&self, statuses: &[u16], seconds: u64) {
        self.failures.lock().unwrap().extend(statuses.iter().map(|&status| (status, seconds)));
    }

    /// Queries for `group` answer 500 (with `Retry-After: 0`) until called
    /// again with `false`.
    pub fn fail_group(&self, group: &str, failing: bool) {
        let mut groups = self.failing_groups.lock().unwrap();
        groups.retain(|g| g != group);
        if failing {
            groups.push(group.to_owned());
        }
    }

    /// The monitor object's `metadata` (`null` at start); `None`: no monitor
    /// object is served at all.
    pub fn set_metadata(&self, metadata: Option<serde_json::Value>) {
        *self.metadata.lock().unwrap() = metadata;
    }

    /// Serves the monitor object under `/{version}/monitors/{id}` only.
    pub fn serve_monitor_at(&self, version: &'static str) {
        *self.monitor_version.lock().unwrap() = version;
    }

    /// Requests for the monitor object answer 500 (with `Retry-After: 0`)
    /// while `failing`.
    pub fn fail_monitor(&self, failing: bool) {
        self.failing_monitor.store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every request so far: (URI, x-api-key).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// When each request so far arrived.
    pub fn request_times(&self) -> Vec<std::time::Instant> {
        self.seen_at.lock().unwrap().clone()
    }

    fn answer(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let key = request.headers().get("x-api-key").map_or("", |v| v.to_str().unwrap()).to_owned();
        self.seen.lock().unwrap().push((request.uri().to_string(), key.clone()));
        self.seen_at.lock().unwrap().push(std::time::Instant::now());
        let reply = |status: u16, body: serde_json::Value| {
            let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            response
        };
        let error = |status, message: &str| {
            reply(
                status,
                serde_json::json!({"type": "error", "error": {"ref_id": "ref_1", "message": message}}),
            )
        };
        if key != API_KEY {
            return error(401, "invalid API key");
        }
        let query: HashMap<&str, &str> =
            request.uri().query().unwrap_or("").split('&').filter_map(|pair| pair.split_once('=')).collect();
        let failing_group = query
            .get("event_group_id")
            .is_some_and(|g| self.failing_groups.lock().unwrap().iter().any(|f| f == g));
        let monitor_path = format!("/{}/monitors/{}", self.monitor_version.lock().unwrap(), self.monitor);
        let failing_monitor = self.failing_monitor.load(std::sync::atomic::Ordering::SeqCst)
            && request.uri().path() == monitor_path;
        let scripted = self.failures.lock().unwrap().pop_front();
        if let Some((status, retry_after)) =
            scripted.or((failing_group || failing_monitor).then_some((500, 0)))
        {
            // Echoes the key, as a careless proxy might: it must never be passed on.
            let mut response = error(status, &format!("try again (key {key})"));
            response.headers_mut().insert("retry-after", retry_after.to_string().parse().unwrap());
            return response;
        }
        let path = request.uri().path();
        if let Some(run_id) =
            path.strip_prefix("/v1/tasks/runs/").and_then(|rest| rest.strip_suffix("/result"))
        {
            return match self.results.lock().unwrap().get(run_id) {
                Some(result) => reply(200, result.clone()),
                None => error(404, "run not found"),
            };
        }
        if path == monitor_path {
            return match self.metadata.lock().unwrap().clone() {
                Some(metadata) => reply(
                    200,
                    serde_json::json!({
                        "monitor_id": self.monitor, "query": "filings", "status": "active",
                        "cadence": "daily", "metadata": metadata, "created_at": "2026-01-01T00:00:00Z",
                    }),
                ),
                None => error(404, "not found"),
            };
        }
        if path != format!("/v1/monitors/{}/events", self.monitor) {
            return error(404, "monitor not found");
        }
        let events: Vec<&serde_json::Value> = match query.get("event_group_id") {
            Some(group) => self.events.iter().filter(|e| e["event_group_id"] == *group).collect(),
            None => self.events.iter().collect(),
        };
        let page: usize =
            query.get("cursor").and_then(|c| c.strip_prefix('p')).map_or(0, |n| n.parse().unwrap());
        let chunk: Vec<_> = events.iter().skip(page * 2).take(2).cloned().collect();
        let mut body = serde_json::json!({ "events": chunk });
        if (page + 1) * 2 < events.len() {
            body["next_cursor"] = format!("p{}", page + 1).into();
        }
        reply(200, body)
    }
}
