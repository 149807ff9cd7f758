//! The operator's commands: `targets`, `deliveries` and `replay`, all thin
//! clients of the admin API. Tables for people, `--json` for scripts.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{ANSWER_TIMEOUT, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, http_call};

/// Starting a replay writes every selected job, and a purge walks the
/// journal, before the API answers: a large one takes a while.
const LONG_CALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Args, Debug)]
pub(super) struct DeliveriesArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    action: DeliveriesAction,
}

#[derive(Subcommand, Debug)]
enum DeliveriesAction {
    /// Deliveries, oldest first, with their jobs' states.
    List {
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// pending, delivered, dead or any.
        #[arg(long)]
        status: Option<String>,
        /// Event type glob, e.g. "monitor.*".
        #[arg(long)]
        event: Option<String>,
        /// A duration ago ("2h"), an RFC 3339 time or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after this delivery id (the previous page's next_cursor).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One delivery: body, headers and every job's attempt history (JSON).
    Show { id: String },
    /// Delete dead deliveries (a dead job, none pending) received before
    /// --until, for good. Delivered ones are pruned by journal.retention.
    Purge {
        /// Only "dead" can be purged.
        #[arg(long)]
        status: String,
        /// A duration ago ("7d"), an RFC 3339 time or Unix seconds.
        #[arg(long)]
        until: String,
        #[arg(long)]
        source: Option<String>,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args, Debug)]
pub(super) struct AdminArgs {
    /// The gateway's admin API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9180", env = "HOOKRELAY_ADMIN_URL")]
    admin: String,
    /// File holding the admin token (else HOOKRELAY_ADMIN_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args, Debug)]
pub(super) struct TargetsArgs {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    action: Option<TargetsAction>,
}

#[derive(Subcommand, Debug)]
enum TargetsAction {
    /// Every target with its state, pending jobs and breaker (the default).
    List,
    /// Stop sending to a target; its jobs accumulate until it is resumed.
    Pause { name: String },
    /// Resume sending to a paused target.
    Resume { name: String },
    /// Mark every pending job of a target removed from the config dead (kept,
    /// replayable, purgeable), so its deliveries no longer wait for it.
    Forget { name: String },
}

#[derive(Args, Debug)]
pub(super) struct ReplayArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// A delivery to replay (repeatable).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// Deliveries received since: a duration ago ("6h"), an RFC 3339 time or
    /// Unix seconds ("0" for the whole journal). Required without --id.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    source: Option<String>,
    /// Only this target (it may be one added after the deliveries arrived).
    #[arg(long)]
    target: Option<String>,
    /// Jobs now dead, delivered, missing (the target never had one),
    /// failed (dead or missing) or any.
    #[arg(long, default_value = "any")]
    status: String,
    /// Event type glob, e.g. "monitor.*".
    #[arg(long)]
    event: Option<String>,
    /// Print how many jobs would be replayed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Start the replay and return; follow it with GET /v1/replays/{id}.
    #[arg(long)]
    no_wait: bool,
}

pub(super) fn targets(args: TargetsArgs) -> u8 {
    let (method, path) = match &args.action {
        None | Some(TargetsAction::List) => (hyper::Method::GET, "/v1/targets".to_owned()),
        Some(TargetsAction::Pause { name }) => (hyper::Method::POST, format!("/v1/targets/{name}/pause")),
        Some(TargetsAction::Resume { name }) => (hyper::Method::POST, format!("/v1/targets/{name}/resume")),
        Some(TargetsAction::Forget { name }) => (hyper::Method::POST, format!("/v1/targets/{name}/forget")),
    };
    // Forgetting writes every pending job of the target before it answers.
    let forgetting = matches!(args.action, Some(TargetsAction::Forget { .. }));
    let timeout = if forgetting { LONG_CALL_TIMEOUT } else { ANSWER_TIMEOUT };
    let body = match admin_call(&args.admin, method, &path, None, timeout) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if args.admin.json {
        println!("{body}");
        return EXIT_OK;
    }
    if forgetting {
        println!("{} pending jobs of {} are now dead", body["dead"], body["target"].as_str().unwrap_or("?"));
        return EXIT_OK;
    }
    let rows: Vec<serde_json::Value> = match args.action {
        None | Some(TargetsAction::List) => body["targets"].as_array().cloned().unwrap_or_default(),
        Some(_) => vec![body],
    };
    print!("{}", targets_table(&rows));
    EXIT_OK
}

pub(super) fn deliveries(args: DeliveriesArgs) -> u8 {
    if let DeliveriesAction::Purge { status, until, source, dry_run } = &args.action {
        return purge(&args.admin, status, until, source.as_deref(), *dry_run);
    }
    let body = match &args.action {
        DeliveriesAction::Purge { .. } => unreachable!("handled above"),
        DeliveriesAction::Show { id } => admin_call(
            &args.admin,
            hyper::Method::GET,
            &format!("/v1/deliveries/{}", query_escape(id)),
            None,
            ANSWER_TIMEOUT,
        ),
        DeliveriesAction::List { source, target, status, event, since, until, limit, cursor } => {
            let filters: Vec<String> = [
                ("source", source.as_deref()),
                ("target", target.as_deref()),
                ("status", status.as_deref()),
                ("event", event.as_deref()),
                ("until", until.as_deref()),
            ]
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| format!("{key}={}", query_escape(value))))
            .collect();
            list_pages(&filters, since.as_deref(), *limit, cursor.clone(), |path| {
                admin_call(&args.admin, hyper::Method::GET, path, None, ANSWER_TIMEOUT)
            })
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(code) => return code,
    };
    if args.admin.json || matches!(args.action, DeliveriesAction::Show { .. }) {
        println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        return EXIT_OK;
    }
    let mut table =
        vec![["ID", "RECEIVED", "SOURCE", "WEBHOOK_ID", "TYPE", "JOBS"].map(str::to_owned).to_vec()];
    for delivery in body["deliveries"].as_array().into_iter().flatten() {
        let jobs: Vec<String> = delivery["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|job| {
                format!("{}:{}", job["target"].as_str().unwrap_or("?"), job["state"].as_str().unwrap_or("?"))
            })
            .collect();
        let text = |key: &str| delivery[key].as_str().unwrap_or("-").to_owned();
        table.push(vec![
            text("id"),
            text("received_at"),
            text("source"),
            text("webhook_id"),
            text("event_type"),
            jobs.join(","),
        ]);
    }
    print!("{}", render_table(table));
    if let Some(cursor) = body["next_cursor"].as_str() {
        println!("more: --cursor {cursor}");
    }
    EXIT_OK
}

const PAGE_LIMIT: usize = crate::admin::deliveries::MAX_LIMIT;

/// Up to `limit` deliveries, asking page after page: the API ends a page
/// early, with a cursor, when a filter leaves it reading too much of the
/// journal in one call. The answer has the API's shape.
fn list_pages(
    filters: &[String],
    since: Option<&str>,
    limit: usize,
    mut cursor: Option<String>,
    mut get: impl FnMut(&str) -> Result<Value, u8>,
) -> Result<Value, u8> {
    let mut deliveries = Vec::new();
    // Only on the first page: a relative `since` read again later could move
    // past deliveries the cursor has not reached; the cursor is past it anyway.
    let mut since = since;
    loop {
        let mut params = filters.to_vec();
        if let Some(since) = since.take() {
            params.push(format!("since={}", query_escape(since)));
        }
        if let Some(cursor) = &cursor {
            params.push(format!("cursor={}", query_escape(cursor)));
        }
        // The API's most per page: a larger --limit takes several.
        params.push(format!("limit={}", (limit - deliveries.len()).min(PAGE_LIMIT)));
        let path = format!("/v1/deliveries?{}", params.join("&"));
        let page = get(&path)?;
        deliveries.extend(page["deliveries"].as_array().into_iter().flatten().cloned());
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() || deliveries.len() >= limit {
            return Ok(json!({ "deliveries": deliveries, "next_cursor": cursor }));
        }
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Left-aligned columns, two spaces apart.
fn render_table(table: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> =
        (0..table[0].len()).map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in table {
        let line: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A plain table of targets for people; `--json` is for scripts.
fn targets_table(rows: &[serde_json::Value]) -> String {
    let cell = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mut table = vec![
        ["NAME", "STATE", "PENDING", "IN_FLIGHT", "OLDEST_S", "BREAKER", "URL"].map(str::to_owned).to_vec(),
    ];
    for row in rows {
        let oldest = row["oldest_pending_age_seconds"].as_f64().map_or("-".to_owned(), |s| format!("{s:.0}"));
        table.push(vec![
            cell(&row["name"]),
            cell(&row["state"]),
            cell(&row["pending"]),
            cell(&row["in_flight"]),
            oldest,
            cell(&row["breaker"]),
            cell(&row["url"]),
        ]);
    }
    render_table(table)
}

/// One admin API call; the JSON answer, or the exit code after saying why.
#[derive(Args, Debug)]
pub(super) struct BackfillArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The source whose `[sources.NAME.parallel]` API key lists the events.
    #[arg(long)]
    source: String,
    /// The Parallel monitor ("monitor_...").
    #[arg(long)]
    monitor: String,
    /// How far back: a duration ago ("72h"), an RFC 3339 time or Unix seconds.
    #[arg(long, default_value = crate::backfill::DEFAULT_SINCE)]
    since: String,
    /// List the event groups that never arrived; inject nothing.
    #[arg(long)]
    dry_run: bool,
}

pub(super) fn backfill(args: BackfillArgs) -> u8 {
    let request = json!({ "source": args.source, "monitor": args.monitor, "since": args.since, "dry_run": args.dry_run });
    let body = match admin_call(
        &args.admin,
        hyper::Method::POST,
        "/v1/backfill",
        Some(request),
        LONG_CALL_TIMEOUT,
    ) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if args.admin.json {
        println!("{body}");
        return EXIT_OK;
    }
    let missing: Vec<&str> = body["missing"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "monitor {} (source {}): {} event groups since {}, {} never arrived",
        body["monitor"].as_str().unwrap_or("?"),
        body["source"].as_str().unwrap_or("?"),
        body["event_groups"],
        body["since"].as_str().unwrap_or("?"),
        missing.len()
    );
    for id in &missing {
        println!("  {id}");
    }
    let too_old: Vec<&str> = body["too_old"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !too_old.is_empty() {
        println!(
            "{} left out: first seen before the journal remembers detections (2 x journal.retention); check them by hand",
            too_old.len()
        );
        for id in &too_old {
            println!("  {id}");
        }
    }
    if args.dry_run {
        println!("dry run: nothing injected");
    } else {
        println!("injected {}", body["injected"].as_array().map_or(0, Vec::len));
    }
    EXIT_OK
}

fn admin_call(
    args: &AdminArgs,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value, u8> {
    let token = match &args.token_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_owned()),
            Err(err) => {
                eprintln!("hookrelay: --token-file: cannot read {}: {err}", path.display());
                return Err(EXIT_USAGE);
            }
        },
        None => std::env::var("HOOKRELAY_ADMIN_TOKEN").ok(),
    };
    let url = format!("{}{path}", args.admin.trim_end_matches('/'));
    let mut request = hyper::Request::builder().method(method).uri(&url);
    if let Some(token) = &token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            bytes::Bytes::from(body.to_string())
        }
        None => bytes::Bytes::new(),
    };
    let request = request.body(http_body_util::Full::new(body)).map_err(|err| {
        eprintln!("hookrelay: --admin: {err}");
        EXIT_USAGE
    })?;
    let (status, body) =
        http_call(request, &format!("the admin API at {} (is the gateway running?)", args.admin), timeout)?;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if status == hyper::StatusCode::UNAUTHORIZED {
        eprintln!("hookrelay: the admin API refused the token (set HOOKRELAY_ADMIN_TOKEN or --token-file)");
        return Err(EXIT_FAILURE);
    }
    if !status.is_success() {
        let message = json["message"].as_str().unwrap_or("unexpected answer");
        eprintln!("hookrelay: {} {}: {message}", status.as_u16(), json["error"].as_str().unwrap_or(""));
        return Err(EXIT_FAILURE);
    }
    Ok(json)
}

fn purge(admin: &AdminArgs, status: &str, until: &str, source: Option<&str>, dry_run: bool) -> u8 {
    let request = json!({ "status": status, "until": until, "source": source, "dry_run": dry_run });
    let body = match admin_call(
        admin,
        hyper::Method::POST,
        "/v1/deliveries/purge",
        Some(request),
        LONG_CALL_TIMEOUT,
    ) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if admin.json {
        println!("{body}");
    } else if dry_run {
        println!(
            "would purge {} dead deliveries ({} jobs) received before {}",
            body["purged"],
            body["jobs"],
            body["until"].as_str().unwrap_or("?")
        );
    } else {
        println!(
            "purged {} dead deliveries ({} jobs) received before {}",
            body["purged"],
            body["jobs"],
            body["until"].as_str().unwrap_or("?")
        );
    }
    EXIT_OK
}

/// How often a waiting `hookrelay replay` asks for progress.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Without a terminal, a progress line at most this often.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub(super) fn replay(args: ReplayArgs) -> u8 {
    let mut request = json!({ "ids": args.ids, "status": args.status, "dry_run": args.dry_run });
    for (key, value) in [
        ("since", &args.since),
        ("until", &args.until),
        ("source", &args.source),
        ("target", &args.target),
        ("event", &args.event),
    ] {
        if let Some(value) = value {
            request[key] = json!(value);
        }
    }
    if args.ids.is_empty() && args.since.is_none() {
        eprintln!("hookrelay: give --id, or --since (\"0\" replays the whole journal)");
        return EXIT_USAGE;
    }
    let started =
        match admin_call(&args.admin, hyper::Method::POST, "/v1/replays", Some(request), LONG_CALL_TIMEOUT) {
            Ok(body) => body,
            Err(code) => return code,
        };
    let matched = started["matched"].as_u64().unwrap_or(0);
    let skipped = started["skipped_pending"].as_u64().unwrap_or(0);
    let skipped_note = if skipped > 0 {
        format!(" ({skipped} skipped: still pending, they will be delivered anyway)")
    } else {
        String::new()
    };
    if args.dry_run {
        if args.admin.json {
            println!("{started}");
        } else {
            println!("would replay {matched} jobs{skipped_note}");
        }
        return EXIT_OK;
    }
    let Some(id) = started["id"].as_str().map(str::to_owned) else {
        eprintln!("hookrelay: the admin API did not say which replay it started");
        return EXIT_FAILURE;
    };
    if !args.admin.json {
        println!("replay {id}: {matched} jobs requeued{skipped_note}");
    }
    if args.no_wait || matched == 0 {
        if args.admin.json {
            println!("{started}");
        }
        return EXIT_OK;
    }
    let progress = match follow(&args.admin, &id) {
        Ok(progress) => progress,
        Err(code) => return code,
    };
    let (done, failed, superseded) =
        (count(&progress, "done"), count(&progress, "failed"), count(&progress, "superseded"));
    if args.admin.json {
        println!("{progress}");
    } else {
        println!("replay {id}: {done} delivered, {failed} dead again, {superseded} superseded");
    }
    if failed > 0 {
        eprintln!(
            "hookrelay: {failed} jobs of the replay went dead again; see hookrelay deliveries list --status dead"
        );
        return EXIT_FAILURE;
    }
    EXIT_OK
}

fn count(progress: &Value, key: &str) -> u64 {
    progress[key].as_u64().unwrap_or(0)
}

/// Polls a replay until no job of it is pending, drawing progress on stderr.
fn follow(admin: &AdminArgs, id: &str) -> Result<Value, u8> {
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    loop {
        let asked = Instant::now();
        // A progress answer walks every pair of the replay: for a replay of
        // millions it can take longer than an ordinary answer may.
        let progress =
            admin_call(admin, hyper::Method::GET, &format!("/v1/replays/{id}"), None, LONG_CALL_TIMEOUT)?;
        let took = asked.elapsed();
        let finished = progress["finished"].as_bool().unwrap_or(true);
        let line = progress_line(&progress);
        if terminal {
            eprint!("\r{line}\x1b[K");
            if finished {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        } else if finished || last_line.elapsed() >= PLAIN_PROGRESS_EVERY {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        if finished {
            return Ok(progress);
        }
        std::thread::sleep(poll_pause(took));
    }
}

/// The pause before asking again. Progress walks every job of the replay:
/// for a large one, asking twice a second would keep the gateway reading
/// its journal all the time, against the replay's own deliveries.
fn poll_pause(last_answer_took: Duration) -> Duration {
    POLL_INTERVAL.max(last_answer_took * 4)
}

/// `[#########...........]  450/1000  delivered 440  dead 10  pending 550`
fn progress_line(progress: &Value) -> String {
    const WIDTH: u64 = 30;
    let matched = count(progress, "matched");
    let settled = count(progress, "done") + count(progress, "failed") + count(progress, "superseded");
    let filled = (settled * WIDTH).checked_div(matched).unwrap_or(WIDTH).min(WIDTH) as usize;
    format!(
        "[{}{}] {settled}/{matched}  delivered {}  dead {}  pending {}",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        count(progress, "done"),
        count(progress, "failed"),
        count(progress, "pending"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_asks_page_after_page_until_it_has_its_limit_or_the_end() {
        // Pages a filter cut short (the API's scan budget), then a full one.
        let mut answers = vec![
            json!({"deliveries": [], "next_cursor": "dlv_a"}),
            json!({"deliveries": [{"id": "dlv_b"}], "next_cursor": "dlv_c"}),
            json!({"deliveries": [{"id": "dlv_d"}, {"id": "dlv_e"}], "next_cursor": "dlv_e"}),
        ]
        .into_iter();
        let mut asked = Vec::new();
        let filters = ["status=dead".to_owned()];
        let body = list_pages(&filters, Some("2h"), 3, None, |path| {
            asked.push(path.to_owned());
            Ok(answers.next().unwrap())
        })
        .unwrap();
        assert_eq!(
            asked,
            [
                "/v1/deliveries?status=dead&since=2h&limit=3",
                "/v1/deliveries?status=dead&cursor=dlv_a&limit=3",
                "/v1/deliveries?status=dead&cursor=dlv_c&limit=2",
            ]
        );
        assert_eq!(body["deliveries"].as_array().unwrap().len(), 3);
        assert_eq!(body["next_cursor"], "dlv_e");

        // More than the API gives in one page.
        let mut asked = Vec::new();
        list_pages(&[], None, 1500, None, |path| {
            asked.push(path.to_owned());
            let n = if asked.len() == 1 { 1000 } else { 500 };
            Ok(json!({"deliveries": vec![json!({}); n], "next_cursor": "dlv_z"}))
        })
        .unwrap();
        assert_eq!(asked, ["/v1/deliveries?limit=1000", "/v1/deliveries?cursor=dlv_z&limit=500"]);

        // The end of the journal: one call, no cursor.
        let body = list_pages(&[], None, 50, Some("dlv_x".into()), |path| {
            assert_eq!(path, "/v1/deliveries?cursor=dlv_x&limit=50");
            Ok(json!({"deliveries": [{"id": "dlv_y"}], "next_cursor": null}))
        })
        .unwrap();
        assert_eq!(body["deliveries"].as_array().unwrap().len(), 1);
        assert!(body["next_cursor"].is_null());
    }

    #[test]
    fn a_slow_progress_answer_spaces_out_the_polls() {
        assert_eq!(poll_pause(Duration::from_millis(3)), POLL_INTERVAL);
        assert_eq!(poll_pause(Duration::from_secs(2)), Duration::from_secs(8));
    }

    #[test]
    fn progress_bar_fills_with_settled_jobs() {
        let line = progress_line(&json!({"matched": 4, "done": 1, "failed": 1, "pending": 2}));
        assert_eq!(
            line,
            format!("[{}{}] 2/4  delivered 1  dead 1  pending 2", "#".repeat(15), ".".repeat(15))
        );
        let empty = progress_line(&json!({"matched": 0, "pending": 0}));
        assert!(empty.starts_with(&format!("[{}]", "#".repeat(30))));
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_escape("monitor.*"), "monitor.%2A");
        assert_eq!(query_escape("2026-11-28T09:00:00Z"), "2026-11-28T09%3A00%3A00Z");
    }
}
