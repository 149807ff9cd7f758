//! End-to-end load bench over HTTPS (rustls, HTTP/1.1 keep-alive): signed
//! 1 KiB webhooks (realistic detections, each with its own random webhook
//! and event-group ids: see `Detections`) from C connections into, in the
//! same run,
//! (a) a bare hyper + rustls server that reads the body and answers 200,
//! (b) the same plus the HMAC verify — the physical baselines — and
//! (c) the gateway with durable acknowledgements, fanning out to K local
//!     counting targets (plain HTTP, in this process), for each K asked for.
//! (d) is the physical limit of delivering: the gateway's pooled client
//! POSTing signed 1 KiB bodies to as many counting targets, nothing else.
//! Then: ingest latency at half the gateway's measured rate (open loop,
//! latency counted from the scheduled send time), and a replay of every
//! journaled delivery to every target (drain rate). Each phase also reports
//! the CPU it used (cores busy, µs per request or delivery): on a shared
//! machine whose cores are often half taken by others, that is the steadier
//! figure.
//!
//! Run: `cargo bench --bench load`. Env: LOAD_SECS=5, LOAD_CONCURRENCY=32,
//! LOAD_TARGETS=1,4 (a list), LOAD_SWEEP=1 to also measure throughput
//! against concurrency (1..64) for (b) and the gateway with one target,
//! written to target/load-sweep.csv for `python3 benches/plot_load.py`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hookrelay::config::Config;
use hookrelay::signature::{self, SignedHeaders, Verifier};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[path = "common/realistic.rs"]
mod realistic;
use realistic::{Detection, Rng};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TARGET_SECRET: &str = "whsec_dGFyZ2V0LXNlY3JldC0x";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// CPU time this process has used so far (user + system, all threads), from
/// /proc/self/stat: what a phase costs, however busy the shared machine is.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised name: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// "1.85 cores busy, 212 µs of CPU per delivery" for `work` items done in `wall`.
fn cpu_cost(cpu: Duration, wall: Duration, work: u64, item: &str) -> String {
    format!(
        "{:.2} cores busy, {:.0} µs of CPU per {item}",
        cpu.as_secs_f64() / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / work.max(1) as f64
    )
}

/// A few realistic detections per connection (see `realistic`); each
/// request sends one of them with a new event group and a random webhook id,
/// as a real source does: counting ids would flatter the journal's indexes.
struct Detections {
    rng: Rng,
    pool: Vec<Detection>,
    sent: usize,
}

impl Detections {
    const POOL: usize = 8;

    fn new(seed: u64) -> Self {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed + 1));
        let seconds = now_secs() as u64;
        let pool = (0..Self::POOL).map(|_| realistic::detection(&mut rng, seconds)).collect();
        Detections { rng, pool, sent: 0 }
    }

    /// (webhook id, body) of the next request.
    fn next(&mut self) -> (String, Bytes) {
        let detection = &self.pool[self.sent % Self::POOL];
        self.sent += 1;
        let mut body = detection.body.clone();
        self.rng.fill_hex(&mut body[detection.group_digits.clone()]);
        (format!("whevent_{}", self.rng.hex(24)), Bytes::from(body))
    }
}

/// A certificate for localhost in `dir`: (cert path, key path, client config).
fn make_tls(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, Arc<rustls::ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let client = hookrelay::tls::client_config(&[certified.cert.der().clone()]);
    (cert, key, Arc::new(client))
}

/// Baseline (a) or (b): TLS, read the body, verify when asked, answer 200.
async fn baseline_server(tls: Arc<rustls::ServerConfig>, verify: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let verifier =
        Arc::new(Verifier::new(signature::keys_for_secret(SECRET).unwrap(), Duration::from_secs(300)));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (verifier, acceptor) = (verifier.clone(), acceptor.clone());
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let verifier = verifier.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let ok = !verify || {
                            let get = |n| {
                                parts
                                    .headers
                                    .get(n)
                                    .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                            };
                            SignedHeaders::parse(
                                get("webhook-id"),
                                get("webhook-timestamp"),
                                get("webhook-signature"),
                            )
                            .and_then(|h| verifier.verify(&h, &body, now_secs()))
                            .is_ok()
                        };
                        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *response.status_mut() =
                            if ok { hyper::StatusCode::OK } else { hyper::StatusCode::UNAUTHORIZED };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A target that counts what it receives and answers 200.
async fn counting_target(count: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let count = count.clone();
                    async move {
                        let _ = request.into_body().collect().await;
                        count.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct LoadResult {
    requests: u64,
    non_2xx: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// How requests are paced.
#[derive(Clone, Copy)]
enum Pace {
    /// Back to back on each connection (throughput).
    ClosedLoop,
    /// This many requests per second in all, spread over the connections;
    /// latency counts from when each request was due, so a stall is not hidden.
    Rate(f64),
}

/// `concurrency` TLS keep-alive connections sending signed requests for `duration`.
async fn load(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    concurrency: u64,
    duration: Duration,
    pace: Pace,
) -> LoadResult {
    // Each run its own ids: a gateway that saw an earlier run's would
    // answer duplicates without journaling them.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let key = signature::SigningKey::from_bytes(SECRET.as_bytes());
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            let (key, tls) = (key.clone(), tls.clone());
            let mut detections = Detections::new(run << 20 | c);
            tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                let interval = match pace {
                    Pace::ClosedLoop => None,
                    Pace::Rate(total) => Some(Duration::from_secs_f64(concurrency as f64 / total)),
                };
                // Spread the connections' schedules over one interval.
                let mut due = Instant::now()
                    + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / concurrency as f64));
                let (mut latencies, mut non_2xx) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    if interval.is_some() {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let (id, body) = detections.next();
                    let ts = now_secs().to_string();
                    let sig = signature::sign(&key, &id, &ts, &body);
                    let request = Request::post("/hooks/parallel")
                        .header("host", "localhost")
                        .header("content-type", "application/json")
                        .header("webhook-id", id)
                        .header("webhook-timestamp", ts)
                        .header("webhook-signature", sig)
                        .body(Full::new(body))
                        .unwrap();
                    let sent = if interval.is_some() { due } else { Instant::now() };
                    let response = sender.send_request(request).await.unwrap();
                    let ok = response.status().is_success();
                    let _ = response.into_body().collect().await;
                    latencies.push(sent.elapsed().as_micros() as u64);
                    non_2xx += u64::from(!ok);
                    if let Some(interval) = interval {
                        due += interval;
                    }
                }
                (latencies, non_2xx)
            })
        })
        .collect();
    let mut result =
        LoadResult { requests: 0, non_2xx: 0, elapsed: Duration::ZERO, latencies_us: Vec::new() };
    for task in tasks {
        let (latencies, non_2xx) = task.await.unwrap();
        result.requests += latencies.len() as u64;
        result.non_2xx += non_2xx;
        result.latencies_us.extend(latencies);
    }
    result.elapsed = started.elapsed();
    result.latencies_us.sort_unstable();
    result
}

fn report(name: &str, r: &LoadResult) {
    println!(
        "{name:<40} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} requests, {} non-2xx)",
        r.rate(),
        r.percentile(0.50),
        r.percentile(0.99),
        r.requests,
        r.non_2xx
    );
}

/// Baseline (d), the physical limit of delivering: `targets` counting targets
/// (the gateway's kind, in this process) each sent re-signed 1 KiB POSTs by
/// `per_target` tasks on the gateway's own pooled client, back to back for
/// `duration`. Deliveries per second and the CPU they cost.
async fn bare_deliveries(targets: u64, per_target: u64, duration: Duration) -> (f64, String) {
    let count = Arc::new(AtomicU64::new(0));
    let mut urls = Vec::new();
    for _ in 0..targets {
        urls.push(format!("http://{}/", counting_target(count.clone()).await).parse::<hyper::Uri>().unwrap());
    }
    let key = signature::signing_key_for_secret(TARGET_SECRET).unwrap();
    let body = Bytes::from(realistic::detection(&mut Rng(1), now_secs() as u64).body);
    let (started, cpu_started) = (Instant::now(), cpu_time());
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for url in urls {
        let client = hookrelay::delivery::outbound::http_client(&[], per_target as usize);
        for c in 0..per_target {
            let (client, url, key, body) = (client.clone(), url.clone(), key.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let id = format!("evt_d_{c}_{n}");
                    let ts = now_secs().to_string();
                    let request = Request::post(url.clone())
                        .header("content-type", "application/json")
                        .header("webhook-signature", signature::sign(&key, &id, &ts, &body))
                        .header("webhook-id", id)
                        .header("webhook-timestamp", ts)
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let response = client.request(request).await.unwrap();
                    let _ = response.into_body().collect().await;
                    n += 1;
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (wall, cpu) = (started.elapsed(), cpu_time() - cpu_started);
    let done = count.load(Ordering::Relaxed);
    (done as f64 / wall.as_secs_f64(), cpu_cost(cpu, wall, done, "delivery"))
}

/// A gateway on HTTPS with `targets` counting targets, running until dropped.
struct RunningGateway {
    addr: SocketAddr,
    admin: SocketAddr,
    delivered: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), hookrelay::GatewayError>>>,
    _dir: tempfile::TempDir,
}

impl RunningGateway {
    async fn start(targets: u64, cert: &Path, key: &Path) -> Self {
        let delivered = Arc::new(AtomicU64::new(0));
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[journal]\npath = \"{}/journal\"\n\
             [sources.parallel]\nsecrets = [\"{SECRET}\"]\n",
            dir.path().display()
        );
        for t in 0..targets {
            let addr = counting_target(delivered.clone()).await;
            config.push_str(&format!(
                "[targets.t{t}]\nsource = \"parallel\"\nurl = \"http://{addr}/\"\nsecret = \"{TARGET_SECRET}\"\nconcurrency = 16\n"
            ));
        }
        let path = dir.path().join("hookrelay.toml");
        std::fs::write(&path, config).unwrap();
        let gateway = hookrelay::Gateway::bind(Config::load(&path).unwrap()).await.unwrap();
        let (addr, admin) = (gateway.inbound_addr(), gateway.admin_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        RunningGateway { addr, admin, delivered, stop: Some(stop), task: Some(task), _dir: dir }
    }

    /// Waits until `expected` deliveries arrived; the time since `since`.
    async fn drained(&self, expected: u64, since: Instant) -> Duration {
        while self.delivered.load(Ordering::Relaxed) < expected && since.elapsed() < Duration::from_secs(600)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        since.elapsed()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// One admin API POST; the JSON answer.
async fn admin_post(addr: SocketAddr, path: &str, body: &'static str) -> serde_json::Value {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

fn main() {
    // SAFETY: the first thing the bench does; no other thread exists yet.
    unsafe { allocator::return_freed_memory_promptly() };
    let secs = env("LOAD_SECS", 5);
    let concurrency = env("LOAD_CONCURRENCY", 32);
    let target_counts: Vec<u64> = std::env::var("LOAD_TARGETS")
        .unwrap_or_else(|_| "1,4".into())
        .split(',')
        .filter_map(|k| k.trim().parse().ok())
        .collect();
    let sweep = env("LOAD_SWEEP", 0) == 1;
    let duration = Duration::from_secs(secs);
    hookrelay::tls::install_default_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!(
            "load: HTTPS (rustls, HTTP/1.1 keep-alive), {secs}s per run, {concurrency} connections, 1 KiB bodies; \
             load generator, servers and targets share the 2 cores"
        );
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, client) = make_tls(dir.path());
        let server_tls = hookrelay::tls::ServerTls::load(&cert, &key).unwrap().config;

        // LOAD_BASELINES=0 skips them (for profiling the gateway alone).
        let baselines = env("LOAD_BASELINES", 1) == 1;
        let bare = baseline_server(server_tls.clone(), false).await;
        let verifying = baseline_server(server_tls.clone(), true).await;
        let (a, b) = if baselines {
            let mut rates = Vec::new();
            for (server, name) in
                [(bare, "(a) baseline: hyper + rustls"), (verifying, "(b) baseline: hyper + rustls + HMAC")]
            {
                let cpu_started = cpu_time();
                let r = load(server, client.clone(), concurrency, duration, Pace::ClosedLoop).await;
                let cpu = cpu_time() - cpu_started;
                report(name, &r);
                println!("    {}", cpu_cost(cpu, r.elapsed, r.requests, "request (load generator included)"));
                rates.push(r.rate());
            }
            let max_targets = target_counts.iter().copied().max().unwrap_or(0);
            if max_targets > 0 {
                let (rate, cost) = bare_deliveries(max_targets, 16, duration).await;
                println!(
                    "{:<40} {rate:>8.0} deliveries/s  ({cost})",
                    format!("(d) baseline: POSTs to {max_targets} target(s)")
                );
            }
            (rates[0], rates[1])
        } else {
            (f64::NAN, f64::NAN)
        };

        for &targets in &target_counts {
            let gateway = RunningGateway::start(targets, &cert, &key).await;
            let (started, cpu_started) = (Instant::now(), cpu_time());
            let ingest = load(gateway.addr, client.clone(), concurrency, duration, Pace::ClosedLoop).await;
            report(&format!("(c) gateway, {targets} target(s): durable ingest"), &ingest);
            let expected = ingest.requests * targets;
            let drain = gateway.drained(expected, started).await;
            let done = gateway.delivered.load(Ordering::Relaxed);
            let cpu = cpu_time() - cpu_started;
            println!(
                "{:<40} {:>8.0} deliveries/s  ({done} of {expected} re-signed deliveries in {:.2}s from the first request)",
                format!("(c) gateway, {targets} target(s): delivery"),
                done as f64 / drain.as_secs_f64(),
                drain.as_secs_f64()
            );
            println!(
                "    ratios: ingest / (b) {:.2}, ingest / (a) {:.2}, (b) / (a) {:.2}",
                ingest.rate() / b,
                ingest.rate() / a,
                b / a
            );
            println!(
                "    ingest and delivery: {}",
                cpu_cost(cpu, drain, ingest.requests, "request (load generator included)")
            );

            // Latency at half the rate just measured, once the backlog is gone.
            let half = ingest.rate() / 2.0;
            let before = gateway.delivered.load(Ordering::Relaxed);
            let paced = load(gateway.addr, client.clone(), concurrency, duration, Pace::Rate(half)).await;
            report(&format!("(c) gateway, {targets} target(s): at {half:.0} req/s"), &paced);
            gateway.drained(before + paced.requests * targets, Instant::now()).await;

            if targets > 0 {
                // Replay everything journaled to every target, with no live traffic:
                // the delivery engine's own rate across K targets.
                let before = gateway.delivered.load(Ordering::Relaxed);
                let asked = Instant::now();
                let cpu_before = cpu_time();
                let answer =
                    admin_post(gateway.admin, "/v1/replays", r#"{"since":"0","status":"delivered"}"#).await;
                let created = asked.elapsed();
                let matched = answer["matched"].as_u64().unwrap_or(0);
                // Lanes start on each batch of the replay as it is written.
                let during = gateway.delivered.load(Ordering::Relaxed) - before;
                let drain_started = Instant::now();
                let cpu_drain = cpu_time();
                let drained = gateway.drained(before + matched, asked).await;
                let (cpu_end, drain_wall) = (cpu_time(), drain_started.elapsed());
                let replayed = gateway.delivered.load(Ordering::Relaxed) - before;
                println!(
                    "{:<40} {:>8.0} deliveries/s  ({replayed} of {matched} replayed to {targets} target(s) in {:.2}s from the request, which took {:.2}s)",
                    format!("(c) gateway, {targets} target(s): replay"),
                    replayed as f64 / drained.as_secs_f64(),
                    drained.as_secs_f64(),
                    created.as_secs_f64()
                );
                println!(
                    "    replay: while it was created ({during} delivered meanwhile) {}; after, {:.0} deliveries/s, {}",
                    cpu_cost(cpu_drain - cpu_before, created, matched, "pair"),
                    (replayed - during) as f64 / drain_wall.as_secs_f64(),
                    cpu_cost(cpu_end - cpu_drain, drain_wall, replayed - during, "delivery")
                );
            }
            gateway.stop().await;
        }

        if sweep {
            let mut csv = String::from("server,concurrency,requests_per_second,p50_ms,p99_ms\n");
            let short = Duration::from_secs(secs.min(3));
            for c in [1, 4, 16, 32, 64] {
                let r = load(verifying, client.clone(), c, short, Pace::ClosedLoop).await;
                report(&format!("sweep (b), {c} connections"), &r);
                csv.push_str(&format!("baseline (b),{c},{:.0},{:.3},{:.3}\n", r.rate(), r.percentile(0.5), r.percentile(0.99)));
                let gateway = RunningGateway::start(1, &cert, &key).await;
                let r = load(gateway.addr, client.clone(), c, short, Pace::ClosedLoop).await;
                report(&format!("sweep gateway 1 target, {c} connections"), &r);
                csv.push_str(&format!("gateway 1 target,{c},{:.0},{:.3},{:.3}\n", r.rate(), r.percentile(0.5), r.percentile(0.99)));
                gateway.drained(r.requests, Instant::now()).await;
                gateway.stop().await;
            }
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/load-sweep.csv");
            std::fs::write(&path, csv).unwrap();
            println!("wrote {}", path.display());
        }
    });
}

/// The binary's allocator and its tuning, so the figures are the daemon's.
#[path = "../src/allocator.rs"]
mod allocator;
