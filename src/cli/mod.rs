//! The `hookrelay` command line. `main.rs` calls [`main`]; every command
//! returns its exit code: 0 ok, 64 usage or config error, 69 daemon
//! unreachable, 1 any other failure.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ProcessEnv, SecretRef, Signing};
use crate::logging::{self, LogFormat};
use crate::signature;
use crate::{Gateway, GatewayError, tls};

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;

mod operator;

const DEFAULT_CONFIG: &str = "config/hookrelay.toml";

#[derive(Parser, Debug)]
#[command(name = "hookrelay", version, about = "Webhook relay and replay gateway for Parallel webhooks")]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text", env = "HOOKRELAY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate a config file and print a summary (exit 0, or 64 with the error).
    CheckConfig(ConfigArg),
    /// Print a new random `whsec_` secret.
    GenSecret,
    /// Print the three Standard Webhooks headers for a body, e.g. for curl -H @file.
    Sign(SignArgs),
    /// Post a realistic signed Parallel sample event to the gateway.
    SendTest(SendTestArgs),
    /// A consumer that verifies and prints every webhook it receives.
    Tap(TapArgs),
    /// List, pause or resume targets through the admin API.
    Targets(operator::TargetsArgs),
    /// List, show or purge journaled deliveries through the admin API.
    Deliveries(operator::DeliveriesArgs),
    /// Send journaled deliveries again (after an outage, or to backfill a
    /// new target) through the admin API; shows progress until done.
    Replay(operator::ReplayArgs),
    /// Inject a Parallel monitor's detections that never arrived (the
    /// gateway was down longer than Parallel retries), through the admin API.
    Backfill(operator::BackfillArgs),
}

#[derive(Args, Debug)]
struct SendTestArgs {
    /// Event type: monitor.event.detected, monitor.execution.completed,
    /// monitor.execution.failed or task_run.status.
    #[arg(long = "type", default_value = "monitor.event.detected")]
    event_type: String,
    /// Config to take the source's address and secret from.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The source to post to.
    #[arg(long, default_value = "parallel")]
    source: String,
    /// Post here instead of the config's listen address.
    #[arg(long)]
    url: Option<String>,
    /// Sign with this secret (literal, env:, file:) instead of the source's
    /// first secret; the config is then not read.
    #[arg(long)]
    secret: Option<String>,
}

#[derive(Args, Debug)]
struct TapArgs {
    /// Address to listen on, e.g. 127.0.0.1:9001.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The target's secret (literal, env:, file:), to verify signatures.
    #[arg(long)]
    secret: String,
}

#[derive(Args, Debug)]
struct ConfigArg {
    /// Config file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Args, Debug)]
struct SignArgs {
    /// The secret: a literal, env:NAME, file:PATH or credential:NAME.
    #[arg(long)]
    secret: String,
    /// The body to sign, exactly as it will be sent.
    #[arg(long, conflicts_with = "body_file", required_unless_present = "body_file")]
    body: Option<String>,
    /// Read the body from a file ("-" for stdin).
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// webhook-id (default: a random msg_ id).
    #[arg(long)]
    id: Option<String>,
    /// webhook-timestamp in Unix seconds (default: now).
    #[arg(long)]
    timestamp: Option<i64>,
    /// Key the HMAC with the secret's raw bytes (Parallel's documented way)
    /// instead of the base64-decoded part of a whsec_ secret.
    #[arg(long)]
    raw_key: bool,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    ExitCode::from(run(cli))
}

pub fn run(cli: Cli) -> u8 {
    logging::init(cli.log_format);
    tls::install_default_provider();
    match cli.command {
        Command::Serve(args) => serve(&args.config),
        Command::CheckConfig(args) => check_config(&args.config),
        Command::GenSecret => {
            println!("{}", generate_secret());
            EXIT_OK
        }
        Command::Sign(args) => sign(args),
        Command::SendTest(args) => send_test(args),
        Command::Tap(args) => tap(args),
        Command::Targets(args) => operator::targets(args),
        Command::Deliveries(args) => operator::deliveries(args),
        Command::Replay(args) => operator::replay(args),
        Command::Backfill(args) => operator::backfill(args),
    }
}

fn load(path: &Path) -> Result<Config, u8> {
    Config::load(path).map_err(|err| {
        eprintln!("hookrelay: {err}");
        EXIT_USAGE
    })
}

fn serve(path: &Path) -> u8 {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Before any other thread exists: taking the sockets unsets LISTEN_FDS.
    let (inbound, admin) = match crate::systemd::inherited_listeners() {
        Ok(listeners) => listeners,
        Err(err) => {
            tracing::error!(error = %err, "cannot use the sockets passed by systemd");
            eprintln!("hookrelay: cannot use the sockets passed by systemd (LISTEN_FDS): {err}");
            return EXIT_FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hookrelay: cannot start the runtime: {err}");
            return EXIT_FAILURE;
        }
    };
    runtime.block_on(async {
        let (inbound, admin) = match adopt_listeners(&config, inbound, admin) {
            Ok(listeners) => listeners,
            Err(err) => {
                eprintln!("hookrelay: cannot use the sockets passed by systemd (LISTEN_FDS): {err}");
                return EXIT_FAILURE;
            }
        };
        // Installed before READY=1 can go out: SIGHUP's default is to terminate.
        let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(err) => {
                eprintln!("hookrelay: cannot handle SIGHUP: {err}");
                return EXIT_FAILURE;
            }
        };
        // SIGXFSZ (a file outgrew RLIMIT_FSIZE, e.g. systemd's LimitFSIZE=)
        // would kill the process; handled, the write fails with EFBIG instead
        // and the journal answers 503 until it can write again.
        let _file_size_limit =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ)) {
                Ok(signals) => signals,
                Err(err) => {
                    eprintln!("hookrelay: cannot handle SIGXFSZ: {err}");
                    return EXIT_FAILURE;
                }
            };
        // Before the journal opens (seconds, after a long run): a stop asked
        // meanwhile is kept, and honoured as a clean one once it is up.
        let stop_signals = match StopSignals::install() {
            Ok(signals) => signals,
            Err(err) => {
                eprintln!("hookrelay: cannot handle SIGTERM and SIGINT: {err}");
                return EXIT_FAILURE;
            }
        };
        let gateway = match Gateway::with_listeners(config, inbound, admin).await {
            Ok(gateway) => gateway,
            Err(err) => {
                tracing::error!(error = %err, "cannot start");
                eprintln!("hookrelay: {err}");
                // A config error like the ones validation finds (the admin
                // socket systemd passed is where the config says it may not be).
                return if matches!(err, GatewayError::AdminWithoutToken(_)) {
                    EXIT_USAGE
                } else {
                    EXIT_FAILURE
                };
            }
        };
        tokio::spawn(reload_on_sighup(hangups, gateway.reload_handle()));
        match gateway.run(stop_signals.received()).await {
            Ok(()) => EXIT_OK,
            Err(err) => {
                tracing::error!(error = %err, "stopped with an error");
                EXIT_FAILURE
            }
        }
    })
}

/// "File size limit exceeded" (Linux, every architecture hookrelay builds for).
const SIGXFSZ: i32 = 25;

/// Listeners passed by systemd socket activation, as tokio listeners.
fn adopt_listeners(
    config: &Config,
    inbound: Option<std::net::TcpListener>,
    admin: Option<std::net::TcpListener>,
) -> std::io::Result<(Option<tokio::net::TcpListener>, Option<tokio::net::TcpListener>)> {
    let adopt = |listener: Option<std::net::TcpListener>, what: &str, configured: std::net::SocketAddr| {
        listener
            .map(|listener| {
                let addr = listener.local_addr()?;
                tracing::info!(%addr, %configured, "{what} listener passed by systemd; the configured address is not bound");
                tokio::net::TcpListener::from_std(listener)
            })
            .transpose()
    };
    Ok((adopt(inbound, "inbound", config.server.listen)?, adopt(admin, "admin", config.admin.listen)?))
}

/// Reloads the config on every SIGHUP (`systemctl reload`); the gateway
/// logs the outcome.
async fn reload_on_sighup(mut hangups: tokio::signal::unix::Signal, reload: crate::reload::ReloadHandle) {
    while hangups.recv().await.is_some() {
        tracing::info!(signal = "SIGHUP", "reloading the configuration");
        if reload.reload().await.is_err() && reload.0.is_closed() {
            return;
        }
    }
}

/// SIGTERM and SIGINT, handled from when they are installed: one that
/// arrives before anything waits for it is kept.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the first of them.
    async fn received(mut self) {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    StopSignals::install().expect("SIGTERM and SIGINT handlers install").received().await
}

fn check_config(path: &Path) -> u8 {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    print!("{}", summary(&config));
    EXIT_OK
}

/// A human summary of a valid config; never shows a secret.
fn summary(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let server = &config.server;
    let scheme = if server.tls.is_some() { "https" } else { "http" };
    let _ = writeln!(out, "{}: OK", config.file.display());
    let _ = writeln!(
        out,
        "inbound  {scheme}://{}/hooks/{{source}}  max_body={}B header_timeout={:?} body_timeout={:?}",
        server.listen, server.max_body, server.header_timeout, server.body_timeout
    );
    let token = if config.admin.token.is_some() { "token set" } else { "no token (loopback only)" };
    let _ = writeln!(out, "admin    {}  {token}", config.admin.listen);
    let journal = &config.journal;
    let _ = writeln!(
        out,
        "journal  {}  dedup_window={:?} retention={:?} cache={}B max_disk={}",
        journal.path.display(),
        journal.dedup_window,
        journal.retention,
        journal.cache,
        journal.max_disk.map_or_else(|| "none".to_owned(), |size| format!("{size}B"))
    );
    for source in config.sources.values() {
        let rate = source
            .rate_limit
            .map_or_else(|| "unlimited".to_owned(), |r| format!("{}/s burst {}", r.per_second, r.burst));
        let _ = writeln!(
            out,
            "source   {}  POST /hooks/{}  secrets={} tolerance={:?} rate={rate}",
            source.name, source.name, source.secret_count, source.tolerance
        );
    }
    for target in config.targets.values() {
        let signing = match target.signing {
            Signing::Resign => format!("resign with {} secret(s)", target.secrets.len()),
            Signing::Passthrough => "passthrough".to_owned(),
            Signing::None => "unsigned".to_owned(),
        };
        let events = if target.events.is_empty() { "*".to_owned() } else { target.events.join(",") };
        let _ = writeln!(
            out,
            "target   {}  {} -> {}  events={events} {signing}",
            target.name, target.source, target.url
        );
    }
    out
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes
}

/// `whsec_` and 32 random bytes in base64, the Standard Webhooks form.
pub fn generate_secret() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>()))
}

fn sign(args: SignArgs) -> u8 {
    match sign_headers(args) {
        Ok(headers) => {
            print!("{headers}");
            EXIT_OK
        }
        Err(message) => {
            eprintln!("hookrelay: {message}");
            EXIT_USAGE
        }
    }
}

fn sign_headers(args: SignArgs) -> Result<String, String> {
    let secret = SecretRef::from(args.secret)
        .resolve(Path::new("."), &ProcessEnv)
        .map_err(|err| format!("--secret: {err}"))?;
    let body = match (&args.body, &args.body_file) {
        (Some(body), _) => body.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).map_err(|err| format!("cannot read stdin: {err}"))?;
            body
        }
        (None, Some(path)) => std::fs::read(path)
            .map_err(|err| format!("--body-file: cannot read {}: {err}", path.display()))?,
        (None, None) => return Err("give --body or --body-file".into()),
    };
    let key = if args.raw_key {
        if secret.expose().is_empty() {
            return Err("--secret: secret is empty".into());
        }
        signature::SigningKey::from_bytes(secret.expose().as_bytes())
    } else {
        signature::signing_key_for_secret(secret.expose()).map_err(|err| format!("--secret: {err}"))?
    };
    let id = args.id.unwrap_or_else(|| {
        let bytes = random_bytes::<12>();
        format!("msg_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    });
    let timestamp = args
        .timestamp
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64))
        .to_string();
    let signature = signature::sign(&key, &id, &timestamp, &body);
    Ok(format!(
        "{}: {id}\n{}: {timestamp}\n{}: {signature}\n",
        signature::HEADER_ID,
        signature::HEADER_TIMESTAMP,
        signature::HEADER_SIGNATURE
    ))
}

/// How long a command waits for an answer.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends one request from the command line and reads the answer; exit 69
/// (after saying why) when `what` cannot be reached or does not answer
/// within `timeout`.
fn http_call(
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
    what: &str,
    timeout: std::time::Duration,
) -> Result<(hyper::StatusCode, bytes::Bytes), u8> {
    runtime()?.block_on(async {
        use http_body_util::BodyExt;
        let client = crate::delivery::outbound::http_client(&[], 1);
        let response = match tokio::time::timeout(timeout, client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                eprintln!("hookrelay: cannot reach {what}: {err}");
                return Err(EXIT_UNAVAILABLE);
            }
            Err(_) => {
                eprintln!("hookrelay: no answer from {what} within {}s", timeout.as_secs());
                return Err(EXIT_UNAVAILABLE);
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Ok((status, body))
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|err| {
        eprintln!("hookrelay: cannot start the runtime: {err}");
        EXIT_FAILURE
    })
}

fn tap(args: TapArgs) -> u8 {
    let secret = match SecretRef::from(args.secret).resolve(Path::new("."), &ProcessEnv) {
        Ok(secret) => secret,
        Err(err) => {
            eprintln!("hookrelay: --secret: {err}");
            return EXIT_USAGE;
        }
    };
    let keys = match signature::keys_for_secret(secret.expose()) {
        Ok(keys) => keys,
        Err(err) => {
            eprintln!("hookrelay: --secret: {err}");
            return EXIT_USAGE;
        }
    };
    let verifier = signature::Verifier::new(keys, std::time::Duration::from_secs(300));
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("hookrelay: cannot listen on {}: {err}", args.listen);
                return EXIT_FAILURE;
            }
        };
        eprintln!(
            "hookrelay tap: listening on http://{}/ (Ctrl-C to stop)",
            listener.local_addr().map_or(args.listen, |a| a)
        );
        tokio::select! {
            result = crate::tap::run(listener, verifier) => {
                if let Err(err) = result {
                    eprintln!("hookrelay: tap stopped: {err}");
                    return EXIT_FAILURE;
                }
                EXIT_OK
            }
            () = shutdown_signal() => EXIT_OK,
        }
    })
}

fn send_test(args: SendTestArgs) -> u8 {
    let prepared = match prepare_send_test(&args) {
        Ok(prepared) => prepared,
        Err(message) => {
            eprintln!("hookrelay: {message}");
            return EXIT_USAGE;
        }
    };
    let (url, key) = prepared;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let suffix: String = random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect();
    let Some(body) = crate::samples::sample_event(&args.event_type, &suffix, &crate::time::rfc3339(now))
    else {
        eprintln!(
            "hookrelay: --type: unknown event type {:?} (one of: {})",
            args.event_type,
            crate::samples::EVENT_TYPES.join(", ")
        );
        return EXIT_USAGE;
    };
    let id = format!("whevent_{suffix}");
    let timestamp = now.to_string();
    let sig = signature::sign(&key, &id, &timestamp, body.as_bytes());
    let request = hyper::Request::post(&url)
        .header("content-type", "application/json")
        .header(signature::HEADER_ID, &id)
        .header(signature::HEADER_TIMESTAMP, &timestamp)
        .header(signature::HEADER_SIGNATURE, &sig)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)));
    let request = match request {
        Ok(request) => request,
        Err(err) => {
            eprintln!("hookrelay: --url: {err}");
            return EXIT_USAGE;
        }
    };
    let (status, body) = match http_call(request, &url, ANSWER_TIMEOUT) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    println!("{} {} -> {} {}", args.event_type, id, status.as_u16(), String::from_utf8_lossy(&body));
    if status.is_success() { EXIT_OK } else { EXIT_FAILURE }
}

/// The URL to post to and the key to sign with, from flags or the config.
fn prepare_send_test(args: &SendTestArgs) -> Result<(String, signature::SigningKey), String> {
    let config = match (&args.url, &args.secret) {
        (Some(_), Some(_)) => None,
        _ => Some(Config::load(&args.config).map_err(|err| err.to_string())?),
    };
    let url = match (&args.url, &config) {
        (Some(url), _) => url.clone(),
        (None, Some(config)) => {
            let scheme = if config.server.tls.is_some() { "https" } else { "http" };
            let mut addr = config.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("{scheme}://{addr}/hooks/{}", args.source)
        }
        (None, None) => unreachable!("the config is loaded when --url is absent"),
    };
    let key = match (&args.secret, &config) {
        (Some(secret), _) => {
            let secret = SecretRef::from(secret.clone())
                .resolve(Path::new("."), &ProcessEnv)
                .map_err(|err| format!("--secret: {err}"))?;
            // Parallel signs with the secret's raw bytes; so does send-test.
            signature::keys_for_secret(secret.expose()).map_err(|err| format!("--secret: {err}"))?.remove(0)
        }
        (None, Some(config)) => {
            let source = config.sources.get(&args.source).ok_or_else(|| {
                format!("--source: no source {:?} in {}", args.source, args.config.display())
            })?;
            source.keys[0].clone()
        }
        (None, None) => unreachable!("the config is loaded when --secret is absent"),
    };
    Ok((url, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_whsec_and_usable() {
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_"));
        assert_ne!(secret, generate_secret());
        assert_eq!(signature::keys_for_secret(&secret).unwrap().len(), 2, "decodes as base64");
    }

    /// `sign` over PROTOCOL.md's vector 1 inputs.
    fn sign_vector_1(raw_key: bool) -> String {
        sign_headers(SignArgs {
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            body: Some(r#"{"test": 2432232314}"#.into()),
            body_file: None,
            id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            timestamp: Some(1614265330),
            raw_key,
        })
        .unwrap()
    }

    #[test]
    fn sign_matches_the_protocol_vector() {
        let headers = sign_vector_1(false);
        assert_eq!(
            headers,
            "webhook-id: msg_p5jXN8AQM9LWM0D4loKWxJek\nwebhook-timestamp: 1614265330\n\
             webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\n"
        );
    }

    #[test]
    fn sign_with_raw_key_matches_the_protocol_vector() {
        let headers = sign_vector_1(true);
        assert!(headers.ends_with("webhook-signature: v1,TcxlhK9b6UD6iVI1ZU2tTqp8PEVfYRseNNfa6b+LcUg=\n"));
    }
}
